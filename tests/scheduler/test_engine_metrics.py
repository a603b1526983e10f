"""The server's own metrics, end to end through a Scheduler, in virtual time."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import pytest

from lmgate import Endpoint, InvalidParameter, Lease, Scheduler
from lmgate.policies import Adaptive, Fixed
from lmgate.sim import SimServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return virtual_backends


async def test_readings_reach_the_policy_and_stats() -> None:
    server = SimServer(slots=4, knee=4)
    ep = server.endpoint(metrics=server.metrics)
    assert ep.reads_engine_metrics
    async with Scheduler([ep]) as sched:

        async def call(lease: Lease) -> None:
            await server.serve(lease)

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(partial(sched.run, call, model=server.model))
        await anyio.sleep(2.5)
        (st,) = sched.stats().endpoints
    assert st.engine is not None
    assert st.engine.reads >= 3
    assert st.engine.failures == 0
    assert st.engine.last is not None
    assert st.engine.last.running is not None
    assert st.policy.detail["readings"] == st.engine.reads


async def test_a_server_queue_in_its_metrics_brings_the_default_limit_down() -> None:
    """Eight slots behind a limit of 24: the server's waiting requests say so."""
    server = SimServer(slots=8, knee=64, max_queue=1000)
    ep = server.endpoint(metrics=server.metrics, limit=Adaptive(initial_limit=24))
    async with Scheduler([ep]) as sched:

        async def call(lease: Lease) -> None:
            await server.serve(lease)

        async def client() -> None:
            while True:
                await sched.run(call, model=server.model)

        async with anyio.create_task_group() as tg:
            for _ in range(48):
                tg.start_soon(client)
            await anyio.sleep(120)
            tg.cancel_scope.cancel()
        (st,) = sched.stats().endpoints
    assert st.policy.detail["server_queue_cuts"] >= 1
    assert st.limit <= 12


async def test_without_metrics_nothing_is_read() -> None:
    server = SimServer()
    ep = server.endpoint()
    assert not ep.reads_engine_metrics
    async with Scheduler([ep]) as sched:
        await anyio.sleep(5)
        (st,) = sched.stats().endpoints
    assert st.engine is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"engine_metrics": "yes"}, "engine_metrics"), ({"metrics": 5}, "metrics")],
)
async def test_bad_engine_settings_are_refused(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        Endpoint("a", url="http://127.0.0.1:1/v1", **kwargs)
    assert info.value.field == field


async def test_engine_metrics_follow_probe_unless_said_otherwise() -> None:
    url = "http://127.0.0.1:1/v1"
    assert Endpoint("a", url=url, probe=True).reads_engine_metrics
    assert not Endpoint("a", url=url, probe=True, engine_metrics=False).reads_engine_metrics
    assert Endpoint("a", url=url, engine_metrics=True).reads_engine_metrics
    assert Endpoint("a", url=url, limit=Fixed(2)).reads_engine_metrics is False


@pytest.mark.parametrize("kind", ["vllm", "llamacpp", "ollama"])
def test_over_http_each_server_is_read_in_its_own_names(kind: str) -> None:
    """A probed endpoint reads the simulated server's real /metrics route; Ollama has none."""
    from lmgate.sim import SimHTTPConfig, SimHTTPServer

    async def main() -> Any:
        cfg = SimHTTPConfig(kind=kind, models=("m",), slots=2, n_ctx=2048)
        async with SimHTTPServer(cfg) as server:
            ep = Endpoint("e", url=server.url + "/v1", probe=True)
            async with Scheduler([ep]) as sched:
                with anyio.fail_after(10):
                    while (st := sched.stats().endpoints[0].engine) is None or not st.reads:  # noqa: ASYNC110 - polling stats
                        await anyio.sleep(0.05)
                return st

    st = anyio.run(main)
    if kind == "ollama":
        assert st.state == "off"
        assert st.last is None
    else:
        assert st.failures == 0
        assert st.last is not None
        assert (st.last.running, st.last.waiting) == (0, 0)
