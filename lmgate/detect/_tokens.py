"""Counting tokens for a local model without a cloud tokenizer.

A cloud tokenizer (tiktoken and the like) counts a local model's prompt
wrong -- often by a third -- which is one of the ways cloud logic leaks
into local-model handling.  The server's own tokenizer is the truth, so it
is used where the server exposes one (llama.cpp and vLLM ``/tokenize``,
TGI ``/tokenize``).  Elsewhere :class:`TokenEstimator` is calibrated from
the usage fields the server returns after each call: it learns the
tokens-per-character ratio of *this* model on *this* caller's text and
errs high until it has seen enough.  The estimator is pure; the counting
function is the only I/O.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

import msgspec

from lmgate._errors import InvalidParameter

if TYPE_CHECKING:
    import httpx

__all__ = ["TokenCount", "TokenEstimator", "TokenEstimatorStatistics", "count_tokens"]

#: Before any observation: two characters per token, pessimistic for
#: English prose (about four) and about right for code and mixed scripts.
_PRIOR_RATIO = 0.5
_MIN_RATIO = 0.02
_MAX_RATIO = 2.0
_MAX_BODY = 1 << 20


@final
class TokenEstimatorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    samples: int
    ratio: float
    spread: float


@final
class TokenEstimator:
    """Estimates token counts from character counts, calibrated by usage.

    ``observe(chars, tokens)`` takes one call's prompt length in characters
    and the prompt token count the server reported.  The ratio is an
    exponentially weighted mean with a weighted mean absolute deviation;
    ``estimate`` adds ``margin`` deviations so that it over-counts far more
    often than it under-counts.  Until ``warmup`` observations have been
    seen, the prior ratio keeps a say in proportion.
    """

    __slots__ = ("_alpha", "_dev", "_margin", "_ratio", "_samples", "_warmup")

    def __init__(self, *, alpha: float = 0.1, margin: float = 2.0, warmup: int = 8) -> None:
        if not (isinstance(alpha, float) and 0.0 < alpha <= 1.0):
            raise InvalidParameter("alpha must be a float in (0, 1]", field="alpha")
        if not (isinstance(margin, int | float) and 0.0 <= margin <= 10.0):
            raise InvalidParameter("margin must be in [0, 10]", field="margin")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise InvalidParameter("warmup must be a non-negative int", field="warmup")
        self._alpha = alpha
        self._margin = float(margin)
        self._warmup = warmup
        self._ratio = _PRIOR_RATIO
        self._dev = 0.0
        self._samples = 0

    def observe(self, text_chars: int, tokens: int) -> None:
        """Feed one (characters, tokens) pair reported after a call."""
        for name, v in (("text_chars", text_chars), ("tokens", tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidParameter(f"{name} must be a non-negative int", field=name)
        if text_chars < 16 or tokens == 0:
            return  # too short to say anything about the ratio (template overhead dominates)
        ratio = min(max(tokens / text_chars, _MIN_RATIO), _MAX_RATIO)
        if self._samples == 0:
            self._ratio = ratio
        else:
            err = ratio - self._ratio
            self._ratio += self._alpha * err
            self._dev += self._alpha * (abs(err) - self._dev)
        self._samples += 1

    @property
    def ratio(self) -> float:
        """The tokens-per-character ratio estimates use, margin included."""
        learned = self._ratio + self._margin * self._dev
        if self._samples >= self._warmup:
            return learned
        w = self._samples / max(self._warmup, 1)
        return w * learned + (1.0 - w) * max(_PRIOR_RATIO, learned)

    def estimate(self, text: str | int) -> int:
        """Tokens ``text`` (or that many characters) will likely take, rounded up."""
        n = text if isinstance(text, int) and not isinstance(text, bool) else None
        if n is None:
            if not isinstance(text, str):
                raise InvalidParameter("text must be a str or a character count", field="text")
            n = len(text)
        if n < 0:
            raise InvalidParameter("character count must be >= 0", field="text")
        return math.ceil(n * self.ratio)

    def statistics(self) -> TokenEstimatorStatistics:
        return TokenEstimatorStatistics(samples=self._samples, ratio=self.ratio, spread=self._dev)

    def __repr__(self) -> str:
        return f"<TokenEstimator ratio={self.ratio:.3f} samples={self._samples}>"


@final
class TokenCount(msgspec.Struct, frozen=True, kw_only=True):
    """A token count; ``exact`` when the server's own tokenizer produced it."""

    tokens: int
    exact: bool
    source: str


async def count_tokens(
    url: str,
    text: str,
    *,
    kind: str,
    model: str | None = None,
    client: httpx.AsyncClient | None = None,
    estimator: TokenEstimator | None = None,
    timeout: float = 2.0,  # noqa: ASYNC109 -- an HTTP timeout, not a cancel scope
) -> TokenCount:
    """Count ``text``'s tokens with the server's tokenizer, else estimate.

    ``url`` is the server's base URL (a trailing ``/v1`` is ignored).  Falls
    back to the estimator when the server has no tokenizer route or the
    call fails; never consults a tokenizer of another model.
    """
    import anyio
    import httpx

    from lmgate.detect._probe import server_root

    est = estimator if estimator is not None else TokenEstimator()
    fallback = TokenCount(tokens=est.estimate(text), exact=False, source="estimate")
    if kind not in ("llamacpp", "vllm", "tgi"):
        return fallback
    root = server_root(url)
    if kind == "llamacpp":
        payload: object = {"content": text, "add_special": True}
    elif kind == "vllm":
        payload = {"model": model or "", "prompt": text}
    else:
        payload = {"inputs": text}
    own = client is None
    c = client if client is not None else httpx.AsyncClient(timeout=timeout)
    raw = bytearray()
    try:
        # The whole answer within ``timeout`` and under the cap, however it trickles.
        with anyio.move_on_after(timeout) as scope:
            async with c.stream("POST", root + "/tokenize", json=payload, timeout=timeout) as r:
                if r.status_code != 200:
                    return fallback
                async for chunk in r.aiter_bytes():
                    raw += chunk
                    if len(raw) > _MAX_BODY:
                        return fallback
        if scope.cancelled_caught:
            return fallback
        body = msgspec.json.decode(bytes(raw))
    except (httpx.HTTPError, msgspec.DecodeError, ValueError):
        return fallback
    finally:
        if own:
            await c.aclose()
    tokens: object = None
    if isinstance(body, dict):
        tokens = body.get("count", body.get("tokens"))
    elif isinstance(body, list):
        tokens = body
    if isinstance(tokens, list):
        tokens = len(tokens)
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return TokenCount(tokens=tokens, exact=True, source=f"{kind} /tokenize")
    return fallback
