"""Prompts and conversations: messages, token estimates, fitting, history.

This package owns everything about what is sent to a model: the chat
message types (OpenAI-shaped dicts in, the same shape out), sampling
parameter checks, token estimates, the strategies that fit a prompt into a
context window, and the conversation state with its crash-safe journal.
It is pure apart from the journal's file writes: it imports only lmgate's
errors, validation helpers and observability events, never policies,
actors, transports or the scheduler.
"""

from lmgate.context._conversation import Conversation, ConversationStatistics
from lmgate.context._estimate import estimate_tokens
from lmgate.context._fit import (
    Applied,
    Chain,
    Compress,
    ContextApplied,
    ContextStatistics,
    ContextStrategy,
    Fitted,
    ResetWithSummary,
    SchedulerSummarizer,
    SlidingWindow,
    Summarizer,
    afit_messages,
    fit_messages,
    reachable_tokens,
)
from lmgate.context._journal import Journal, JournalReport, read_journal
from lmgate.context._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from lmgate.context._params import SamplingParams, normalize_params

__all__ = [
    "Applied",
    "AssistantMessage",
    "Chain",
    "Compress",
    "ContextApplied",
    "ContextStatistics",
    "ContextStrategy",
    "Conversation",
    "ConversationStatistics",
    "Fitted",
    "Journal",
    "JournalReport",
    "Message",
    "ResetWithSummary",
    "SamplingParams",
    "SchedulerSummarizer",
    "SlidingWindow",
    "Summarizer",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "afit_messages",
    "estimate_tokens",
    "fit_messages",
    "normalize_params",
    "reachable_tokens",
    "read_journal",
]
