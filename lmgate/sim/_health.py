"""A health check for simulated servers, as a real probe would see them.

A crashed server or one that moved to another port refuses the connection,
a hung one never answers, a loading one says so; otherwise it reports its
model's identity so a swapped model is noticed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio

from lmgate._endpoint import Endpoint, ProbeReport
from lmgate.policies._health import url_port
from lmgate.sim._model import SimServer
from lmgate.sim._stepped import SteppedServer

__all__ = ["sim_health"]


def sim_health(
    servers: Mapping[str, SimServer | SteppedServer],
) -> Callable[[Endpoint], Awaitable[ProbeReport]]:
    """An ``Endpoint(health=...)`` check for endpoints named after ``servers``' keys."""

    async def check(ep: Endpoint) -> ProbeReport:
        st = servers[ep.name].statistics()
        if st.state == "crashed" or url_port(ep.url) != st.port:
            raise ConnectionRefusedError(111, "connection refused")
        if st.state == "hung":
            await anyio.sleep_forever()
        return ProbeReport(ok=True, loading=st.state == "loading", identities={st.model: st.digest})

    return check
