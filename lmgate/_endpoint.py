"""How a user describes an endpoint, and the reference a lease carries.

``Endpoint`` is configuration: frozen, validated once at construction so a
bad value fails where it was written, not deep inside an actor.  ``EndpointRef``
is what a granted lease exposes about where to send the call; one is made
per (endpoint, model) pair and reused, so granting allocates nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, final

import httpx
import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_int
from lmgate.detect._learn import endpoint_key, learn
from lmgate.detect._probe import probe
from lmgate.detect._urls import parse_endpoint_url
from lmgate.policies._classify import Classification
from lmgate.policies._limit import LimitPolicy
from lmgate.policies._sample import OutcomeClass
from lmgate.security._secrets import SecretStr, guard_http_logs

__all__ = ["KINDS", "Endpoint", "EndpointRef", "HealthCheck", "MetricsSource", "ProbeReport"]

#: Server kinds lmgate knows; ``unknown`` until a probe or the user says.
KINDS = ("ollama", "llamacpp", "vllm", "lmstudio", "tgi", "localai", "openai", "sim", "unknown")

#: Maps an exception raised by a call to an outcome class (or a full
#: Classification), or None to fall back to the default classifier.
Classifier = Callable[[BaseException], OutcomeClass | Classification | None]
#: A health check: given the endpoint, returns True when it is serving, or a
#: ProbeReport when it knows more (loading, model identities).
HealthCheck = Callable[["Endpoint"], Awaitable["bool | ProbeReport"]]
#: Reads the server's Prometheus metrics text some other way than a GET of
#: its ``/metrics`` (a server behind a proxy, a simulated one).
MetricsSource = Callable[[], Awaitable[str]]


@final
class ProbeReport(msgspec.Struct, frozen=True, kw_only=True):
    """A health check's richer answer than ``True``/``False``.

    ``loading`` says the server answers but is loading a model: traffic is
    held, no failure is counted.  ``identities`` maps model names to their
    build (digest, version, file): a change under the same name is a
    different model and is reported as such.
    """

    ok: bool
    loading: bool = False
    identities: Mapping[str, str] = msgspec.field(default_factory=dict)
    detail: str = ""


_MAX_STR = 4096
#: Where an endpoint's ``kv_tokens`` figure can come from.
_KV_SOURCES = ("user", "props", "metrics", "api/ps")


class _Located(msgspec.Struct, frozen=True):
    name: str
    url: str


@final
class Endpoint(_Located, frozen=True, kw_only=True):
    """One model server (or cloud API) the scheduler may send requests to.

    ``name`` identifies the endpoint in stats, events and across processes;
    ``models`` lists what it serves.  ``limit`` overrides the scheduler's
    limit policy for this endpoint.  ``api_key_env`` names the environment
    variable holding its key -- the key itself is never stored here, so the
    ``repr`` of an endpoint is safe to log.  Credentials in the URL
    (``http://user:password@host/v1``) are taken out of ``url`` at once and
    kept as ``credentials`` (a ``SecretStr``, sent as HTTP basic auth when
    the endpoint has no key).

    ``name`` and ``url`` may be given positionally; everything else is by
    keyword.  ``context_window`` / ``context_windows`` give windows the
    server does not report; ``probe=True`` learns models, windows and slots
    at start.  ``engine_metrics=True`` (on by ``probe=True`` or by
    ``metrics=``) reads the server's ``/metrics`` about once a second while
    it has traffic and hands running and waiting requests, KV usage and
    preemptions to the limit policy and the token budget; ``metrics`` is an
    async callable that returns that text when a GET of ``/metrics`` is not
    the way to it.  ``health`` is an async check (``True``/``False`` or a
    ``ProbeReport``); ``ports`` are where a restarted server may reappear;
    the timeouts and ``max_connections`` bound the endpoint's HTTP pool.
    Every value is checked here and a bad one raises ``InvalidParameter``.
    """

    models: Sequence[str] = ()
    limit: LimitPolicy | None = None
    kind: str = "unknown"
    local: bool | None = None
    api_key_env: str | None = None
    api_key: Callable[[], str] | None = None
    context_window: int | None = None
    context_windows: Mapping[str, int] = msgspec.field(default_factory=dict)
    kv_tokens: int | None = None
    kv_source: str | None = None
    classify: Classifier | None = None
    health: HealthCheck | None = None
    probe: bool = False
    server_view: bool | None = None
    engine_metrics: bool | None = None
    metrics: MetricsSource | None = None
    ports: Sequence[int] = ()
    warmup: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    max_connections: int = 100
    credentials: SecretStr | None = None

    def __post_init__(self) -> None:
        _check_str("name", self.name)
        _check_str("url", self.url)
        where = parse_endpoint_url(self.url)
        if where.user is not None:
            if self.credentials is not None:
                raise InvalidParameter(
                    "credentials given twice (in the url and as credentials=)", field="url"
                )
            secret = SecretStr(f"{where.user}:{where.password or ''}")
            msgspec.structs.force_setattr(self, "credentials", secret)
        msgspec.structs.force_setattr(self, "url", where.url)
        if self.credentials is not None and not isinstance(self.credentials, SecretStr):
            raise InvalidParameter("credentials must be a SecretStr", field="credentials")
        if self.credentials is not None:
            guard_http_logs(self.credentials)
        models = self.models
        if isinstance(models, str) or not isinstance(models, list | tuple):
            raise InvalidParameter("models must be a list of model names", field="models")
        for m in models:
            _check_str("models[]", m)
        if len(set(models)) != len(models):
            raise InvalidParameter("models has duplicates", field="models")
        msgspec.structs.force_setattr(self, "models", tuple(models))
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise InvalidParameter(f"kind must be one of {KINDS}, got {self.kind!r}", field="kind")
        if self.limit is not None and not hasattr(self.limit, "build"):
            raise InvalidParameter("limit must be a policy config such as Fixed(8)", field="limit")
        if self.context_window is not None:
            _check_window("context_window", self.context_window)
        if self.kv_tokens is not None:
            _check_window("kv_tokens", self.kv_tokens)
            if self.kv_source is None:
                msgspec.structs.force_setattr(self, "kv_source", "user")
        if self.kv_source is not None and self.kv_source not in _KV_SOURCES:
            raise InvalidParameter(f"kv_source must be one of {_KV_SOURCES}", field="kv_source")
        windows = self.context_windows
        if not isinstance(windows, Mapping):
            raise InvalidParameter(
                "context_windows must be a mapping of model -> tokens", field="context_windows"
            )
        for m, w in windows.items():
            _check_str("context_windows key", m)
            _check_window("context_windows", w)
        msgspec.structs.force_setattr(self, "context_windows", dict(windows))
        for field in ("local", "server_view", "engine_metrics"):
            v = getattr(self, field)
            if v is not None and type(v) is not bool:
                raise InvalidParameter(f"{field} must be True, False or None", field=field)
        for field in ("probe", "warmup"):
            if type(getattr(self, field)) is not bool:
                raise InvalidParameter(f"{field} must be a bool", field=field)
        for field in ("health", "classify", "api_key", "metrics"):
            v = getattr(self, field)
            if v is not None and not callable(v):
                raise InvalidParameter(f"{field} must be callable or None", field=field)
        ports = self.ports
        if isinstance(ports, str) or not isinstance(ports, list | tuple):
            raise InvalidParameter("ports must be a list of ints", field="ports")
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise InvalidParameter(f"bad port {str(port)[:20]!r}", field="ports")
        msgspec.structs.force_setattr(self, "ports", tuple(ports))
        for field in ("connect_timeout", "read_timeout"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < math.inf):
                raise InvalidParameter(f"{field} must be a positive finite number", field=field)
        check_int("max_connections", self.max_connections, low=1, high=100_000)
        if self.api_key_env is not None:
            _check_str("api_key_env", self.api_key_env)

    @classmethod
    async def discover(
        cls,
        url: str,
        *,
        name: str | None = None,
        model: str | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109 -- the probe's per-round bound
        client: httpx.AsyncClient | None = None,
        **fields: Any,
    ) -> Endpoint:
        """Probe ``url`` and describe what answers there: kind, models, windows.

        ``fields`` (limit, api_key_env, timeouts, ...) are kept as given and
        win over what the server says.  Raises ``InvalidParameter`` for a
        URL that cannot be probed or did not answer.
        """
        base = cls(name or _name_for(url), url=url, probe=True, **fields)
        info = await probe(
            url, model=model, client=client, timeout=timeout, api_key=endpoint_key(base)
        )
        if not info.reachable:
            raise InvalidParameter(f"{url[:80]!r} did not answer: {info.error}", field="url")
        return learn(base, info)

    @property
    def reads_engine_metrics(self) -> bool:
        """Whether the endpoint actor reads the server's metrics."""
        if self.engine_metrics is not None:
            return self.engine_metrics
        return self.probe or self.metrics is not None

    def window_for(self, model: str) -> int | None:
        """The context window known for ``model`` here, if any."""
        return self.context_windows.get(model, self.context_window)

    def __repr__(self) -> str:
        key = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return (
            f"Endpoint({self.name!r}, url={self.url!r}, models={list(self.models)!r},"
            f" kind={self.kind!r}{key})"
        )


def _name_for(url: str) -> str:
    u = httpx.URL(url) if "://" in url else None
    if u is None or not u.host:
        return "endpoint"
    return f"{u.host}:{u.port}" if u.port else u.host


def _check_window(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 100_000_000:
        raise InvalidParameter(f"{field} must hold positive ints (tokens)", field=field)


def _check_str(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidParameter(f"{field} must be a non-empty string", field=field)
    if len(value) > _MAX_STR:
        raise InvalidParameter(f"{field} is longer than {_MAX_STR} characters", field=field)
    if "\x00" in value:
        raise InvalidParameter(f"{field} contains a null byte", field=field)


@final
class EndpointRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a granted lease's call goes: endpoint name, base URL, model, kind."""

    name: str
    url: str
    model: str
    kind: str = "unknown"
    local: bool | None = None
