"""Whatever the server does, every lease is released exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._endpoint import Endpoint
from lmgate.transports import SchedulingTransport

from ._standin import StandInScheduler

BEHAVIOURS = ["json", "sse", "429", "503", "overflow", "500", "connect", "midstream"]
READERS = ["full", "headers_only", "stream_full"]


async def _broken() -> AsyncIterator[bytes]:
    yield b'data: {"choices":[]}\n\n'
    raise httpx.ReadError("reset")


async def _sse() -> AsyncIterator[bytes]:
    yield b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    yield b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    yield b"data: [DONE]\n\n"


def _answer(kind: str, request: httpx.Request) -> httpx.Response:
    if kind == "json":
        return httpx.Response(200, json={"usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    if kind == "sse":
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse())
    if kind == "429":
        return httpx.Response(429, headers={"retry-after": "2"}, json={"error": "slow"})
    if kind == "503":
        return httpx.Response(503, json={"error": {"message": "Loading model"}})
    if kind == "overflow":
        return httpx.Response(400, json={"error": {"type": "exceed_context_size_error"}})
    if kind == "500":
        return httpx.Response(500, text="boom")
    if kind == "connect":
        raise httpx.ConnectError("refused", request=request)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_broken())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(BEHAVIOURS), st.sampled_from(READERS)), min_size=1, max_size=12
    ),
    st.sampled_from(["asyncio", "trio"]),
)
def test_every_lease_released_once(plan: list[tuple[str, str]], backend: str) -> None:
    """Released exactly once, in-flight back to zero, no stream left open."""
    sched = StandInScheduler([Endpoint("e", url="http://gpu:1/v1", models=["m"])])
    behaviours = iter([b for b, _ in plan])

    def handler(request: httpx.Request) -> httpx.Response:
        return _answer(next(behaviours), request)

    transport = SchedulingTransport(sched, httpx.MockTransport(handler))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            for _, reader in plan:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                try:
                    if reader == "full":
                        await client.post("http://x/v1/chat/completions", json=body)
                    else:
                        async with client.stream(
                            "POST", "http://x/v1/chat/completions", json=body
                        ) as r:
                            if reader == "stream_full":
                                async for _ in r.aiter_bytes():
                                    pass
                except httpx.HTTPError:
                    pass

    anyio.run(main, backend=backend)
    assert len(sched.leases) == len(plan)
    assert all(len(lease.releases) == 1 for lease in sched.leases)
    assert sched.in_flight == 0
    assert transport.statistics().open_streams == 0
