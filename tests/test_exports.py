"""The public surface: each package's ``__all__`` is sorted, complete and importable."""

from __future__ import annotations

import importlib
import types

import pytest

import lmgate

PACKAGES = [
    "lmgate",
    "lmgate.actors",
    "lmgate.bench",
    "lmgate.cli",
    "lmgate.config",
    "lmgate.context",
    "lmgate.coordination",
    "lmgate.detect",
    "lmgate.events",
    "lmgate.observability",
    "lmgate.policies",
    "lmgate.scheduler",
    "lmgate.security",
    "lmgate.sim",
    "lmgate.sim.http",
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
        "Fixed",
        "Adaptive",
        "default_limit",
    }
    assert promised <= set(lmgate.__all__)
    for name in promised - {"Fixed", "Adaptive", "default_limit"}:
        error = getattr(lmgate, name)
        if name not in {"Scheduler", "Endpoint", "Lease"}:
            assert issubclass(error, lmgate.LmgateError)
    assert hasattr(lmgate.policies, "Fixed")
    assert isinstance(lmgate.__version__, str)


def test_front_door_is_small() -> None:
    """The top level holds at most 45 names; events live in ``lmgate.events``."""
    assert len(lmgate.__all__) <= 45
    assert not set(lmgate.events.__all__) & set(lmgate.__all__)
    assert "BreakerOpened" in lmgate.events.__all__
    assert lmgate.default_limit() == lmgate.Adaptive()


def test_moved_names_still_import_with_a_warning() -> None:
    """A name that moved off the top level still resolves there, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="lmgate.events"):
        moved = lmgate.BreakerOpened  # type: ignore[attr-defined]
    assert moved is lmgate.events.BreakerOpened
    with pytest.warns(DeprecationWarning, match="lmgate.context"):
        assert lmgate.normalize_params is lmgate.context.normalize_params  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = lmgate.no_such_name  # type: ignore[attr-defined]


def _public_objects() -> list[tuple[str, object]]:
    out = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            out.append((f"{package}.{name}", getattr(module, name)))
    return out


@pytest.mark.parametrize(("name", "obj"), _public_objects(), ids=lambda v: str(v)[:60])
def test_help_and_signature_work(name: str, obj: object) -> None:
    """``help()`` renders and ``inspect.signature()`` resolves on every public name."""
    import inspect
    import pydoc

    if isinstance(obj, type | types.FunctionType | types.ModuleType):
        assert pydoc.render_doc(obj, renderer=pydoc.plaintext)
    if callable(obj) and not isinstance(obj, types.ModuleType):
        try:
            inspect.signature(obj)
        except ValueError:  # builtins without a signature (none of ours)
            assert not getattr(obj, "__module__", "").startswith("lmgate"), name
