"""A tokenizer-free token estimate, good enough to keep a prompt in its window.

Counting exactly needs the model's tokenizer, which a scheduler in front of
many servers rarely has.  English and code run at roughly four characters a
token; we round up and add a per-message overhead for the chat template, and
the context threshold (80 % by default) absorbs the rest of the error.
Anything better (a calibrated estimator, a real tokenizer) plugs in through
``count_tokens=``: a callable from one message to its token count.
:func:`scaled_counter` builds one from a characters-to-tokens function,
such as a :class:`lmgate.detect.TokenEstimator` calibrated on the server's
own usage reports.
"""

from __future__ import annotations

from collections.abc import Callable

from lmgate.context._messages import AssistantMessage, Message, text_of

__all__ = ["MESSAGE_OVERHEAD", "TokenCounter", "estimate_tokens", "overhead", "scaled_counter"]

#: Counts one message's tokens; totals are sums, so strategies can price
#: each message once and add.
TokenCounter = Callable[[Message], int]

#: Template tokens around each message (role markers, separators).
MESSAGE_OVERHEAD = 4
#: Tokens charged for a non-text content part (an image, audio).
_PART_TOKENS = 256


def overhead(message: Message) -> int:
    """The tokens of ``message`` that are not its text: template, parts, call framing."""
    tokens = MESSAGE_OVERHEAD
    content = message.content
    if isinstance(content, tuple):
        tokens += _PART_TOKENS * sum(1 for p in content if not isinstance(p.get("text"), str))
    if isinstance(message, AssistantMessage):
        tokens += MESSAGE_OVERHEAD * len(message.tool_calls)
    return tokens


def estimate_tokens(message: Message) -> int:
    """About ``len(text) / 4`` tokens plus template overhead, never zero."""
    return overhead(message) + (len(text_of(message)) + 3) // 4


def scaled_counter(tokens_for_chars: Callable[[int], int]) -> TokenCounter:
    """A counter that prices each message's text with ``tokens_for_chars``."""

    def count(message: Message) -> int:
        return overhead(message) + tokens_for_chars(len(text_of(message)))

    return count
