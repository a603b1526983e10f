"""langchain-openai's ``ChatOpenAI`` with its HTTP going through lmgate.

    python examples/langchain_chat.py               # against a simulated llama-server
    python examples/langchain_chat.py http://127.0.0.1:8080/v1 MODEL

``ChatOpenAI(http_async_client=...)`` takes an httpx client; give it one on
a ``SchedulingTransport`` in SDK-native mode (lmgate's refusals become the
openai SDK's errors, which langchain knows) and turn langchain's own retries
off for lmgate's decisions by leaving ``max_retries`` to the transport's
``x-should-retry: false``.  The base URL and key are placeholders: the
endpoint a slot belongs to supplies both.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import anyio
import httpx
from langchain_openai import ChatOpenAI

import lmgate
from lmgate.sim.http import SimHTTPConfig, SimHTTPServer
from lmgate.transports import SchedulingTransport


def chat_model(sched: lmgate.Scheduler, model: str, **kw: object) -> ChatOpenAI:
    """A ``ChatOpenAI`` on ``sched``; ``kw`` are ChatOpenAI's own arguments."""
    transport = SchedulingTransport(sched, refusal_responses=True)
    return ChatOpenAI(
        model=model,
        base_url="http://lmgate/v1",
        api_key="lmgate",  # type: ignore[arg-type]
        http_async_client=httpx.AsyncClient(transport=transport, timeout=None),
        **kw,  # type: ignore[arg-type]
    )


async def main(url: str | None = None, model: str = "sim-model") -> lmgate.Stats:
    async with AsyncExitStack() as stack:
        if url is None:
            config = SimHTTPConfig(kind="llamacpp", models=(model,), token_time=0.005)
            server = await stack.enter_async_context(SimHTTPServer(config))
            url = server.url + "/v1"
        sched = await stack.enter_async_context(
            lmgate.Scheduler([lmgate.Endpoint("local", url, models=[model])], limit=lmgate.Fixed(2))
        )
        llm = chat_model(sched, model, max_tokens=16)

        with lmgate.request_options(timeout=60):
            reply = await llm.ainvoke("Say hello.")
        print("reply:", reply.content)

        async for chunk in llm.astream("Tell me a story."):
            if chunk.content:
                print("first words:", chunk.content)
                break
        # langchain closes the generators under ``astream`` when they are
        # collected, a moment after the loop is left; the response, and the
        # slot with it, goes back then.
        await anyio.sleep(0.1)
        stats = sched.stats()
        print(f"completed={stats.outcomes['completed']} in_flight={stats.in_flight}")
        return stats


if __name__ == "__main__":
    anyio.run(lambda: main(*sys.argv[1:3]))
