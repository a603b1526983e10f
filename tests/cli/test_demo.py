"""``lmgate demo``: every request ends once, and the summary says why limits are where they are."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio.testing
from _virtual import VirtualClockLoop

from lmgate.cli._demo import run_demo


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Both backends, in virtual time."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {"loop_factory": VirtualClockLoop})


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["adaptive", "fixed"])
async def test_the_demo_accounts_for_every_request_and_explains_its_limits(
    anyio_backend: Any, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_demo(seconds=4.0, clients=2, live=False, policy=policy) == 0
    out = capsys.readouterr().out
    assert "every request ended exactly once: True" in out
    found = re.findall(r"highest limit=\s*(\d+) peak in flight=\s*(\d+)", out)
    assert len(found) == 3  # one line per endpoint
    assert all(int(peak) <= int(highest) for highest, peak in found), found
    assert ("probe steps" in out) == (policy == "adaptive")
