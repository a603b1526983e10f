"""Asking a server what it is, through its documented routes only.

The probe makes at most three rounds of GET requests (one POST per model to
Ollama's ``/api/show``), each round bounded by ``timeout``: first the routes
that tell servers apart, then the routes of the candidates the first round
found, then per-model details.  It is careful with what it does not know:
it never follows a redirect to another host, reads at most 1 MiB of any
body, and sends an API key only to the origin the key was given for.  What
it learns is cached per URL for a while, and :func:`invalidate` drops the
entry when the endpoint fails, so the next probe looks again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from typing import cast, final

import anyio
import httpx
import msgspec

from lmgate._errors import InvalidParameter
from lmgate.detect._cache import ProbeCache
from lmgate.detect._evidence import Observation, Reading, read
from lmgate.detect._fingerprint import Evidence, Verdict, decide
from lmgate.detect._locality import Locality, UrlLocality, classify_url
from lmgate.detect._windows import resolve_window
from lmgate.security._secrets import guard_http_logs

__all__ = [
    "MAX_BODY",
    "ServerInfo",
    "invalidate",
    "probe",
    "server_root",
]

#: The most of any response body a probe reads.
MAX_BODY = 1 << 20
_MAX_REDIRECTS = 3
_MAX_SHOW = 8
_FIRST_ROUND = ("/api/version", "/props", "/info", "/version", "/api/v0/models", "/health")


@final
class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a probe learned about the server at ``url``.

    ``kind`` is one of :data:`lmgate.KINDS`; ``local`` is True for a
    self-hosted model server wherever it sits, False for a cloud API, None
    when nothing can be said.  ``context_windows`` maps each model to the
    window to use and ``window_sources`` says where each figure came from.
    ``evidence`` lists every signal seen; ``reason`` is the decision.
    """

    url: str
    kind: str
    local: bool | None
    locality: Locality
    reason: str
    reachable: bool
    version: str | None = None
    models: tuple[str, ...] = ()
    context_windows: dict[str, int] = {}
    window_sources: dict[str, str] = {}
    trained_windows: dict[str, int] = {}
    slots: int | None = None
    #: The most prompt + output tokens the server holds at once, where it
    #: says so (llama.cpp: its slots times each slot's ``n_ctx``).
    kv_tokens: int | None = None
    kv_source: str | None = None
    health_route: str | None = None
    tokenize_route: str | None = None
    loading: bool = False
    evidence: tuple[Evidence, ...] = ()
    error: str | None = None


_CACHE: ProbeCache[ServerInfo] = ProbeCache()


def invalidate(url: str) -> None:
    """Forget what was probed about ``url`` (call it when the endpoint fails)."""
    _CACHE.invalidate(url)


def server_root(url: str) -> str:
    """The URL under which a server's native routes live (``/v1`` removed)."""
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


def _origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    u = httpx.URL(str(url))
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return (u.scheme, u.host, port)


