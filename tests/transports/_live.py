"""Helpers for the tests that run the openai SDK against a simulated server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from lmgate.sim.http import SimHTTPConfig, SimHTTPServer


@asynccontextmanager
async def live_server() -> AsyncIterator[SimHTTPServer]:
    """A llama.cpp-shaped server with 8 slots serving model ``m``, 50 tokens/s."""
    config = SimHTTPConfig(kind="llamacpp", models=("m",), slots=8, token_time=0.02)
    async with SimHTTPServer(config) as s:
        yield s


async def until(predicate: Any, within: float) -> None:
    """Wait (real time, bounded) until ``predicate()`` holds; a liveness bound, not a timing."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 -- the state polled is the scheduler's
            await anyio.sleep(0.02)
