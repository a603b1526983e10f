"""Chat over Ollama's native API, inside a lease.

Ollama's ``/api/chat`` streams newline-delimited JSON by default and puts
its token counts (``prompt_eval_count``, ``eval_count``) in the final
object.  It also truncates a prompt longer than the model's ``num_ctx``
without saying so, which is why these helpers pass the window lmgate
believes in as ``options.num_ctx`` when the caller gives one: the server
then allocates what the scheduler routed for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import httpx
import msgspec

from lmgate.transports._openai import ChatResult, ReportingLease, raise_for_response
from lmgate.transports._urls import rebase
from lmgate.transports._usage import usage_of

__all__ = ["ollama_chat", "ollama_stream"]

_MAX_LINE = 1 << 20


def _body(
    lease: ReportingLease,
    messages: Sequence[Mapping[str, Any]],
    stream: bool,
    num_ctx: int | None,
    options: Mapping[str, Any] | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    opts = dict(options or {})
    if num_ctx is not None:
        opts["num_ctx"] = num_ctx
    body = {**params, "model": lease.endpoint.model, "messages": list(messages), "stream": stream}
    if opts:
        body["options"] = opts
    return body


async def ollama_chat(
    client: httpx.AsyncClient,
    lease: ReportingLease,
    messages: Sequence[Mapping[str, Any]],
    *,
    num_ctx: int | None = None,
    options: Mapping[str, Any] | None = None,
    **params: Any,
) -> ChatResult:
    """POST ``/api/chat`` with ``stream: false`` and return the answer."""
    url = rebase(lease.endpoint.url, "/api/chat")
    start = anyio.current_time()
    response = await client.post(url, json=_body(lease, messages, False, num_ctx, options, params))
    await raise_for_response(response)
    ttft = anyio.current_time() - start
    data = msgspec.json.decode(response.content)
    if not isinstance(data, dict):
        raise httpx.RemoteProtocolError("Ollama answered with something other than an object")
    if "error" in data:
        raise httpx.RemoteProtocolError(f"Ollama error: {str(data['error'])[:200]}")
    prompt, output = usage_of(data)
    lease.report(ttft=ttft, prompt_tokens=prompt, output_tokens=output)
    message = data.get("message") or {}
    return ChatResult(
        text=str(message.get("content") or ""),
        finish_reason=data.get("done_reason"),
        model=data.get("model"),
        prompt_tokens=prompt,
        output_tokens=output,
        ttft=ttft,
    )


async def ollama_stream(
    client: httpx.AsyncClient,
    lease: ReportingLease,
    messages: Sequence[Mapping[str, Any]],
    *,
    num_ctx: int | None = None,
    options: Mapping[str, Any] | None = None,
    **params: Any,
) -> AsyncIterator[str]:
    """Stream ``/api/chat`` as text deltas; reports usage when ``done``."""
    url = rebase(lease.endpoint.url, "/api/chat")
    body = _body(lease, messages, True, num_ctx, options, params)
    start = anyio.current_time()
    ttft: float | None = None
    final: dict[str, Any] | None = None
    async with client.stream("POST", url, json=body) as response:
        await raise_for_response(response)
        async for line in response.aiter_lines():  # to the end: see openai_stream
            if final is not None or not line.strip() or len(line) > _MAX_LINE:
                continue
            try:
                event = msgspec.json.decode(line)
            except msgspec.DecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                raise httpx.RemoteProtocolError(f"Ollama error: {str(event['error'])[:200]}")
            text = (event.get("message") or {}).get("content")
            if isinstance(text, str) and text:
                if ttft is None:
                    ttft = anyio.current_time() - start
                yield text
            if event.get("done"):
                final = event
    prompt, output = usage_of(final)
    lease.report(ttft=ttft, prompt_tokens=prompt, output_tokens=output)
