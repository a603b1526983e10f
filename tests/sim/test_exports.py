"""The public surface of ``lmgate.sim``."""

from __future__ import annotations

import inspect
import types

import lmgate.sim


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted, every name exists, and nothing public is left out."""
    names = lmgate.sim.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(lmgate.sim, name) is not None
    public = {
        n
        for n, v in vars(lmgate.sim).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(names)


def test_public_names_live_in_the_package() -> None:
    """Each exported class or function comes from a private module of ``lmgate.sim``."""
    for name in lmgate.sim.__all__:
        obj = getattr(lmgate.sim, name)
        if isinstance(obj, type) or inspect.isfunction(obj):
            parts = obj.__module__.split(".")
            assert parts[:2] == ["lmgate", "sim"], (name, obj.__module__)
            assert parts[-1].startswith("_"), (name, obj.__module__)
