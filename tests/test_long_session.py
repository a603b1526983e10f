"""A 500-turn agent session with large tool results against a 4k-window local model.

The failure this library exists to end: the session's context grows past the
local model's window.  Here every model call goes through the context
strategy for a local endpoint; the simulated server refuses any prompt that
does not fit, and the test checks the newest turn always reaches the model.
"""

from __future__ import annotations

import random

import pytest

from lmgate._chat import AssistantMessage, SystemMessage, ToolCall, ToolMessage, UserMessage
from lmgate._conversation import Conversation
from lmgate._endpoint import Endpoint
from lmgate._params import normalize_params
from lmgate._tokens_estimate import estimate_tokens
from lmgate.policies.context import ContextCounters, afit_messages

TURNS = 500
ENDPOINT = Endpoint(
    "gpu-box", url="http://127.0.0.1:8080", models=["qwen-7b"], context_window=4096, local=True
)


class LocalServer:
    """A llama-server stand-in: a prompt over its window is an error, not a truncation."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.peak = 0

    def chat(self, prompt_tokens: int, max_tokens: int) -> None:
        self.peak = max(self.peak, prompt_tokens + max_tokens)
        if prompt_tokens + max_tokens > self.window:
            raise AssertionError(f"context overflow: {prompt_tokens} + {max_tokens}")


def _tool_output(rnd: random.Random) -> str:
    # mostly small, often a file, sometimes a whole log: 40 chars to 120k chars
    size = int(rnd.choice([40, 400, 4_000, 12_000, 40_000, 120_000]) * rnd.uniform(0.5, 1.0))
    return "".join(rnd.choice("abcdefgh \n") for _ in range(64)) * (size // 64 + 1)


@pytest.mark.anyio
async def test_500_turns_never_overflow_and_keep_the_last_turn() -> None:
    """Every call fits the 4k window and carries the newest turn and the task."""
    rnd = random.Random(6)
    window = ENDPOINT.window_for("qwen-7b")
    assert window == 4096
    params = normalize_params({"max_tokens": "512", "temperature": "0.2"})
    assert params.max_tokens is not None
    server = LocalServer(window)
    counters = ContextCounters()
    conv = Conversation([SystemMessage("You are a coding agent. Use tools. " * 10)])
    task = UserMessage("Fix the failing test in the repository.")
    pending = [task]
    calls = 0
    largest_history = 0
    for turn in range(TURNS):
        with conv.step(*pending) as step:
            pending = []
            fitted = await afit_messages(
                step.messages, window=window, reserve=params.max_tokens, local=ENDPOINT.local
            )
            counters.record(fitted)
            server.chat(fitted.tokens, params.max_tokens)
            sent, newest = fitted.messages, step.messages[-1]
            assert sent[0] == step.messages[0], "system prompt lost"
            assert type(sent[-1]) is type(newest), "the newest turn was dropped"
            if sent[-1] != newest:  # shortened, never replaced
                assert isinstance(newest.content, str)
                assert isinstance(sent[-1].content, str)
                assert newest.content.startswith(sent[-1].content[:200])
            last_user = max(i for i, m in enumerate(step.messages) if isinstance(m, UserMessage))
            assert any(
                m == step.messages[last_user]
                or (
                    isinstance(m, UserMessage)
                    and m.content[:20] == step.messages[last_user].content[:20]
                )
                for m in sent
            ), "the user's request was dropped"
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
                step.complete(AssistantMessage("Progress: " + "narrative " * rnd.randint(5, 300)))
                pending = [UserMessage(f"Turn {turn}: keep going, next file please.")]
        largest_history = max(largest_history, sum(estimate_tokens(m) for m in conv.messages))
    stats = counters.statistics()
    print(
        f"\nlong session: {TURNS} turns, {len(conv.messages)} messages in history"
        f" (~{largest_history} tokens), peak prompt+reserve {server.peak}/{window}"
        f" ({server.peak / window:.0%}), shortened {stats.shortened} calls,"
        f" applied {stats.applied}, dropped {stats.dropped} messages,"
        f" compressed {stats.compressed}, elided {stats.elided_chars} chars"
    )
    assert stats.fitted == TURNS
    assert stats.overflows == 0
    assert server.peak <= window
    assert largest_history > 50 * window  # the history really outgrew the window
    assert stats.applied.get("SlidingWindow", 0) > 0
    assert stats.applied.get("Compress", 0) > 0
