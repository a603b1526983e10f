"""A 500-turn agent session with large tool results against a 4k-window local model.

The failure this library exists to end: the session's context grows past the
local model's window.  Here every model call goes through a real
``Scheduler`` to a simulated local server with a 4096-token window whose
tokenizer is denser than lmgate's built-in estimate (3.6 characters a token,
not 4); the server refuses any prompt that does not fit.  The test checks
that no call overflows, that the newest turn and the task always reach the
model, and reports what the context strategies did.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from lmgate import Lease, Scheduler
from lmgate.context._conversation import Conversation
from lmgate.context._estimate import estimate_tokens, overhead
from lmgate.context._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
    text_of,
    to_messages,
)
from lmgate.context._params import normalize_params
from lmgate.policies import Fixed
from lmgate.sim import SimServer

TURNS = 500
WINDOW = 4096
MODEL = "qwen-7b"


@pytest.fixture
def anyio_backend(virtual_backend: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The simulated server takes virtual seconds per call: trio's MockClock skips them."""
    return virtual_backend


def true_tokens(messages: list[Message]) -> int:
    """The simulated model's own tokenizer: 3.6 characters a token, plus framing."""
    return sum(overhead(m) + math.ceil(len(text_of(m)) / 3.6) for m in messages)


def _tool_output(rnd: random.Random) -> str:
    # mostly small, often a file, sometimes a whole log: 40 chars to 120k chars
    size = int(rnd.choice([40, 400, 4_000, 12_000, 40_000, 120_000]) * rnd.uniform(0.5, 1.0))
    return "".join(rnd.choice("abcdefgh \n") for _ in range(64)) * (size // 64 + 1)


@pytest.mark.anyio
async def test_500_turns_through_the_scheduler_never_overflow() -> None:
    """Every call fits the 4k window and carries the newest turn and the task."""
    rnd = random.Random(6)
    server = SimServer(context_window=WINDOW, model=MODEL, name="gpu-box", slots=1)
    params = normalize_params({"max_tokens": "512", "temperature": "0.2"})
    assert params.max_tokens is not None
    reserve = params.max_tokens
    conv = Conversation([SystemMessage("You are a coding agent. Use tools. " * 10)])
    task = UserMessage("Fix the failing test in the repository.")
    pending: list[Message] = [task]
    peak = 0
    calls = 0
    largest_history = 0
    first_estimate_error = 0.0
    last_estimate_error = 0.0

    async with Scheduler([server.endpoint()], limit=Fixed(1)) as sched:
        for turn in range(TURNS):
            with conv.step(*pending) as step:
                pending = []
                history = step.messages

                async def call(lease: Lease, history: tuple[Message, ...] = history) -> None:
                    nonlocal peak, first_estimate_error, last_estimate_error
                    assert lease.fitted is not None
                    assert lease.messages is not None
                    sent = list(to_messages(lease.messages))
                    prompt = true_tokens(sent)
                    peak = max(peak, prompt + reserve)
                    last_estimate_error = prompt / lease.fitted.tokens - 1
                    if not first_estimate_error:
                        first_estimate_error = last_estimate_error
                    assert sent[0] == history[0], "system prompt lost"
                    newest = history[-1]
                    assert type(sent[-1]) is type(newest), "the newest turn was dropped"
                    if sent[-1] != newest:  # shortened, never replaced
                        assert isinstance(newest.content, str)
                        assert isinstance(sent[-1].content, str)
                        head = sent[-1].content.split("\n[...", 1)[0]
                        assert newest.content.startswith(head)
                    last_user = max(i for i, m in enumerate(history) if isinstance(m, UserMessage))
                    wanted = history[last_user]
                    assert isinstance(wanted.content, str)
                    assert any(
                        isinstance(m, UserMessage)
                        and isinstance(m.content, str)
                        and m.content[:20] == wanted.content[:20]
                        for m in sent
                    ), "the user's request was dropped"
                    # the server refuses what does not fit, and reports its own count
                    await server.serve(lease, prompt_tokens=prompt, output_tokens=reserve)

                await sched.run(call, model=MODEL, messages=history, max_tokens=reserve)
                if rnd.random() < 0.85:
                    n = rnd.choice([1, 1, 2])
                    reply = AssistantMessage(
                        None,
                        tuple(
                            ToolCall(
                                id=f"call{calls + k}", name="run", arguments='{"cmd": "pytest -x"}'
                            )
                            for k in range(n)
                        ),
                    )
                    calls += n
                    step.complete(reply)
                    for c in reply.tool_calls:
                        step.add_tool_result(ToolMessage(c.id, _tool_output(rnd)))
                else:
                    narrative = "narrative " * rnd.randint(5, 300)
                    step.complete(AssistantMessage("Progress: " + narrative))
                    pending = [UserMessage(f"Turn {turn}: keep going, next file please.")]
            largest_history = max(largest_history, sum(estimate_tokens(m) for m in conv.messages))
        stats = sched.stats()
    ctx = stats.context
    assert ctx is not None
    sim = server.statistics()
    print(
        f"\nlong session: {TURNS} turns through a Scheduler, {len(conv.messages)} messages in"
        f" history (~{largest_history} tokens); peak prompt+reserve by the server's count"
        f" {peak}/{WINDOW} ({peak / WINDOW:.0%}); lmgate's first estimate was"
        f" {first_estimate_error:.0%} low before calibration, {-last_estimate_error:.0%} high"
        f" after (it errs high on purpose); shortened {ctx.shortened} of"
        f" {ctx.fitted} calls, applied {ctx.applied}, dropped {ctx.dropped} messages,"
        f" compressed {ctx.compressed}, elided {ctx.elided_chars} chars; server failures"
        f" {sum(sim.failed.values())}"
    )
    assert stats.outcomes["completed"] == TURNS
    assert stats.submitted == TURNS
    assert ctx.fitted == TURNS
    assert ctx.overflows == 0
    assert sim.served == TURNS
    assert sim.failed["context_overflow"] == 0
    assert peak <= WINDOW
    assert first_estimate_error > 0.05  # the server's tokenizer really counts more
    assert last_estimate_error <= 0.0  # calibrated on the server's reports: never low
    assert largest_history > 50 * WINDOW  # the history really outgrew the window
    assert ctx.applied.get("SlidingWindow", 0) > 0
    assert ctx.applied.get("Compress", 0) > 0
