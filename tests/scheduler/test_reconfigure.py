"""A running scheduler's config drifting under it, in virtual time: applied whole or refused."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
import pytest

from lmgate import EndpointUnavailable, InvalidParameter, Lease, Scheduler
from lmgate.config import ConfigApplied, ConfigDiff, ConfigRefused
from lmgate.events import Subscription
from lmgate.observability._events import Event
from lmgate.policies import Fixed
from lmgate.scheduler._reconfigure import EndpointAdded, EndpointRemoved, LimitRebuilt

from ._support import check_identity, lmgate_tasks

pytestmark = pytest.mark.anyio

BASE = """
[watch]
interval = 5.0

[limit]
policy = "fixed"
limit = 2

[endpoints.a]
url = "http://127.0.0.1:9/a"
models = ["m"]
context_window = 4096

[endpoints.b]
url = "http://127.0.0.1:9/b"
models = ["m", "n"]
"""

WITHOUT_B = BASE[: BASE.index("[endpoints.b]")]
WITH_C = WITHOUT_B + '[endpoints.c]\nurl = "http://127.0.0.1:9/c"\nmodels = ["n"]\n'


@pytest.fixture
def anyio_backend(virtual_backend: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Drift is checked on a timer: trio's MockClock makes it instant and exact."""
    return virtual_backend


def _file(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "lmgate.toml"
    path.write_text(text)
    return path


def _limits(sched: Scheduler) -> dict[str, int]:
    return {e.name: e.limit for e in sched.stats().endpoints}


def _events(sub: Subscription, *kinds: type[Event]) -> list[Event]:
    return [e for e in iter(sub.get_nowait, None) if isinstance(e, kinds)]


async def _name(lease: Lease) -> str:
    return lease.endpoint.name


async def test_limits_change_at_the_next_check(tmp_path: Path) -> None:
    """An edited limit is picked up at the next 5 s check, not before, for every endpoint."""
    path = _file(tmp_path)
    async with Scheduler.from_config(path, env={}) as sched:
        with sched.events.subscribe() as sub:
            assert _limits(sched) == {"a": 2, "b": 2}
            path.write_text(BASE.replace("limit = 2", "limit = 3"))
            await anyio.sleep(4.9)
            assert _limits(sched) == {"a": 2, "b": 2}
            await anyio.sleep(0.2)
            assert _limits(sched) == {"a": 3, "b": 3}
            *rebuilt, applied = _events(sub, ConfigApplied, LimitRebuilt)
            assert isinstance(applied, ConfigApplied)
            assert applied.diff == ConfigDiff(limits=("a", "b"))
            assert [(e.endpoint, e.limit) for e in rebuilt if isinstance(e, LimitRebuilt)] == [
                ("a", 3),
                ("b", 3),
            ]
        assert await sched.run(_name, model="m") in ("a", "b")
        check_identity(sched.stats())
    assert lmgate_tasks() == []


async def test_endpoints_added_removed_and_drained(tmp_path: Path) -> None:
    """A removed endpoint takes nothing new, finishes its call, then leaves the stats."""
    path = _file(tmp_path)
    async with Scheduler.from_config(path, env={}) as sched:
        with sched.events.subscribe() as sub:
            async with sched.lease(model="n") as held:
                assert held.endpoint.name == "b"
                path.write_text(WITH_C)
                await anyio.sleep(5.1)
                stats = sched.stats()
                assert [e.name for e in stats.endpoints] == ["a", "b", "c"]
                draining = stats.endpoints[1]
                assert (draining.routing, draining.state, draining.in_flight) == (
                    "down",
                    "removed",
                    1,
                )
                check_identity(stats)
                assert await sched.run(_name, model="n") == "c"
                assert [e.name for e in sched.endpoints] == ["a", "c"]
            stats = sched.stats()
            assert [e.name for e in stats.endpoints] == ["a", "c"]
            assert stats.outcomes["completed"] == 2
            check_identity(stats)
            found = _events(sub, EndpointAdded, EndpointRemoved, ConfigApplied)
    assert [type(e) for e in found] == [EndpointRemoved, EndpointAdded, ConfigApplied]
    removed, added = found[0], found[1]
    assert isinstance(removed, EndpointRemoved)
    assert (removed.endpoint, removed.in_flight, removed.replaced) == ("b", 1, False)
    assert isinstance(added, EndpointAdded)
    assert added.endpoint == "c"
    assert lmgate_tasks() == []


async def test_requests_queued_for_a_removed_model_end_unavailable(tmp_path: Path) -> None:
    """A waiter whose model no endpoint serves any more ends at once, counted."""
    path = _file(tmp_path, BASE.replace("limit = 2", "limit = 1"))
    errors: list[BaseException] = []

    async def waiting() -> None:
        try:
            await sched.run(_name, model="n")
        except EndpointUnavailable as exc:
            errors.append(exc)

    async with Scheduler.from_config(path, env={}) as sched, anyio.create_task_group() as tg:
        async with sched.lease(model="n"):
            tg.start_soon(waiting)
            await anyio.wait_all_tasks_blocked()
            assert sched.stats().queued == 1
            path.write_text(WITHOUT_B.replace("limit = 2", "limit = 1"))
            await anyio.sleep(5.1)
            assert len(errors) == 1
            assert sched.stats().outcomes["unavailable"] == 1
        check_identity(sched.stats())


async def test_invalid_file_is_refused_whole_and_the_old_config_kept(tmp_path: Path) -> None:
    """A bad value anywhere refuses the whole edit with an event; nothing of it is used."""
    path = _file(tmp_path)
    async with Scheduler.from_config(path, env={}) as sched:
        with sched.events.subscribe() as sub:
            bad = BASE.replace("limit = 2", "limit = 5") + "\n[queue]\nsize = -1\n"
            path.write_text(bad)
            await anyio.sleep(5.1)
            (refused,) = _events(sub, ConfigRefused, ConfigApplied)
            assert isinstance(refused, ConfigRefused)
            assert refused.field == "queue.size"
            assert _limits(sched) == {"a": 2, "b": 2}
            assert sched.stats().queue_size == 1024
            watcher = sched._reconf.watcher
            assert watcher is not None
            assert watcher.statistics().stale
            await anyio.sleep(20)  # the same bad file is not re-reported
            assert _events(sub, ConfigRefused, ConfigApplied) == []
            path.write_text(BASE.replace("limit = 2", "limit = 5"))
            await anyio.sleep(5)
            assert [type(e) for e in _events(sub, ConfigRefused, ConfigApplied)] == [ConfigApplied]
            assert _limits(sched) == {"a": 5, "b": 5}
            assert not watcher.statistics().stale


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ("\n[scheduler]\ntick_interval = 0.5\n[queue]\nsize = 7\n", "scheduler.tick_interval"),
        ("\n[scheduler]\nmailbox_size = 64\n[queue]\nsize = 7\n", "scheduler.mailbox_size"),
    ],
)
async def test_what_cannot_be_applied_refuses_the_whole_change(
    tmp_path: Path, edit: str, field: str
) -> None:
    """A change a running scheduler cannot make refuses the edit whole, with the reason."""
    path = _file(tmp_path)
    async with Scheduler.from_config(path, env={}) as sched:
        with sched.events.subscribe() as sub:
            path.write_text(BASE + edit)
            await anyio.sleep(5.1)
            (refused,) = _events(sub, ConfigRefused, ConfigApplied)
            assert isinstance(refused, ConfigRefused)
            assert field in refused.reason
            assert "restart" in refused.reason
            assert sched.stats().queue_size == 1024  # the valid part was not applied either


