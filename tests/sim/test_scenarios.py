"""Scenario files and the load generator, driven straight at simulated servers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest

from lmgate._errors import InvalidParameter
from lmgate.sim import (
    ClientSpec,
    Dist,
    LoadReport,
    LoadRequest,
    Phase,
    Scenario,
    list_scenarios,
    load_scenario,
    parse_scenario,
    run_load,
    run_schedule,
)
from lmgate.sim._load import REFUSED_BACKOFF

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_backend: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Every async test here runs in virtual time (trio, autojumping mock clock)."""
    return virtual_backend


SHIPPED = [
    "black_hole",
    "capacity_halves",
    "fast_503_recovery",
    "overload_3x",
    "shared_server",
    "slow_drift",
    "spike_3x",
    "steady",
]


class _Lease:
    def report(self, **kw: Any) -> None:
        pass


async def drive(scenario: Scenario) -> tuple[LoadReport, dict[str, Any]]:
    """Run a scenario with no scheduler in between: each request goes straight in."""
    servers = scenario.build_servers()
    only = scenario.servers[0].name

    async def submit(request: LoadRequest) -> None:
        server = servers[request.server or only]
        timeout = math.inf if request.timeout is None else request.timeout
        with anyio.fail_after(timeout):
            await server.serve(
                _Lease(),
                prompt_tokens=request.prompt_tokens,
                output_tokens=request.output_tokens,
            )

    async with anyio.create_task_group() as tg:
        for name, server in servers.items():
            tg.start_soon(run_schedule, server, scenario.schedule(name))
        report = await run_load(
            submit, scenario.clients, duration=scenario.duration, seed=scenario.seed
        )
    return report, {name: s.statistics() for name, s in servers.items()}


def test_shipped_scenarios_are_listed() -> None:
    """Every scenario the issue names ships with the package."""
    assert set(SHIPPED) <= set(list_scenarios())
    assert list_scenarios() == sorted(list_scenarios())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load(name: str) -> None:
    """Each shipped file validates, with a description and a server knee at 16."""
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.description.strip()
    assert scenario.server().knee == 16
    assert scenario.server().slots > scenario.server().knee
    assert all(e.at <= scenario.duration for e in scenario.events)


def test_scenario_details() -> None:
    """The files say what their names promise."""
    halves = load_scenario("capacity_halves").schedule()
    assert [(s.at, s.action, s.args) for s in halves.steps] == [
        (300.0, "set_capacity", {"factor": 0.5})
    ]
    spike = load_scenario("spike_3x").clients[0]
    assert [p.at for p in spike.phases] == [200.0, 260.0]
    assert [p.rate for p in spike.phases] == pytest.approx([3 * spike.rate, spike.rate])
    shared = load_scenario("shared_server")
    assert len(shared.servers) == 1
    assert {c.mode for c in shared.clients} == {"open", "closed"}
    assert len({c.priority for c in shared.clients}) == 2
    assert [s.action for s in load_scenario("black_hole").schedule().steps] == ["hang", "unhang"]
    recovery = load_scenario("fast_503_recovery").schedule().steps
    assert [s.action for s in recovery] == ["restart", "start_loading"]
    drift = [s.args["factor"] for s in load_scenario("slow_drift").schedule().steps]
    assert drift == sorted(drift)
    assert drift[-1] == pytest.approx(1.8)
    steady, overload = load_scenario("steady"), load_scenario("overload_3x")
    assert overload.clients[0].rate > 2.5 * steady.clients[0].rate


def test_load_by_path(tmp_path: Path) -> None:
    """A scenario file outside the package loads by path and takes its name from the file."""
    path = tmp_path / "mine.toml"
    path.write_text('duration = 5\n[[servers]]\nname = "a"\n[[clients]]\nname = "c"\nrate = 1.0\n')
    scenario = load_scenario(path)
    assert (scenario.name, scenario.server().name, scenario.clients[0].rate) == ("mine", "a", 1.0)
    assert load_scenario(str(path)) == scenario


