"""Reading the documented responses of each server into evidence and facts.

One function per documented route.  Each takes an :class:`Observation` (what
came back: status, headers, a capped body) and returns a :class:`Reading`:
the :class:`~lmgate.detect._fingerprint.Evidence` it carries and the facts
it states (version, models, context windows, slots).  Bodies come from the
network, so every field is checked for type and size; a malformed answer is
simply no evidence.  Sources of each shape: llama.cpp ``tools/server``
(``/health``, ``/props``, ``/slots``, ``/v1/models``), Ollama ``docs/api.md``
(``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/show``), vLLM's
OpenAI server (``/version``, ``ModelCard.max_model_len``, ``/metrics``),
TGI's router ``/info``, LM Studio ``/api/v0/models`` and ``/api/v1/models``,
LocalAI's routes (``/version``, ``/readyz``, ``/.well-known/localai.json``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, final

import msgspec

from lmgate.detect._fingerprint import Evidence

__all__ = ["Observation", "Reading", "read"]

_MAX_MODELS = 256
_MAX_NAME = 512
_SEMVER = re.compile(r"^v?\d+\.\d+(\.\d+)?([.+-][0-9A-Za-z.+-]*)?( \(.*\))?$")
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


@final
class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """One probe request's outcome; ``status`` is None when it failed."""

    method: str
    path: str
    status: int | None
    headers: dict[str, str] = {}
    body: bytes = b""
    error: str | None = None
    truncated: bool = False
    subject: str | None = None

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (or was cut)."""
        if self.truncated or not self.body:
            return None
        try:
            return msgspec.json.decode(self.body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None

    @property
    def source(self) -> str:
        return f"{self.method} {self.path}"


class Reading(msgspec.Struct, kw_only=True):
    """What one observation says; merged by the probe."""

    evidence: list[Evidence] = msgspec.field(default_factory=list)
    versions: dict[str, str] = msgspec.field(default_factory=dict)
    models: list[str] = msgspec.field(default_factory=list)
    windows: dict[str, int] = msgspec.field(default_factory=dict)
    loaded_windows: dict[str, int] = msgspec.field(default_factory=dict)
    configured_windows: dict[str, int] = msgspec.field(default_factory=dict)
    trained: dict[str, int] = msgspec.field(default_factory=dict)
    server_window: int | None = None
    slots: int | None = None
    #: The KV cache in tokens, where the server states it (vLLM's cache config).
    kv_tokens: int | None = None
    health_route: str | None = None
    fallback_health: str | None = None
    loading: bool = False

    def add(self, obs: Observation, signal: str, points_to: str, weight: int) -> None:
        self.evidence.append(
            Evidence(source=obs.source, signal=signal, points_to=points_to, weight=weight)
        )


def _str(x: Any) -> str | None:
    if isinstance(x, str) and 0 < len(x) <= _MAX_NAME and "\x00" not in x:
        return x
    return None


def _int(x: Any) -> int | None:
    if isinstance(x, int) and not isinstance(x, bool) and 0 < x < 2**40:
        return x
    return None


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x[:_MAX_MODELS] if isinstance(x, list) else []


def _version_of(out: Reading, kind: str, value: Any) -> None:
    ver = _str(value)
    if ver is not None:
        out.versions.setdefault(kind, ver[:120])


def read(obs: Observation) -> Reading:
    """Evidence and facts from one observation (never raises on bad input)."""
    out = Reading()
    _headers(obs, out)
    if obs.status is None:
        return out
    parser = _ROUTES.get(obs.path.rstrip("/") or "/")
    if parser is None and obs.path.endswith("/models") and not obs.path.startswith("/api/"):
        parser = _openai_models
    if parser is not None:
        parser(obs, out)
    return out


def _headers(obs: Observation, out: Reading) -> None:
    h = obs.headers
    server = h.get("server", "")
    if server.lower().startswith("llama.cpp"):
        out.add(obs, f"Server: {server[:40]}", "llamacpp", 3)
    if any(k in h for k in ("openai-version", "openai-organization", "openai-processing-ms")):
        out.add(obs, "openai-* response headers", "openai", 3)
    if any(k.startswith("anthropic-") for k in h) or "x-groq-region" in h:
        out.add(obs, "hosted-API response headers", "cloud", 3)
    if "x-ratelimit-limit-requests" in h or "x-ratelimit-limit-tokens" in h:
        out.add(obs, "x-ratelimit-* quota headers", "cloud", 1)


def _openai_models(obs: Observation, out: Reading) -> None:
    body = obs.json()
    if obs.status in (401, 403):
        err = _dict(_dict(body).get("error"))
        msg = (_str(err.get("message")) or "")[:80]
        out.add(obs, f"HTTP {obs.status}: requires a key ({msg})", "cloud", 0)
        return
    if obs.status != 200 or not isinstance(body, dict):
        return
    if isinstance(body.get("data"), list):
        out.fallback_health = obs.path
    data = _list(body.get("data"))
    owners: set[str] = set()
    for entry in data:
        e = _dict(entry)
        mid = _str(e.get("id"))
        if mid is None:
            continue
        out.models.append(mid)
        owner = _str(e.get("owned_by"))
        if owner:
            owners.add(owner)
        mml = _int(e.get("max_model_len"))
        if mml is not None:
            out.windows[mid] = mml
        meta = _dict(e.get("meta"))
        n_ctx = _int(meta.get("n_ctx"))
        if n_ctx is not None:
            out.windows[mid] = n_ctx
        train = _int(meta.get("n_ctx_train"))
        if train is not None:
            out.trained[mid] = train
    if "llamacpp" in owners:
        out.add(obs, "owned_by: llamacpp", "llamacpp", 3)
    if "vllm" in owners:
        out.add(obs, "owned_by: vllm", "vllm", 3)
    if "sglang" in owners:
        out.add(obs, "owned_by: sglang", "self-hosted", 3)
    if "organization_owner" in owners:
        out.add(obs, "owned_by: organization_owner", "lmstudio", 1)
    if "library" in owners:
        out.add(obs, "owned_by: library (Ollama namespace)", "ollama", 1)
    if owners & {"openai", "system", "openai-internal", "openai-dev"}:
        out.add(obs, "owned_by: openai/system", "openai", 2)
    if any("max_model_len" in _dict(e) for e in data) and "vllm" not in owners:
        out.add(obs, "max_model_len in model cards", "vllm", 1)
    if isinstance(body.get("models"), list) and "llamacpp" not in owners:
        out.add(obs, "Ollama-style models array beside data", "llamacpp", 1)


def _props(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    dgs = _dict(body.get("default_generation_settings"))
    if obs.status != 200 or not dgs:
        return
    slots = _int(body.get("total_slots"))
    n_ctx = _int(dgs.get("n_ctx"))
    out.add(obs, f"default_generation_settings, total_slots={slots}", "llamacpp", 3)
    out.slots = slots
    out.server_window = n_ctx
    alias = _str(body.get("model_alias")) or _str(body.get("model_path"))
    if alias and n_ctx:
        out.windows[alias] = n_ctx
    _version_of(out, "llamacpp", body.get("build_info"))


def _slots(obs: Observation, out: Reading) -> None:
    body = obs.json()
    if obs.status != 200 or not isinstance(body, list) or not body:
        return
    ctxs = [_int(_dict(s).get("n_ctx")) for s in body[:1024]]
    if all(c is not None for c in ctxs) and all("id" in _dict(s) for s in body[:1024]):
        out.add(obs, f"{len(body)} slots with per-slot n_ctx", "llamacpp", 2)
        out.slots = len(body)
        out.server_window = min(c for c in ctxs if c is not None)


def _health(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    if obs.status == 200 and "error" not in body:
        out.health_route = obs.path
        if body.get("status") == "ok":
            out.add(obs, '{"status": "ok"}', "llamacpp", 1)
    elif obs.status == 503:
        err = _dict(body.get("error"))
        msg = (_str(err.get("message")) or "").lower()
        if "loading" in msg:
            out.health_route = obs.path
            out.loading = True
            out.add(obs, "503 Loading model", "llamacpp", 1)


def _api_version(obs: Observation, out: Reading) -> None:
    ver = _str(_dict(obs.json()).get("version"))
    if obs.status == 200 and ver and _SEMVER.match(ver):
        out.add(obs, f"version {ver}", "ollama", 1)
        _version_of(out, "ollama", ver)
        out.health_route = obs.path


def _api_tags(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    models = _list(body.get("models"))
    if obs.status != 200 or "models" not in body:
        return
    named = [m for m in models if _str(_dict(m).get("name")) and "digest" in _dict(m)]
    if named or not models:
        out.add(obs, f"{len(named)} models with name+digest", "ollama", 1)
    out.models.extend(str(_dict(m)["name"]) for m in named)


def _api_ps(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    if obs.status != 200 or not isinstance(body.get("models"), list):
        return
    vram = False
    for m in _list(body.get("models")):
        e = _dict(m)
        name = _str(e.get("name")) or _str(e.get("model"))
        ctx = _int(e.get("context_length"))
        vram = vram or "size_vram" in e
        if name and ctx:
            out.loaded_windows[name] = ctx
    out.add(obs, "running models list" + (" with size_vram" if vram else ""), "ollama", 1)


def _api_show(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    if obs.status != 200 or not ("modelfile" in body or "model_info" in body):
        return
    name = obs.subject or ""
    params = _str(body.get("parameters")) or ""
    match = _NUM_CTX.search(params)
    if name and match:
        out.configured_windows[name] = int(match.group(1))
    for key, value in _dict(body.get("model_info")).items():
        if isinstance(key, str) and key.endswith(".context_length") and name:
            ctx = _int(value)
            if ctx:
                out.trained[name] = ctx
    out.add(obs, "model details (modelfile, model_info)", "ollama", 1)


def _root(obs: Observation, out: Reading) -> None:
    if obs.status == 200 and obs.body.strip() == b"Ollama is running":
        out.add(obs, "'Ollama is running'", "ollama", 1)
        out.health_route = out.health_route or "/"


def _version(obs: Observation, out: Reading) -> None:
    ver = _str(_dict(obs.json()).get("version"))
    if obs.status != 200 or not ver or not _SEMVER.match(ver):
        return
    kind = "localai" if ver.startswith("v") else "vllm"
    _version_of(out, kind, ver)
    if kind == "localai":
        out.add(obs, f"version {ver} (LocalAI style)", "localai", 2)
    else:
        out.add(obs, f"version {ver}", "vllm", 1)


def _localai_well_known(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    if obs.status == 200 and isinstance(body.get("endpoints"), dict):
        out.add(obs, "LocalAI discovery document", "localai", 3)
        _version_of(out, "localai", body.get("version"))


def _readyz(obs: Observation, out: Reading) -> None:
    if obs.status == 200:
        out.add(obs, "readiness route answers", "localai", 1)
        out.health_route = obs.path


def _info(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    model = _str(body.get("model_id"))
    total = _int(body.get("max_total_tokens"))
    if obs.status != 200 or not model or total is None:
        return
    router = _str(body.get("router"))
    out.add(obs, "model_id, max_total_tokens" + (f", router {router}" if router else ""), "tgi", 3)
    out.models.append(model)
    out.windows[model] = total
    _version_of(out, "tgi", body.get("version"))
    out.health_route = "/health"


def _lmstudio_v0(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    data = [_dict(e) for e in _list(body.get("data"))]
    if obs.status != 200 or not data or not any("compatibility_type" in e for e in data):
        return
    out.add(obs, "models with compatibility_type/state", "lmstudio", 3)
    for e in data:
        mid = _str(e.get("id"))
        if mid is None:
            continue
        out.models.append(mid)
        trained = _int(e.get("max_context_length"))
        if trained:
            out.trained[mid] = trained
        loaded = _int(e.get("loaded_context_length"))
        if loaded and e.get("state") == "loaded":
            out.loaded_windows[mid] = loaded


def _lmstudio_v1(obs: Observation, out: Reading) -> None:
    body = _dict(obs.json())
    models = [_dict(e) for e in _list(body.get("models"))]
    if obs.status != 200 or not models or not any("loaded_instances" in e for e in models):
        return
    out.add(obs, "models with loaded_instances", "lmstudio", 3)
    for e in models:
        key = _str(e.get("key"))
        if key is None:
            continue
        out.models.append(key)
        trained = _int(e.get("max_context_length"))
        if trained:
            out.trained[key] = trained
        for inst in _list(e.get("loaded_instances")):
            ctx = _int(_dict(_dict(inst).get("config")).get("context_length"))
            if ctx:
                out.loaded_windows[key] = ctx


def _metrics(obs: Observation, out: Reading) -> None:
    if obs.status != 200:
        return
    text = obs.body[:262144]
    if b"\nvllm:" in text or text.startswith(b"vllm:") or b" vllm:" in text:
        out.add(obs, "vllm:* metrics", "vllm", 3)
        out.kv_tokens = _vllm_cache(text.decode("utf-8", "replace"))
    if b"llamacpp:" in text:
        out.add(obs, "llamacpp:* metrics", "llamacpp", 3)
    if b"tgi_" in text:
        out.add(obs, "tgi_* metrics", "tgi", 2)


def _vllm_cache(text: str) -> int | None:
    """Blocks times block size from vLLM's ``vllm:cache_config_info`` labels."""
    # Imported here: ``import lmgate`` stays free of it until a probe reads metrics.
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(text):
            if family.name != "vllm:cache_config_info":
                continue
            for sample in family.samples:
                blocks = _int(_num(sample.labels.get("num_gpu_blocks")))
                size = _int(_num(sample.labels.get("block_size")))
                if blocks and size:
                    return blocks * size
    except ValueError:  # not Prometheus text after all
        return None
    return None


def _num(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and value.isdigit() else None
    except ValueError:
        return None


_ROUTES: dict[str, Callable[[Observation, Reading], None]] = {
    "/": _root,
    "/props": _props,
    "/slots": _slots,
    "/health": _health,
    "/api/version": _api_version,
    "/api/tags": _api_tags,
    "/api/ps": _api_ps,
    "/api/show": _api_show,
    "/version": _version,
    "/.well-known/localai.json": _localai_well_known,
    "/readyz": _readyz,
    "/info": _info,
    "/api/v0/models": _lmstudio_v0,
    "/api/v1/models": _lmstudio_v1,
    "/metrics": _metrics,
}