async def test_queue_context_env_and_replaced_endpoint(tmp_path: Path) -> None:
    """Queue, context and env drift apply in place; a changed endpoint is replaced."""
    path = _file(tmp_path)
    env: dict[str, str] = {}
    async with Scheduler.from_config(path, env=env) as sched:
        with sched.events.subscribe() as sub:
            edited = BASE.replace("context_window = 4096", "context_window = 8192")
            path.write_text(edited + "\n[queue]\nsize = 50\n[context]\nthreshold = 0.5\n")
            await anyio.sleep(5.1)
            stats = sched.stats()
            assert stats.queue_size == 50
            assert sched._context.settings.threshold == 0.5
            assert [(e.name, e.context_window) for e in sched.endpoints] == [
                ("a", 8192),
                ("b", None),
            ]
            assert [e.name for e in stats.endpoints] == ["b", "a"]  # the old a drained at once
            kinds = [(type(e), getattr(e, "replaced", None)) for e in _events(sub, Event)]
            assert (EndpointRemoved, True) in kinds
            assert (EndpointAdded, True) in kinds
            env["LMGATE_QUEUE__SIZE"] = "9"
            await anyio.sleep(5)
            assert sched.stats().queue_size == 9
        assert await sched.run(_name, model="m") in ("a", "b")
        check_identity(sched.stats())


# -- from_config ------------------------------------------------------------------------


async def test_from_config_precedence_and_overrides(tmp_path: Path) -> None:
    """File, then env, then keyword overrides; ``__`` or ``.`` separate the levels."""
    path = _file(tmp_path)
    env = {"LMGATE_QUEUE__SIZE": "7", "LMGATE_QUEUE__AGING": "3.0"}
    dotted: dict[str, Any] = {"limit.limit": 4}
    sched = Scheduler.from_config(path, env=env, queue__size=9, **dotted)
    async with sched:
        stats = sched.stats()
        assert stats.queue_size == 9
        assert sched._aging == 3.0
        assert _limits(sched) == {"a": 4, "b": 4}
        assert [e.policy.policy for e in stats.endpoints] == ["Fixed", "Fixed"]
        assert await sched.run(_name, model="n") == "b"


async def test_from_config_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Env and arguments alone make a scheduler, which then watches nothing."""
    monkeypatch.chdir(tmp_path)
    env = {"LMGATE_ENDPOINTS__GPU__URL": "http://127.0.0.1:9/gpu"}
    sched = Scheduler.from_config(env=env, endpoints__gpu__models=["m"], limit={"policy": "fixed"})
    assert sched._reconf.watcher is None
    async with sched:
        assert await sched.run(_name, model="m") == "gpu"
        assert _limits(sched) == {"gpu": Fixed().limit}


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"path": "missing.toml"}, "path"),
        ({"queue__size": -1}, "queue.size"),
        ({"queue__sizes": 1}, "queue.sizes"),
        ({}, "endpoints"),
    ],
)
async def test_from_config_refuses_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: dict[str, Any], field: str
) -> None:
    """A missing file, a bad or unknown override, or no endpoint at all: InvalidParameter."""
    monkeypatch.chdir(tmp_path)
    make = functools.partial(Scheduler.from_config, env={})
    with pytest.raises(InvalidParameter) as info:
        make(**args)
    assert info.value.field == field