GOOD = """
duration = 10
[[servers]]
name = "a"
[[servers]]
name = "b"
[[clients]]
name = "c"
server = "a"
rate = 1.0
[[events]]
at = 1.0
server = "b"
action = "crash"
"""


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('name = "a"\n[[servers]]', 'name = "a"\nknee = 0\n[[servers]]', "servers[0].knee"),
        ('name = "b"', 'name = "b"\nslotz = 4', "servers[1].slotz"),
        ('name = "b"', 'name = "b"\nbase_step = "fast"', "servers[1].base_step"),
        ('name = "b"', 'name = "a"', "servers[1].name"),
        ('server = "a"', 'server = "z"', "clients[0].server"),
        ('server = "a"\n', "", "clients[0].server"),
        ("rate = 1.0", "rate = -1.0", "clients[0].rate"),
        ("rate = 1.0", 'rate = 1.0\nmode = "lazy"', "clients[0].mode"),
        (
            "rate = 1.0",
            'rate = 1.0\nprompt_tokens = { kind = "lognormal", mean = 0 }',
            "clients[0].prompt_tokens.mean",
        ),
        (
            "rate = 1.0",
            "rate = 1.0\nphases = [{ at = 5, clients = 2 }]",
            "clients[0].phases[0].rate",
        ),
        ('action = "crash"', 'action = "slow_tokens"', "events[0].args.factor"),
        ("at = 1.0", "at = 11.0", "events[0].at"),
        ("duration = 10", "", "duration"),
    ],
)
def test_bad_scenario_names_the_key(old: str, new: str, field: str) -> None:
    """A bad key fails to load with InvalidParameter naming its path."""
    parse_scenario(GOOD)
    assert old in GOOD
    with pytest.raises(InvalidParameter) as info:
        parse_scenario(GOOD.replace(old, new, 1), name="bad")
    assert info.value.field == field
    assert field in str(info.value)


def test_unreadable_scenarios_are_refused(tmp_path: Path) -> None:
    """Broken TOML, unknown names and missing files are typed errors."""
    with pytest.raises(InvalidParameter, match="not valid TOML"):
        parse_scenario("duration = \n")
    with pytest.raises(InvalidParameter, match="not valid TOML"):
        parse_scenario(b"\xff\xfe")
    with pytest.raises(InvalidParameter, match="no scenario named") as info:
        load_scenario("nope")
    assert info.value.field == "name"
    with pytest.raises(InvalidParameter, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    with pytest.raises(InvalidParameter):
        load_scenario(3)  # type: ignore[arg-type]


# -- the load generator --------------------------------------------------------------


async def test_a_closed_loop_worker_refused_at_once_backs_off() -> None:
    """An instant refusal does not make a worker resubmit in the same instant for ever."""
    times: list[float] = []

    async def refuse(request: LoadRequest) -> None:
        times.append(request.issued_at)
        raise RuntimeError("refused")

    spec = ClientSpec(name="batch", mode="closed", clients=2)
    await run_load(refuse, [spec], duration=10.0)
    assert 2 * 10 <= len(times) <= 2 * (10.0 / REFUSED_BACKOFF + 1)
    assert max(times) < 10.0


async def test_open_loop_rate_and_phases() -> None:
    """Poisson arrivals follow the rate of each phase and stop at the end."""
    times: list[float] = []

    async def submit(request: LoadRequest) -> None:
        times.append(request.issued_at)

    spec = ClientSpec(
        name="u", rate=0.0, phases=(Phase(at=100.0, rate=10.0), Phase(at=200.0, rate=2.0))
    )
    report = await run_load(submit, [spec], duration=1000.0, seed=3)
    in_spike = [t for t in times if 100.0 <= t < 200.0]
    after = [t for t in times if t >= 200.0]
    assert not [t for t in times if t < 100.0]
    assert 900 <= len(in_spike) <= 1100
    assert 1500 <= len(after) <= 1700
    assert max(times) < 1000.0
    assert (report.issued, report.ok, report.failed) == (len(times), len(times), 0)
    assert report.clients["u"].issued == len(times)


async def test_open_loop_is_seeded() -> None:
    """The same seed gives the same arrivals and sizes; another seed does not."""

    async def run(seed: int) -> list[tuple[float, int | None]]:
        seen: list[tuple[float, int | None]] = []

        async def submit(request: LoadRequest) -> None:
            seen.append((request.issued_at - start, request.output_tokens))

        start = anyio.current_time()
        spec = ClientSpec(name="u", rate=5.0, output_tokens=Dist.uniform(1, 100))
        await run_load(submit, [spec], duration=20.0, seed=seed)
        return seen

    a, b, c = await run(1), await run(1), await run(2)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b])
    assert a != c


async def test_closed_loop_concurrency_follows_phases() -> None:
    """Closed-loop workers never exceed their number, which phases change."""
    in_flight = 0
    peak: dict[str, int] = {"early": 0, "late": 0}

    async def submit(request: LoadRequest) -> None:
        nonlocal in_flight
        in_flight += 1
        key = "early" if request.issued_at < 10.0 else "late"
        peak[key] = max(peak[key], in_flight)
        await anyio.sleep(1.0)
        in_flight -= 1

    spec = ClientSpec(
        name="w",
        mode="closed",
        clients=4,
        think=Dist.fixed(0.5),
        phases=(Phase(at=10.0, clients=2),),
    )
    report = await run_load(submit, [spec], duration=20.0)
    assert peak == {"early": 4, "late": 2}
    # Each worker sends every 1.5 s: 4 workers for 10 s, then 2 for 10 s.
    assert report.issued == 4 * 7 + 2 * 7
    assert report.ok == report.issued


