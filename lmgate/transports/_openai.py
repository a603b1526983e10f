"""Chat over the OpenAI-compatible API, inside a lease.

For callers that let lmgate speak HTTP rather than bring an SDK: one
function for a whole answer, one async iterator for a stream.  Both send
to the granted endpoint with its model name, raise lmgate's errors for the
server's context and overload answers (``ContextOverflow`` with the
server's numbers, ``Overloaded``), and report time to first token and the
usage the server returns to the lease.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, final

import anyio
import httpx
import msgspec

from lmgate._endpoint import EndpointRef
from lmgate.security._secrets import redact
from lmgate.transports._errors import error_from_response
from lmgate.transports._urls import rebase
from lmgate.transports._usage import usage_of

__all__ = ["ChatResult", "ReportingLease", "openai_chat", "openai_stream", "raise_for_response"]

_MAX_LINE = 1 << 20


class ReportingLease(Protocol):
    """What these helpers need of a lease."""

    endpoint: EndpointRef

    def report(
        self,
        *,
        ttft: float | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None: ...


@final
class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    """One completed chat answer and what it cost."""

    text: str
    finish_reason: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ttft: float | None = None


async def raise_for_response(response: httpx.Response) -> None:
    """Raise the lmgate error (or ``httpx.HTTPStatusError``) an error response means."""
    if response.status_code < 400:
        return
    body = _without_sent_keys(response, await response.aread())
    error = error_from_response(response.status_code, response.headers, body)
    if error is not None:
        raise error
    response.raise_for_status()


def _without_sent_keys(response: httpx.Response, body: bytes) -> bytes:
    """The body with any key this request carried masked.

    Some APIs quote the key they refused ("Incorrect API key provided: ..."),
    and the body becomes an exception message that ends up in logs.
    """
    try:
        headers = response.request.headers
    except RuntimeError:  # a response built without a request
        return body
    sent = [
        value.removeprefix("Bearer ").strip()
        for name in ("authorization", "x-api-key", "api-key")
        if (value := headers.get(name))
    ]
    sent = [s for s in sent if len(s) >= 8]
    if not sent:
        return body
    text = body.decode("utf-8", "replace")
    return redact(text, sent).encode()


def _request(
    lease: ReportingLease, path: str, messages: Sequence[Mapping[str, Any]], params: dict[str, Any]
) -> tuple[httpx.URL, dict[str, Any]]:
    body = {**params, "model": lease.endpoint.model, "messages": list(messages)}
    return rebase(lease.endpoint.url, path), body


async def openai_chat(
    client: httpx.AsyncClient,
    lease: ReportingLease,
    messages: Sequence[Mapping[str, Any]],
    **params: Any,
) -> ChatResult:
    """POST ``/v1/chat/completions`` (not streaming) and return the answer."""
    url, body = _request(lease, "/v1/chat/completions", messages, {**params, "stream": False})
    start = anyio.current_time()
    response = await client.post(url, json=body)
    await raise_for_response(response)
    ttft = anyio.current_time() - start
    data = msgspec.json.decode(response.content)
    choice = data.get("choices", [{}])[0] if isinstance(data, dict) else {}
    message = choice.get("message") or {}
    prompt, output = usage_of(data)
    lease.report(ttft=ttft, prompt_tokens=prompt, output_tokens=output)
    return ChatResult(
        text=str(message.get("content") or ""),
        finish_reason=choice.get("finish_reason"),
        model=data.get("model") if isinstance(data, dict) else None,
        prompt_tokens=prompt,
        output_tokens=output,
        ttft=ttft,
    )


async def openai_stream(
    client: httpx.AsyncClient,
    lease: ReportingLease,
    messages: Sequence[Mapping[str, Any]],
    *,
    include_usage: bool = True,
    **params: Any,
) -> AsyncIterator[str]:
    """Stream ``/v1/chat/completions`` as text deltas.

    Asks for the usage event (``stream_options.include_usage``) unless told
    not to, and reports it with the time to the first delta when the
    stream ends.  Close the iterator (``aclosing``) if you stop early.
    """
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    url, body = _request(lease, "/v1/chat/completions", messages, {**params, **extra})
    start = anyio.current_time()
    ttft: float | None = None
    prompt = output = None
    async with client.stream("POST", url, json=body) as response:
        await raise_for_response(response)
        done = False
        # Read to the end even after [DONE]: leaving httpx's line iterator
        # half-consumed leaks its generators (trio warns about them).
        async for line in response.aiter_lines():
            if done or len(line) > _MAX_LINE or not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            try:
                event = msgspec.json.decode(data)
            except msgspec.DecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                raise httpx.RemoteProtocolError(f"error event in stream: {data[:200]}")
            p, o = usage_of(event)
            prompt, output = p if p is not None else prompt, o if o is not None else output
            for choice in event.get("choices") or ():
                delta = (
                    (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                )
                if isinstance(delta, str) and delta:
                    if ttft is None:
                        ttft = anyio.current_time() - start
                    yield delta
    lease.report(ttft=ttft, prompt_tokens=prompt, output_tokens=output)
