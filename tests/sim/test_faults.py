"""Injected faults of the simulated server, at exact virtual times."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from lmgate._errors import InvalidParameter, Overloaded
from lmgate.sim import Dist, FaultSchedule, FaultStep, SimConfig, SimServer, run_schedule

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_backend: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Every async test here runs in virtual time (trio, autojumping mock clock)."""
    return virtual_backend


class _Lease:
    def report(self, **kw: Any) -> None:
        pass


def flat(**kw: Any) -> SimServer:
    """Ten tokens at 10 ms a step: 0.1 s a request when alone."""
    base: dict[str, Any] = {
        "base_step": 0.01,
        "slope_below": 0.0,
        "slope_above": 0.0,
        "output_tokens": Dist.fixed(10),
        "port": 8000,
    }
    base.update(kw)
    return SimServer(SimConfig(**base))


async def at(t: float, fn: Any, *args: Any) -> None:
    """Call ``fn(*args)`` at virtual time ``t``."""
    await anyio.sleep_until(t)
    fn(*args)


async def outcome(server: SimServer, lease: Any = None, *, start: float = 0.0) -> Any:
    """Start a request at ``start``; return (result or exception, end time)."""
    await anyio.sleep_until(start)
    try:
        result: Any = await server(lease or _Lease())
    except Exception as exc:
        result = exc
    return result, anyio.current_time()


