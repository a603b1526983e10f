"""SchedulingTransport routes chat requests by the windows endpoints learned."""

from __future__ import annotations

import httpx
import pytest

from lmgate import ContextOverflow, Endpoint, Scheduler
from lmgate.actors._resilience import Resilience
from lmgate.detect._probe import _CACHE
from lmgate.policies import Fixed
from lmgate.sim.http._app import SimHTTPConfig, SimHTTPServer
from lmgate.transports import SchedulingTransport

URL = "http://lmgate.invalid/v1/chat/completions"
TINY = SimHTTPConfig(kind="llamacpp", models=("m",), slots=2, n_ctx=64)
SMALL = SimHTTPConfig(kind="llamacpp", models=("m",), slots=2, n_ctx=256)
LARGE = SimHTTPConfig(kind="llamacpp", models=("m",), slots=2, n_ctx=4096)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _CACHE.clear()


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def probed(*servers: SimHTTPServer) -> list[Endpoint]:
    return [Endpoint(f"s{i}", url=s.url + "/v1", probe=True) for i, s in enumerate(servers)]


@pytest.mark.anyio
async def test_long_prompts_go_only_where_they_fit() -> None:
    """A prompt no strategy could fit in the small window is always granted the large one."""
    async with SimHTTPServer(TINY) as small, SimHTTPServer(LARGE) as large:
        eps = probed(small, large)
        async with Scheduler(eps, limit=Fixed(4), resilience=Resilience(resolve=None)) as sched:
            transport = SchedulingTransport(sched)
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(6):
                    r = await client.post(URL, json=chat("word " * 600, max_tokens=4))
                    assert r.status_code == 200, r.text
                long_counts = (small.statistics().requests, large.statistics().requests)
                for _ in range(6):
                    r = await client.post(URL, json=chat("hi", max_tokens=4))
                    assert r.status_code == 200
    assert long_counts == (0, 6)
    # Short prompts are spread by load: the small server takes its share.
    assert small.statistics().requests > 0


@pytest.mark.anyio
async def test_prompt_no_window_takes_is_refused_before_sending() -> None:
    """Larger than every window: ContextOverflow, or a 400 the SDKs know; nothing sent."""
    async with (
        SimHTTPServer(TINY) as small,
        Scheduler(probed(small), resilience=Resilience(resolve=None)) as sched,
    ):
        raising = SchedulingTransport(sched)
        answering = SchedulingTransport(sched, refusal_responses=True)
        huge = chat("word " * 5000, max_tokens=4)
        async with httpx.AsyncClient(transport=raising) as client:
            with pytest.raises(ContextOverflow) as err:
                await client.post(URL, json=huge)
        async with httpx.AsyncClient(transport=answering) as client:
            r = await client.post(URL, json=huge)
        stats = sched.stats()
    assert err.value.window == 64
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert small.statistics().requests == 0
    assert raising.statistics().context_overflows == 1
    assert stats.outcomes["rejected"] == 2


@pytest.mark.anyio
async def test_conversation_is_fitted_to_the_window_or_sent_as_is() -> None:
    """An over-long conversation is shortened to fit; with context=False it overflows."""
    turns = [{"role": "system", "content": "be brief"}]
    for i in range(12):
        turns.append({"role": "user", "content": f"question {i} " + "detail " * 40})
        turns.append({"role": "assistant", "content": f"answer {i} " + "words " * 40})
    turns.append({"role": "user", "content": "and now?"})
    body = {"model": "m", "messages": turns, "max_tokens": 4}
    async with (
        SimHTTPServer(SMALL) as small,
        Scheduler(probed(small), resilience=Resilience(resolve=None)) as sched,
    ):
        fitting = SchedulingTransport(sched)
        verbatim = SchedulingTransport(sched, context=False)
        async with httpx.AsyncClient(transport=fitting) as client:
            fitted = await client.post(URL, json=body)
        async with httpx.AsyncClient(transport=verbatim) as client:
            sent_as_is = await client.post(URL, json=body)
    assert fitted.status_code == 200, fitted.text
    assert sent_as_is.status_code == 400
    assert sent_as_is.json()["error"]["type"] == "exceed_context_size_error"


@pytest.mark.anyio
async def test_unreadable_messages_go_through_untouched() -> None:
    """A message list lmgate cannot parse is the server's to judge, not a refusal."""
    async with (
        SimHTTPServer(LARGE) as server,
        Scheduler(probed(server), resilience=Resilience(resolve=None)) as sched,
    ):
        transport = SchedulingTransport(sched)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(
                URL, json={"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
            )
    assert r.status_code == 200
