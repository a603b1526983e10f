"""Deciding what a server is, and whether it is self-hosted, from evidence.

Servers imitate each other -- LocalAI answers Ollama's routes and heartbeat,
llama.cpp's model list carries an Ollama-style array, every server speaks
OpenAI's ``/v1/models`` -- so no single route identifies one.  Each
observation becomes :class:`Evidence` with a weight: 3 for what only one
server produces, 2 for what is rare, 1 for what is commonly imitated, 0 for
what is merely informative.  :func:`decide` sums the weights per kind and
applies the consensus rules:

1. a self-hosted fingerprint wins over a public URL (a reverse proxy in
   front of a local server is still a local server);
2. a cloud fingerprint wins over a loopback URL (a local proxy to a cloud
   API is still a cloud API);
3. only without a fingerprint do the URL's locality and the model names
   decide.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import final

import msgspec

from lmgate.detect._locality import Locality

__all__ = [
    "CLOUD_HOST_SUFFIXES",
    "SELF_HOSTED_KINDS",
    "Evidence",
    "Verdict",
    "decide",
    "model_name_hint",
]

#: Kinds that are model servers someone runs themselves.
SELF_HOSTED_KINDS = frozenset({"ollama", "llamacpp", "vllm", "lmstudio", "tgi", "localai"})

#: When two kinds score the same, the more specific (the imitator) wins:
#: LocalAI imitates Ollama, LM Studio and llama.cpp sit on llama.cpp.
_PRECEDENCE = ("localai", "lmstudio", "llamacpp", "tgi", "vllm", "ollama", "openai")

#: A kind needs at least this much weight to be claimed.
_THRESHOLD = 2

#: Hosts of hosted APIs, a hint used only when no fingerprint decides.
CLOUD_HOST_SUFFIXES = (
    "api.openai.com",
    "openai.azure.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "api.groq.com",
    "api.together.xyz",
    "api.together.ai",
    "api.mistral.ai",
    "openrouter.ai",
    "api.deepseek.com",
    "api.fireworks.ai",
    "api.perplexity.ai",
    "api.x.ai",
    "api.cohere.ai",
    "api.cohere.com",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "inference.ai.azure.com",
    "bedrock-runtime.amazonaws.com",
)

_CLOUD_MODEL = re.compile(
    r"^(gpt-|chatgpt|o[1-9](-|$)|text-embedding-|claude|gemini|command-r|grok-|sonar)",
    re.IGNORECASE,
)
_LOCAL_MODEL = re.compile(
    r"(\.gguf$|-gguf\b|[:@](\d+(\.\d+)?[bmk]|latest)\b|\bq\d(_k)?(_[msl0-9])?\b|"
    r"\b(iq|q)\d_\w+|\bf16\b|\bmlx\b|\bawq\b|\bgptq\b)",
    re.IGNORECASE,
)


@final
class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """One signal seen while probing.

    ``points_to`` is a server kind, or ``"self-hosted"`` / ``"cloud"`` for a
    signal that tells only which side a server is on.  ``weight`` is how
    much the signal counts (0 = informative only).
    """

    source: str
    signal: str
    points_to: str
    weight: int


@final
class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The consensus: the kind, whether it is self-hosted, and why."""

    kind: str
    local: bool | None
    reason: str
    scores: dict[str, int] = {}


def model_name_hint(models: Iterable[str]) -> bool | None:
    """True when model names look local (GGUF, tags, quant), False when cloud."""
    local = cloud = 0
    for name in models:
        if _LOCAL_MODEL.search(name):
            local += 1
        elif _CLOUD_MODEL.match(name.rsplit("/", 1)[-1]):
            cloud += 1
    if local > cloud:
        return True
    if cloud > local:
        return False
    return None


def _cloud_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == s or host.endswith("." + s) for s in CLOUD_HOST_SUFFIXES)


def decide(
    evidence: Sequence[Evidence],
    where: Locality,
    *,
    host: str = "",
    models: Sequence[str] = (),
) -> Verdict:
    """Apply the consensus rules to ``evidence`` about a server at ``where``."""
    scores: dict[str, int] = {}
    for ev in evidence:
        if ev.weight > 0:
            scores[ev.points_to] = scores.get(ev.points_to, 0) + ev.weight
    kind_scores = {k: v for k, v in scores.items() if k in SELF_HOSTED_KINDS or k == "openai"}
    kind = "unknown"
    if kind_scores:
        best = max(kind_scores.values())
        if best >= _THRESHOLD:
            kind = next(k for k in _PRECEDENCE if kind_scores.get(k) == best)
    if kind in SELF_HOSTED_KINDS:
        why = f"{kind} fingerprint (score {kind_scores[kind]})"
        if where is Locality.PUBLIC:
            why += " behind a public URL: a self-hosted server all the same"
        return Verdict(kind=kind, local=True, reason=why, scores=scores)
    cloud = scores.get("cloud", 0) + kind_scores.get("openai", 0)
    hosted = scores.get("self-hosted", 0)
    if kind == "openai" or (cloud >= _THRESHOLD and cloud > hosted):
        why = f"cloud API fingerprint (score {cloud})"
        if where.is_local:
            why += f" behind a {where.value} URL: a proxy to a cloud API"
        return Verdict(kind="openai", local=False, reason=why, scores=scores)
    if hosted >= _THRESHOLD:
        return Verdict(
            kind="unknown",
            local=True,
            reason=f"self-hosted server of unknown kind (score {hosted})",
            scores=scores,
        )
    return _without_fingerprint(where, host, models, scores)


def _without_fingerprint(
    where: Locality, host: str, models: Sequence[str], scores: dict[str, int]
) -> Verdict:
    if where is Locality.INVALID:
        return Verdict(kind="unknown", local=None, reason="invalid URL", scores=scores)
    if where.is_local:
        return Verdict(
            kind="unknown",
            local=True,
            reason=f"no fingerprint; {where.value} URL",
            scores=scores,
        )
    if _cloud_host(host):
        return Verdict(
            kind="unknown",
            local=False,
            reason=f"no fingerprint; {host} is a hosted API",
            scores=scores,
        )
    hint = model_name_hint(models)
    if hint is True:
        return Verdict(
            kind="unknown",
            local=True,
            reason="no fingerprint; public URL but local-style model names",
            scores=scores,
        )
    why = "no fingerprint; public URL"
    if hint is False:
        why += " and cloud model names"
    return Verdict(kind="unknown", local=False, reason=why, scores=scores)