async def test_crash_resets_in_flight_and_refuses_new() -> None:
    """In-flight requests get a reset at the crash; new ones are refused until restart."""
    server = flat()
    results: list[Any] = []

    async def record(start: float) -> None:
        results.append(await outcome(server, start=start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(record, 0.0)
        tg.start_soon(record, 0.01)
        tg.start_soon(at, 0.05, server.crash)
    assert [type(r) for r, _ in results] == [ConnectionResetError] * 2
    assert [t for _, t in results] == [0.05, 0.05]
    with pytest.raises(ConnectionRefusedError):
        await server(_Lease())
    stats = server.statistics()
    assert (stats.state, stats.active, stats.failed["reset"], stats.failed["refused"]) == (
        "crashed",
        0,
        2,
        1,
    )
    server.restart()
    start = anyio.current_time()
    result = await server(_Lease())
    assert anyio.current_time() - start == pytest.approx(0.1)
    assert result.output_tokens == 10
    assert server.statistics().restarts == 1


async def test_restart_on_another_port(make_lease: Any) -> None:
    """After a restart on a new port, calls to the old URL are refused, the new one served."""
    server = flat(port=8000)
    old = make_lease(server.url)
    await server(old)
    server.restart(port=9001)
    assert server.port == 9001
    assert server.url == "http://127.0.0.1:9001"
    with pytest.raises(ConnectionRefusedError):
        await server(old)
    result = await server(make_lease(server.url))
    assert result.output_tokens == 10
    assert server.endpoint().url == "http://127.0.0.1:9001"
    assert server.statistics().failed["refused"] == 1


async def test_restart_while_up_resets_in_flight() -> None:
    """Restarting a live server is a crash and a start: in-flight work is reset."""
    server = flat()
    async with anyio.create_task_group() as tg:
        tg.start_soon(at, 0.03, server.restart)
        result, when = await outcome(server)
    assert isinstance(result, ConnectionResetError)
    assert when == 0.03
    assert server.statistics().state == "up"


async def test_hang_stalls_in_flight_and_new_until_unhang() -> None:
    """A black hole freezes work in flight and holds new requests until it answers again."""
    server = flat()
    results: list[Any] = []

    async def record(start: float) -> None:
        results.append(await outcome(server, start=start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(record, 0.0)
        tg.start_soon(at, 0.05, server.hang)
        tg.start_soon(record, 0.5)
        await anyio.sleep(0.9)
        stats = server.statistics()
        assert (stats.state, stats.active, stats.hung_waiting) == ("hung", 1, 1)
        tg.start_soon(at, 1.05, server.unhang)
    ends = sorted(t for _, t in results)
    # The first had 5 tokens left at the hang; alone again they take 0.05 s, but the
    # held request joins at the unhang: 2 in the batch, 10 ms a step all the same.
    assert ends == pytest.approx([1.1, 1.15])
    assert server.statistics().state == "up"


async def test_black_hole_only_deadlines_notice() -> None:
    """A caller's timeout is the only way out of a hung server; it counts as cancelled."""
    server = flat()
    server_hung = anyio.Event()

    async def hang_now() -> None:
        server.hang()
        server_hung.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hang_now)
        await server_hung.wait()
        with anyio.move_on_after(30.0) as scope:
            await server(_Lease())
    assert scope.cancelled_caught
    assert anyio.current_time() == 30.0
    assert server.statistics().failed["cancelled"] == 1
    assert server.statistics().hung_waiting == 0


async def test_crash_during_hang_resets_waiters() -> None:
    """Requests held by a hung server get a reset when it crashes."""
    server = flat()
    server.hang()
    async with anyio.create_task_group() as tg:
        tg.start_soon(at, 2.0, server.crash)
        result, when = await outcome(server)
    assert isinstance(result, ConnectionResetError)
    assert when == 2.0


async def test_loading_answers_503_then_serves() -> None:
    """While loading a model every request gets a fast 503; after it, service resumes."""
    server = flat()
    server.start_loading(60.0)
    with pytest.raises(Overloaded) as info:
        await server(_Lease())
    assert (info.value.status, info.value.retry_after) == (503, None)
    assert anyio.current_time() == 0.0
    assert server.statistics().state == "loading"
    await anyio.sleep(59.99)
    with pytest.raises(Overloaded):
        await server(_Lease())
    await anyio.sleep(0.01)
    result = await server(_Lease())
    assert result.output_tokens == 10
    assert server.statistics().failed["loading"] == 2


async def test_rate_limit_storm() -> None:
    """A 429 storm carries Retry-After and ends on time."""
    server = flat()
    server.rate_limit(10.0, retry_after=2.0)
    with pytest.raises(Overloaded) as info:
        await server(_Lease())
    assert (info.value.status, info.value.retry_after) == (429, 2.0)
    assert server.statistics().state == "rate_limited"
    await anyio.sleep(10.0)
    assert (await server(_Lease())).output_tokens == 10
    assert server.statistics().failed["rate_limited"] == 1


@pytest.mark.parametrize("fault", ["slow_tokens", "set_capacity"])
async def test_speed_change_mid_request(fault: str) -> None:
    """Halving the speed half-way makes the second five tokens take twice as long."""
    server = flat()
    factor = 2.0 if fault == "slow_tokens" else 0.5
    async with anyio.create_task_group() as tg:
        tg.start_soon(at, 0.05, getattr(server, fault), factor)
        result, when = await outcome(server)
    assert when == pytest.approx(0.15)
    assert result.duration == pytest.approx(0.15)
    assert server.statistics().step_time == pytest.approx(0.02)
    getattr(server, fault)(1.0)
    start = anyio.current_time()
    await server(_Lease())
    assert anyio.current_time() - start == pytest.approx(0.1)


async def test_swap_model_changes_digest_not_name() -> None:
    """A model swap keeps the name and changes the digest the results report."""
    server = flat(model="llama", digest="sha256:aaa")
    before = await server(_Lease())
    server.swap_model("sha256:bbb")
    after = await server(_Lease())
    assert (before.model, before.digest) == ("llama", "sha256:aaa")
    assert (after.model, after.digest) == ("llama", "sha256:bbb")
    assert server.statistics().digest == "sha256:bbb"


async def test_bad_fault_arguments_change_nothing() -> None:
    """Bad fault arguments are refused and leave the server as it was."""
    server = flat()
    for call, args in [
        (server.slow_tokens, (0.0,)),
        (server.set_capacity, (-1.0,)),
        (server.start_loading, (float("nan"),)),
        (server.rate_limit, (1.0, -2.0)),
        (server.restart, (70000,)),
        (server.swap_model, ("",)),
    ]:
        with pytest.raises(InvalidParameter):
            call(*args)
    stats = server.statistics()
    assert (stats.state, stats.speed, stats.restarts, stats.port) == ("up", 1.0, 0, 8000)


async def test_schedule_runs_in_virtual_time(make_lease: Any) -> None:
    """Each scheduled fault takes effect at its exact offset."""
    server = flat()
    schedule = FaultSchedule.of(
        (3.0, "restart", {"port": 9000}),
        (1.0, "crash"),
        (4.0, "start_loading", {"seconds": 2.0}),
        (3.0, "swap_model", {"digest": "sha256:new"}),
    )
    assert [s.at for s in schedule.steps] == [1.0, 3.0, 3.0, 4.0]
    seen: dict[float, tuple[str, int, str]] = {}

    async def watch() -> None:
        for t in (0.5, 1.5, 3.5, 4.5, 6.5):
            await anyio.sleep_until(t)
            stats = server.statistics()
            seen[t] = (stats.state, stats.port, stats.digest)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_schedule, server, schedule)
        tg.start_soon(watch)
    assert seen == {
        0.5: ("up", 8000, "sha256:0000"),
        1.5: ("crashed", 8000, "sha256:0000"),
        3.5: ("up", 9000, "sha256:new"),
        4.5: ("loading", 9000, "sha256:new"),
        6.5: ("up", 9000, "sha256:new"),
    }
    assert anyio.current_time() == 6.5


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"at": 1, "action": "explode"}, "action"),
        ({"at": -1, "action": "crash"}, "at"),
        ({"at": 1, "action": "slow_tokens"}, "args.factor"),
        ({"at": 1, "action": "slow_tokens", "args": {"factor": 0}}, "args.factor"),
        ({"at": 1, "action": "crash", "args": {"now": 1}}, "args.now"),
        ({"at": 1, "action": "restart", "args": {"port": "x"}}, "args.port"),
        ({"at": 1, "action": "swap_model", "args": {"digest": ""}}, "args.digest"),
    ],
)
def test_bad_fault_steps_are_refused(step: dict[str, Any], field: str) -> None:
    """A bad step fails when built, naming the argument."""
    with pytest.raises(InvalidParameter) as info:
        FaultStep(**step)
    assert info.value.field == field
    with pytest.raises(InvalidParameter) as info:
        FaultSchedule.of((1.0, "crash"), (step["at"], step["action"], step.get("args", {})))
    assert info.value.field == f"steps[1].{field}"


def test_schedule_for_server_filters_targets() -> None:
    """A multi-server schedule splits into each server's steps."""
    schedule = FaultSchedule(
        steps=(
            FaultStep(at=2.0, action="hang", server="a"),
            FaultStep(at=1.0, action="crash", server="b"),
            FaultStep(at=3.0, action="unhang"),
        )
    )
    assert [s.action for s in schedule.for_server("a").steps] == ["hang", "unhang"]
    assert [s.action for s in schedule.for_server("b").steps] == ["crash", "unhang"]
    assert schedule.end == 3.0
    assert len(schedule) == 3
