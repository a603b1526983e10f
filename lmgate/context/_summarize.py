"""The built-in summarizer: ``ResetWithSummary`` asking a model through the scheduler.

It lives outside ``policies`` because it does I/O: it takes a lease from
the same scheduler the request runs on and speaks HTTP on it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, final

from lmgate._validate import check_float, check_int
from lmgate.context._messages import Message, text_of

__all__ = ["SchedulerSummarizer"]

_SUMMARY_PROMPT = (
    "Summarize the conversation below for the assistant that continues it. Keep every fact,"
    " decision, file name, identifier, number and open task; drop pleasantries. Be brief."
)


class _Scheduler(Protocol):
    async def run(
        self,
        call: Callable[[Any], Awaitable[str]],
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str: ...


@final
class SchedulerSummarizer:
    """The built-in summarizer: asks ``model`` through the same scheduler.

    It runs at a less urgent ``priority`` than user traffic (higher numbers
    wait longer) and within ``share`` of the time the request has left, so a
    summary can never make the request miss its own deadline.  ``complete``
    does the HTTP call; the default speaks the OpenAI chat completions API.
    """

    __slots__ = (
        "_api_key",
        "_client",
        "_complete",
        "max_tokens",
        "model",
        "priority",
        "sched",
        "share",
        "timeout",
    )

    def __init__(
        self,
        sched: _Scheduler,
        *,
        model: str,
        priority: int = 100,
        share: float = 0.5,
        timeout: float = 60.0,
        max_tokens: int = 512,
        complete: Callable[[Any, list[dict[str, Any]], int], Awaitable[str]] | None = None,
        api_key: Callable[[], str] | None = None,
        client: Any = None,
    ) -> None:
        self.sched, self.model, self.priority = sched, model, priority
        self.share = check_float("share", share, low=0.0, high=1.0, low_open=True)
        self.timeout = check_float("timeout", timeout, low=0.0, low_open=True)
        self.max_tokens = check_int("max_tokens", max_tokens)
        self._complete = complete or self._openai
        self._api_key, self._client = api_key, client

    async def __call__(self, messages: Sequence[Message], *, deadline: float = math.inf) -> str:
        import anyio

        timeout = self.timeout
        if deadline < math.inf:
            timeout = min(timeout, (deadline - anyio.current_time()) * self.share)
        if timeout <= 0:
            raise TimeoutError("no time left for a summary")
        transcript = "\n".join(f"{m.role}: {text_of(m)}" for m in messages)
        prompt = [
            {"role": "system", "content": _SUMMARY_PROMPT},
            {"role": "user", "content": transcript},
        ]

        async def call(lease: Any) -> str:
            return await self._complete(lease, prompt, self.max_tokens)

        return await self.sched.run(call, model=self.model, priority=self.priority, timeout=timeout)

    async def _openai(self, lease: Any, messages: list[dict[str, Any]], max_tokens: int) -> str:
        import httpx

        url = lease.endpoint.url.rstrip("/")
        url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        headers = {"Authorization": f"Bearer {self._api_key()}"} if self._api_key else {}
        body = {
            "model": lease.endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        client = self._client or httpx.AsyncClient()
        try:
            r = await client.post(url, json=body, headers=headers, timeout=lease.remaining())
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"])
        finally:
            if self._client is None:
                await client.aclose()

    def __repr__(self) -> str:
        return f"SchedulerSummarizer(model={self.model!r}, priority={self.priority})"
