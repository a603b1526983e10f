"""A pydantic-ai agent whose model calls go through lmgate.

    python examples/pydantic_ai_agent.py            # against a simulated vLLM
    python examples/pydantic_ai_agent.py http://127.0.0.1:8000/v1 MODEL

The glue is two lines: ``lmgate.openai_client(sched)`` is an
``openai.AsyncOpenAI``, and pydantic-ai's ``OpenAIProvider`` takes one.  Runs
share the scheduler's slots and queue; ``lmgate.request_options`` around a
run sets its priority and deadline; a stream the agent's caller leaves
early gives its slot back.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import anyio
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import lmgate
from lmgate.sim.http import SimHTTPConfig, SimHTTPServer


async def main(url: str | None = None, model: str = "sim-model") -> lmgate.Stats:
    async with AsyncExitStack() as stack:
        if url is None:
            config = SimHTTPConfig(kind="vllm", models=(model,), token_time=0.005)
            server = await stack.enter_async_context(SimHTTPServer(config))
            url = server.url + "/v1"
        sched = await stack.enter_async_context(
            lmgate.Scheduler([lmgate.Endpoint("local", url, models=[model])], limit=lmgate.Fixed(2))
        )
        provider = OpenAIProvider(openai_client=lmgate.openai_client(sched))
        agent = Agent(OpenAIChatModel(model, provider=provider))

        with lmgate.request_options(priority=-1, timeout=60):
            result = await agent.run("Say hello.")
        print("agent:", result.output)

        async with agent.run_stream("Tell me a story.") as response:
            async for text in response.stream_text(delta=True):
                print("first words:", text)
                break  # leaving early: the stream closes, the slot comes back
        stats = sched.stats()
        print(f"completed={stats.outcomes['completed']} in_flight={stats.in_flight}")
        return stats


if __name__ == "__main__":
    anyio.run(lambda: main(*sys.argv[1:3]))
