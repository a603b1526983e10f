"""The openai SDK through lmgate: one line to build the client.

    python examples/openai_sdk.py                 # against a simulated llama-server
    python examples/openai_sdk.py http://127.0.0.1:8080/v1 MODEL

Shows a plain call, a stream (``async with`` closes it early without leaking
the slot), per-call options (priority, timeout) and a refusal arriving as
the SDK's own typed error, counted once.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import anyio
import openai

import lmgate
from lmgate.sim.http import SimHTTPConfig, SimHTTPServer


async def main(url: str | None = None, model: str = "sim-model") -> lmgate.Stats:
    async with AsyncExitStack() as stack:
        if url is None:  # no model server at hand: a simulated one
            config = SimHTTPConfig(kind="llamacpp", models=(model,), token_time=0.005)
            server = await stack.enter_async_context(SimHTTPServer(config))
            url = server.url + "/v1"
        endpoint = lmgate.Endpoint("local", url, models=[model])
        sched = await stack.enter_async_context(
            lmgate.Scheduler([endpoint], limit=lmgate.Fixed(2), queue=lmgate.QueueOptions(size=4))
        )
        client = lmgate.openai_client(sched)

        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
        print("reply:", reply.choices[0].message.content)

        # A stream read in part: leaving the block closes it, and the slot comes back.
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to a hundred."}],
            max_tokens=200,
            stream=True,
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    print("first words:", chunk.choices[0].delta.content)
                    break

        # Interactive work first, with its own deadline.
        with lmgate.request_options(priority=-5, timeout=30):
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Quick!"}], max_tokens=4
            )

        # lmgate's refusals are the SDK's errors, and the SDK does not retry them.
        try:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "?"}]
            )
        except openai.NotFoundError as exc:
            print("refused:", exc.status_code, exc.response.headers["x-lmgate-outcome"])
        stats = sched.stats()
        print(f"completed={stats.outcomes['completed']} in_flight={stats.in_flight}")
        return stats


if __name__ == "__main__":
    args = sys.argv[1:]
    anyio.run(lambda: main(*args[:2]))
