"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing
from _virtual import VirtualClockLoop


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on both anyio backends."""
    return str(request.param)


@pytest.fixture
def virtual_backend() -> tuple[str, dict[str, Any]]:
    """Trio with a clock that jumps whenever every task is blocked."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture(params=["trio", "asyncio"])
def virtual_backends(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Both backends, each with a clock that jumps whenever every task is blocked."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {"loop_factory": VirtualClockLoop})