async def test_phase_boundaries_at_inexact_offsets() -> None:
    """Phases whose absolute times do not add up exactly in floats still advance."""
    await anyio.sleep(0.1)
    seen: list[tuple[str, float]] = []

    async def submit(request: LoadRequest) -> None:
        seen.append((request.client, request.issued_at))
        await anyio.sleep(0.05)

    clients = [
        ClientSpec(name="o", rate=0.0, phases=(Phase(at=0.2, rate=50.0), Phase(at=0.7, rate=0.0))),
        ClientSpec(
            name="c", mode="closed", clients=0, start=0.1, phases=(Phase(at=0.2, clients=1),)
        ),
    ]
    report = await run_load(submit, clients, duration=1.0, seed=5)
    opened = [t for c, t in seen if c == "o"]
    closed = [t for c, t in seen if c == "c"]
    assert opened
    assert all(0.3 - 1e-9 <= t <= 0.8 + 1e-9 for t in opened)
    assert closed[0] == pytest.approx(0.3)
    assert len(closed) == report.clients["c"].issued == 16


async def test_failures_are_counted_not_raised() -> None:
    """Exceptions from submit are tallied by type; the run goes on."""

    async def submit(request: LoadRequest) -> None:
        if request.index % 2:
            raise ValueError("odd")
        if request.index % 3 == 0:
            raise TimeoutError

    spec = ClientSpec(name="w", mode="closed", clients=1, think=Dist.fixed(1.0))
    report = await run_load(submit, [spec], duration=6.0)
    assert report.issued == 6
    assert report.errors == {"TimeoutError": 1, "ValueError": 3}
    assert (report.ok, report.failed, report.cancelled) == (2, 4, 0)


async def test_no_drain_cancels_at_the_end() -> None:
    """Without draining, requests still running at the end are cancelled and counted."""

    async def submit(request: LoadRequest) -> None:
        await anyio.sleep(100.0)

    spec = ClientSpec(name="u", rate=1.0)
    report = await run_load(submit, [spec], duration=10.0, seed=1, drain=False)
    assert report.ended - report.started == 10.0
    assert report.issued > 0
    assert report.cancelled == report.issued


async def test_bad_load_arguments() -> None:
    """Duplicate client names and bad durations are refused before anything runs."""

    async def submit(request: LoadRequest) -> None:
        raise AssertionError("must not run")

    spec = ClientSpec(name="u", rate=1.0)
    with pytest.raises(InvalidParameter):
        await run_load(submit, [spec, spec], duration=1.0)
    with pytest.raises(InvalidParameter):
        await run_load(submit, [spec], duration=-1.0)
    with pytest.raises(InvalidParameter):
        ClientSpec(name="u", start=5.0, stop=2.0)


# -- whole scenarios, no scheduler ---------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
async def test_scenario_runs_end_to_end(name: str) -> None:
    """Each scenario runs straight against its servers, and its numbers add up."""
    scenario = load_scenario(name)
    report, stats = await drive(scenario)
    assert report.issued > 100
    assert report.ok + report.failed + report.cancelled == report.issued
    slots = {c.name: c.slots for c in scenario.servers}
    for server, s in stats.items():
        assert s.peak_active <= slots[server]
        assert (s.active, s.queued, s.hung_waiting) == (0, 0, 0)
        ended = s.served + sum(s.failed.values())
        assert ended == report.issued if len(stats) == 1 else ended <= report.issued


async def test_steady_is_healthy_and_overload_is_not() -> None:
    """Unprotected, the steady scenario is served in time; three times the load is not."""
    steady, steady_stats = await drive(load_scenario("steady"))
    assert steady.ok == steady.issued
    assert steady_stats["gpu"].peak_active < 32
    overload, overload_stats = await drive(load_scenario("overload_3x"))
    assert overload.ok < 0.5 * overload.issued
    assert overload_stats["gpu"].peak_active == 32
    assert overload.errors.get("TimeoutError", 0) + overload.errors.get("Overloaded", 0) > (
        0.5 * overload.issued
    )


async def test_faults_show_in_scenarios() -> None:
    """A black hole times requests out; a restart with loading answers 503s."""
    hole, _ = await drive(load_scenario("black_hole"))
    assert hole.errors.get("TimeoutError", 0) > 100
    recovery, stats = await drive(load_scenario("fast_503_recovery"))
    assert stats["gpu"].failed["loading"] > 60
    assert stats["gpu"].restarts == 1
    assert recovery.errors.get("Overloaded", 0) >= stats["gpu"].failed["loading"]