class _Fetcher:
    """Issues probe requests under the redirect, size and key rules."""

    def __init__(self, client: httpx.AsyncClient, root: str, api_key: str | None) -> None:
        self._client = client
        self._root = root
        self._origin = _origin(root)
        self._key = api_key

    async def fetch(
        self,
        path: str,
        wait: float,
        *,
        method: str = "GET",
        json: object = None,
        subject: str | None = None,
    ) -> Observation:
        url = httpx.URL(self._root + path)
        obs = Observation(method=method, path=path, status=None, error="timeout", subject=subject)
        with anyio.move_on_after(wait):
            obs = await self._follow(url, path, wait, method, json, subject)
        return obs

    async def _follow(
        self,
        url: httpx.URL,
        path: str,
        wait: float,
        method: str,
        json: object,
        subject: str | None,
    ) -> Observation:
        def failed(error: str) -> Observation:
            return Observation(method=method, path=path, status=None, error=error, subject=subject)

        for _ in range(_MAX_REDIRECTS + 1):
            headers = {"accept": "application/json"}
            request = self._client.build_request(
                method, url, json=json, headers=headers, timeout=wait
            )
            if self._key is not None and _origin(url) == self._origin:
                request.headers["authorization"] = f"Bearer {self._key}"
            elif _origin(url) != self._origin:
                for h in ("authorization", "api-key", "x-api-key"):
                    request.headers.pop(h, None)
            try:
                response = await self._client.send(request, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                return failed(f"{type(exc).__name__}: {str(exc)[:200]}")
            try:
                if response.is_redirect:
                    target = url.join(response.headers.get("location", ""))
                    if _origin(target) != self._origin:
                        return failed(f"redirect to another host refused ({target.host})")
                    url = target
                    continue
                body, truncated = await _read_capped(response)
            except httpx.HTTPError as exc:
                return failed(f"{type(exc).__name__}: {str(exc)[:200]}")
            finally:
                await response.aclose()
            return Observation(
                method=method,
                path=path,
                status=response.status_code,
                headers={k.lower(): v[:512] for k, v in response.headers.items()},
                body=body,
                truncated=truncated,
                subject=subject,
            )
        return failed("too many redirects")


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    gen = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
    async with aclosing(gen):
        async for chunk in gen:
            size += len(chunk)
            if size > MAX_BODY:
                return b"".join(chunks), True
            chunks.append(chunk)
    return b"".join(chunks), False


async def probe(
    url: str,
    *,
    model: str | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: float = 2.0,  # noqa: ASYNC109 -- bounds each round, not the caller's scope
    api_key: str | None = None,
    refresh: bool = False,
) -> ServerInfo:
    """Find out what serves ``url``: kind, version, models, windows, slots.

    ``timeout`` bounds each round of requests (at most three rounds).
    ``api_key`` is sent only to ``url``'s own origin.  A cached answer
    younger than the cache's TTL is returned unless ``refresh``.
    """
    where = classify_url(url)
    if where.locality is Locality.INVALID:
        raise InvalidParameter(f"cannot probe {str(url)[:80]!r}: {where.reason}", field="url")
    if not (isinstance(timeout, int | float) and 0 < timeout < 3600):
        raise InvalidParameter("timeout must be in (0, 3600) seconds", field="timeout")
    if model is not None and (not isinstance(model, str) or not model or len(model) > 512):
        raise InvalidParameter("model must be a non-empty string", field="model")
    if "@" in url:
        guard_http_logs()
    now = anyio.current_time()
    slot = model if api_key is None else f"{model or ''}\x00keyed"  # a keyed probe sees more
    if not refresh:
        cached = _CACHE.get(url, slot, now)
        if cached is not None:
            return cached
    if client is not None:
        info = await _probe(url, where, model, client, timeout, api_key)
    else:
        transport = httpx.AsyncHTTPTransport(uds=where.socket_path) if where.socket_path else None
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as own:
            info = await _probe(url, where, model, own, timeout, api_key)
    if info.reachable:
        _CACHE.put(url, slot, info, anyio.current_time())
    return info


async def _round(
    fetcher: _Fetcher, requests: Sequence[tuple[str, object, str | None]], wait: float
) -> list[Observation]:
    results: list[Observation | None] = [None] * len(requests)

    async def one(i: int, path: str, body: object, subject: str | None) -> None:
        method = "GET" if body is None else "POST"
        results[i] = await fetcher.fetch(path, wait, method=method, json=body, subject=subject)

    async with anyio.create_task_group() as tg:
        for i, (path, body, subject) in enumerate(requests):
            tg.start_soon(one, i, path, body, subject)
    return [r for r in results if r is not None]


async def _probe(
    url: str,
    where: UrlLocality,
    model: str | None,
    client: httpx.AsyncClient,
    wait: float,
    api_key: str | None,
) -> ServerInfo:
    root = "http://localhost" + where.path.rstrip("/") if where.socket_path else server_root(url)
    models_path = "/v1/models"
    fetcher = _Fetcher(client, root, api_key)
    first = await _round(fetcher, [(p, None, None) for p in (models_path, *_FIRST_ROUND)], wait)
    readings = {o.path: read(o) for o in first}
    seen = _signals(readings)
    second: list[str] = []
    if "ollama" in seen or "localai" in seen:
        second += ["/api/tags", "/api/ps", "/", "/.well-known/localai.json", "/readyz"]
    if "llamacpp" in seen:
        second += ["/slots"]
    if "vllm" in seen:  # its metrics name it, and say how many tokens its cache holds
        second += ["/metrics"]
    if "lmstudio" in seen and not readings["/api/v0/models"].evidence:
        second += ["/api/v1/models"]
    if not seen and readings[models_path].models:
        second += ["/.well-known/localai.json", "/readyz"]
    observations = list(first)
    if second:
        more = await _round(fetcher, [(p, None, None) for p in second], wait)
        observations += more
        readings.update({o.path: read(o) for o in more})
    facts = _merge(readings.values())
    verdict = decide(
        facts.evidence, where.locality, host=where.host, models=[*facts.models, model or ""]
    )
    if verdict.kind == "ollama":
        wanted = [model] if model else facts.models[:_MAX_SHOW]
        shows = await _round(fetcher, [("/api/show", {"model": m}, m) for m in wanted if m], wait)
        observations += shows
        for o in shows:
            r = read(o)
            facts.configured_windows.update(r.configured_windows)
            facts.trained.update(r.trained)
            facts.evidence.extend(r.evidence)
    return _build(url, where, model, verdict, facts, observations)


def _all(readings: dict[str, Reading]) -> list[Evidence]:
    return [e for r in readings.values() for e in r.evidence]


def _signals(readings: dict[str, Reading]) -> set[str]:
    return {e.points_to for e in _all(readings) if e.weight > 0}


def _merge(readings: Iterable[Reading]) -> Reading:
    out = Reading()
    seen: set[tuple[str, str]] = set()
    for r in readings:
        for e in r.evidence:
            if (e.signal, e.points_to) not in seen:
                seen.add((e.signal, e.points_to))
                out.evidence.append(e)
        for m in r.models:
            if m not in out.models:
                out.models.append(m)
        out.windows.update(r.windows)
        out.loaded_windows.update(r.loaded_windows)
        out.configured_windows.update(r.configured_windows)
        out.trained.update(r.trained)
        out.server_window = r.server_window or out.server_window
        out.slots = r.slots or out.slots
        out.kv_tokens = r.kv_tokens or out.kv_tokens
        for k, v in r.versions.items():
            out.versions.setdefault(k, v)
        out.health_route = out.health_route or r.health_route
        out.fallback_health = out.fallback_health or r.fallback_health
        out.loading = out.loading or r.loading
    return out


def _build(
    url: str,
    where: UrlLocality,
    model: str | None,
    verdict: Verdict,
    facts: Reading,
    observations: list[Observation],
) -> ServerInfo:
    kind, local, reason = verdict.kind, verdict.local, verdict.reason
    reachable = any(o.status is not None for o in observations)
    models = list(facts.models)
    evidence = list(facts.evidence)
    if model and model not in models:
        if models:
            evidence.append(
                Evidence(source="probe", signal=f"{model!r} not listed", points_to=kind, weight=0)
            )
        models.append(model)
    windows: dict[str, int] = {}
    sources: dict[str, str] = {}
    for m in models:
        choice = resolve_window(
            m,
            loaded=facts.loaded_windows.get(m),
            reported=facts.windows.get(m, facts.server_window),
            configured=facts.configured_windows.get(m),
            trained=facts.trained.get(m),
            kind=kind,
            local=local,
        )
        windows[m] = choice.tokens
        sources[m] = choice.source
    errors = sorted({o.error for o in observations if o.error})
    kv, kv_source = None, None
    if kind == "llamacpp" and facts.slots and facts.server_window:
        kv, kv_source = facts.slots * facts.server_window, "props"
    elif kind == "vllm" and facts.kv_tokens:
        kv, kv_source = facts.kv_tokens, "metrics"
    elif kind == "ollama" and facts.loaded_windows and (parallel := _ollama_parallel(local)):
        # Each of Ollama's parallel slots holds the loaded model's whole context.
        kv, kv_source = max(facts.loaded_windows.values()) * parallel, "api/ps"
    return ServerInfo(
        url=url,
        kind=kind,
        local=local,
        locality=where.locality,
        reason=reason if reachable else f"unreachable; {reason}",
        reachable=reachable,
        version=facts.versions.get(kind) or next(iter(facts.versions.values()), None),
        models=tuple(models),
        context_windows=windows,
        window_sources=sources,
        trained_windows=dict(facts.trained),
        slots=facts.slots,
        kv_tokens=kv,
        kv_source=kv_source,
        health_route=facts.health_route or facts.fallback_health,
        tokenize_route="/tokenize" if kind in ("llamacpp", "vllm", "tgi") else None,
        loading=facts.loading,
        evidence=tuple(evidence),
        error=None if reachable else (errors[0] if errors else "no answer"),
    )


def _ollama_parallel(local: bool | None) -> int | None:
    """``OLLAMA_NUM_PARALLEL`` where it can be known: a server on this machine,
    started from this environment.  Ollama's API does not say it, and a guess
    too low would hold admission to fewer requests than the server runs."""
    if not local:
        return None
    value = os.environ.get("OLLAMA_NUM_PARALLEL", "")
    return int(value) if value.isdigit() and 0 < int(value) <= 1024 else None
