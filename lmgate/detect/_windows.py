"""Which context window to believe for a model, and where it came from.

A model's *trained* maximum (GGUF ``*.context_length``, LM Studio's
``max_context_length`` for an unloaded model, llama.cpp's ``n_ctx_train``)
is not what a server runs it with: Ollama allocates ``num_ctx`` (its
default depends on the machine), llama.cpp splits ``--ctx-size`` across its
slots, LM Studio loads with its own default.  Sending a prompt sized for
the trained maximum is how local models silently truncate or fail, so the
window used is, in order: the user's override; what the server says the
running model has; what the server is configured to give it; the server's
documented default; a conservative default for the model family.  Every
choice below the override is capped by the trained maximum.  Pure.
"""

from __future__ import annotations

import re
from typing import final

import msgspec

__all__ = ["WindowChoice", "family_default", "resolve_window", "server_default"]

#: Documented defaults of servers that do not always say.  Ollama's
#: default depends on VRAM (4k under 24 GiB, more above); LM Studio loads
#: a model with 4096 unless told otherwise.  Take the smaller figure.
_SERVER_DEFAULTS = {"ollama": 4096, "lmstudio": 4096}

_SIZE_SUFFIX = re.compile(r"(?<![\d.])(\d{1,4})k\b", re.IGNORECASE)

#: (pattern, window) -- first match wins.  Local families get what a server
#: typically runs them with, not their trained maximum; cloud families
#: their documented window, which is fixed by the provider.
_FAMILIES: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(p, re.IGNORECASE), n)
    for p, n in (
        (r"gpt-4\.1", 1_047_576),
        (r"gpt-5", 400_000),
        (r"gpt-4o|gpt-4-turbo|chatgpt-4o", 128_000),
        (r"gpt-3\.5", 16_385),
        (r"^gpt-4(-\d+)?$", 8_192),
        (r"(^|/)o[1-9](-|$)", 200_000),
        (r"claude", 200_000),
        (r"gemini", 1_048_576),
        (r"tinyllama", 2_048),
        (r"llama-?2|codellama|phi-?[234]|deepseek", 4_096),
        (r"llama-?3|mistral|mixtral|qwen|gemma|gpt-oss|granite|command-r", 8_192),
    )
)
_DEFAULT_LOCAL = 4_096
_DEFAULT_CLOUD = 8_192


@final
class WindowChoice(msgspec.Struct, frozen=True, kw_only=True):
    """A window in tokens and the source it came from."""

    tokens: int
    source: str


def server_default(kind: str) -> int | None:
    """The documented default window of a server kind, if it has one."""
    return _SERVER_DEFAULTS.get(kind)


def family_default(model: str, *, local: bool | None = True) -> int:
    """A conservative window for ``model`` judged by its name alone."""
    base = model.rsplit("/", 1)[-1]
    for pattern, window in _FAMILIES:
        if pattern.search(base):
            return window
    size = _SIZE_SUFFIX.search(base)
    if size is not None and 1 <= int(size.group(1)) <= 1024:
        return int(size.group(1)) * 1024
    return _DEFAULT_CLOUD if local is False else _DEFAULT_LOCAL


def resolve_window(
    model: str,
    *,
    override: int | None = None,
    loaded: int | None = None,
    reported: int | None = None,
    configured: int | None = None,
    trained: int | None = None,
    kind: str = "unknown",
    local: bool | None = True,
) -> WindowChoice:
    """Choose the window for ``model`` from what is known, best source first."""
    if override is not None:
        return WindowChoice(tokens=override, source="override")

    def capped(tokens: int, source: str) -> WindowChoice:
        if trained is not None and trained < tokens:
            return WindowChoice(tokens=trained, source=f"{source}, capped by trained maximum")
        return WindowChoice(tokens=tokens, source=source)

    if loaded is not None:
        return capped(loaded, "server: loaded model")
    if reported is not None:
        return capped(reported, "server")
    if configured is not None:
        return capped(configured, "server: configured num_ctx")
    default = server_default(kind)
    if default is not None:
        return capped(default, f"{kind} default")
    return capped(family_default(model, local=local), "family default")
