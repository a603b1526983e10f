"""``lmgate demo``: every request ends once, and the summary says why limits are where they are."""

from __future__ import annotations

import re
from typing import Any

import pytest

from lmgate.cli._demo import run_demo


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Both backends, in virtual time."""
    return virtual_backends


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
