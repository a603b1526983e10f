"""The public names of lmgate.detect and lmgate.transports are exported, sorted."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["lmgate.detect", "lmgate.transports"])
def test_all_is_sorted_and_resolvable(name: str) -> None:
    """__all__ is sorted, unique, and every name resolves to a public object."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)
    for attr in exported:
        obj = getattr(module, attr)
        assert not attr.startswith("_")
        home = getattr(obj, "__module__", name)
        assert home.startswith(("lmgate.", "builtins")), (attr, home)
