"""The public surface: each package's ``__all__`` is sorted, complete and importable."""

from __future__ import annotations

import importlib
import types

import pytest

import lmgate

PACKAGES = [
    "lmgate",
    "lmgate.actors",
    "lmgate.coordination",
    "lmgate.detect",
    "lmgate.policies",
    "lmgate.scheduler",
    "lmgate.sim",
    "lmgate.transports",
]


def _package(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:  # pragma: no cover - a package not written yet
        pytest.skip(f"{name} does not exist yet")


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_unique(name: str) -> None:
    """``__all__`` is a sorted list without duplicates."""
    module = _package(name)
    exported = module.__all__
    assert isinstance(exported, list)
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_public_names(name: str) -> None:
    """Every public non-module attribute is exported, and everything exported exists."""
    module = _package(name)
    public = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_") and not isinstance(value, types.ModuleType)
    }
    exported = set(module.__all__)
    modules = {key for key in exported if isinstance(getattr(module, key, None), types.ModuleType)}
    assert exported - modules == public
    for key in modules:
        assert getattr(module, key).__name__ == f"{name}.{key}"


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_imports(name: str) -> None:
    """``from package import *`` binds exactly ``__all__``, and each name is lmgate's own."""
    module = _package(name)
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(module.__all__)
    for key, value in namespace.items():
        owner = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if isinstance(value, type | types.FunctionType | types.ModuleType):
            assert owner.startswith("lmgate"), (key, owner)


def test_design_api_is_exported() -> None:
    """The names the design's public API promises are at the top level."""
    promised = {
        "Scheduler",
        "Endpoint",
        "Lease",
        "LmgateError",
        "Rejected",
        "DeadlineExceeded",
        "EndpointUnavailable",
        "ContextOverflow",
        "InvalidParameter",
        "SchedulerClosed",
        "Overloaded",
        "policies",
    }
    assert promised <= set(lmgate.__all__)
    for name in promised - {"policies"}:
        error = getattr(lmgate, name)
        if name not in {"Scheduler", "Endpoint", "Lease"}:
            assert issubclass(error, lmgate.LmgateError)
    assert hasattr(lmgate.policies, "Fixed")
    assert isinstance(lmgate.__version__, str)
