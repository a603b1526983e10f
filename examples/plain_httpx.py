"""A plain ``httpx.AsyncClient`` through lmgate, no SDK.

    python examples/plain_httpx.py                # against a simulated Ollama
    python examples/plain_httpx.py http://127.0.0.1:11434/v1 MODEL

Every request the client sends waits for a slot of the scheduler, goes to
the endpoint the slot belongs to (the client's base URL is only a
placeholder), and gives the slot back when its response is closed.  Options
ride on the request as an extension (or as ``X-Lmgate-*`` headers).
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import anyio
import httpx
import msgspec

import lmgate
from lmgate.sim.http import SimHTTPConfig, SimHTTPServer
from lmgate.transports import SchedulingTransport


async def main(url: str | None = None, model: str = "sim-model") -> lmgate.Stats:
    async with AsyncExitStack() as stack:
        if url is None:
            config = SimHTTPConfig(kind="ollama", models=(model,), token_time=0.005)
            server = await stack.enter_async_context(SimHTTPServer(config))
            url = server.url + "/v1"
        sched = await stack.enter_async_context(
            lmgate.Scheduler([lmgate.Endpoint("local", url, models=[model])], limit=lmgate.Fixed(2))
        )
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=SchedulingTransport(sched), base_url="http://lmgate/v1")
        )
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}

        r = await client.post(
            "/chat/completions",
            json=body,
            extensions={"lmgate.options": lmgate.RequestOptions(priority=-1, timeout=20)},
        )
        print("status:", r.status_code, "reply:", r.json()["choices"][0]["message"]["content"])

        # Streaming: the slot is held until the ``async with`` block ends.
        async with client.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
            events = [line async for line in r.aiter_lines() if line.startswith("data: {")]
        last = msgspec.json.decode(events[-1].removeprefix("data: "))
        print("streamed events:", len(events), "finish:", last["choices"][0]["finish_reason"])

        # Refusals are exceptions here (an SDK-shaped response needs refusal_responses=True).
        try:
            await client.post("/chat/completions", json={**body, "model": "other"})
        except lmgate.EndpointUnavailable as exc:
            print("refused:", exc.reason)
        stats = sched.stats()
        print(f"completed={stats.outcomes['completed']} in_flight={stats.in_flight}")
        return stats


if __name__ == "__main__":
    anyio.run(lambda: main(*sys.argv[1:3]))
