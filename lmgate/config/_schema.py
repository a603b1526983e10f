"""The shape of a configuration: frozen msgspec Structs, validated on build.

Every section refuses unknown keys, and every value is checked where it
is declared, so a bad config fails with the key's path before anything of
it is used.  Sections build the objects the scheduler takes (endpoints,
limit policies, context strategies); they hold no callables and no keys.
"""

from __future__ import annotations

from typing import Any, final

import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.context._strategies import (
    Chain,
    Compress,
    ContextStrategy,
    SlidingWindow,
    default_strategy,
)
from lmgate.policies._limit import LimitPolicy, LimitState

__all__ = [
    "Config",
    "ContextConfig",
    "EndpointConfig",
    "LimitConfig",
    "QueueConfig",
    "SchedulerConfig",
    "WatchConfig",
    "convert",
    "shape_limits",
]


class LimitConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A limit policy by name (``"fixed"``, ``"gradient2"``...) and its settings."""

    policy: str
    params: dict[str, Any] = {}

    def build(self, where: str = "limit") -> LimitPolicy:
        classes = _policy_classes()
        cls = classes.get(self.policy.lower())
        if cls is None:
            raise InvalidParameter(
                f"{where}.policy: unknown policy {self.policy[:64]!r}; known: {sorted(classes)}",
                field=f"{where}.policy",
            )
        for key in self.params:
            if key not in getattr(cls, "__struct_fields__", ()):
                raise InvalidParameter(f"{where}.{key}: unknown key", field=f"{where}.{key}")
        policy: LimitPolicy = convert(self.params, cls, where)
        if not isinstance(policy.build(), LimitState):  # a breaker config also has build()
            raise InvalidParameter(
                f"{where}.policy: {self.policy[:64]!r} is not a limit policy",
                field=f"{where}.policy",
            )
        return policy


class QueueConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    size: int = 1024
    aging: float = 10.0

    def __post_init__(self) -> None:
        check_int("size", self.size, low=0, high=10_000_000)
        check_float("aging", self.aging)


class SchedulerConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    grace: float = 5.0
    tick_interval: float = 1.0
    mailbox_size: int = 4096

    def __post_init__(self) -> None:
        check_float("grace", self.grace)
        check_float("tick_interval", self.tick_interval, low_open=True)
        check_int("mailbox_size", self.mailbox_size)


_STRATEGIES = ("auto", "sliding", "compress")


class ContextConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """When to shorten prompts and how: ``strategy`` is ``auto`` or a list of names.

    ``default_reserve`` is the output a request is assumed to need when it
    does not say (``max_tokens``); it is part of what must fit the window.
    """

    threshold: float = 0.8
    strategy: tuple[str, ...] = ("auto",)
    default_reserve: int = 256
    compress_min_chars: int = 256

    def __post_init__(self) -> None:
        check_float("threshold", self.threshold, high=1.0, low_open=True)
        check_int("default_reserve", self.default_reserve, low=0)
        check_int("compress_min_chars", self.compress_min_chars, low=0)
        if not self.strategy or any(s not in _STRATEGIES for s in self.strategy):
            raise InvalidParameter(f"strategy entries must be in {_STRATEGIES}", field="strategy")
        if "auto" in self.strategy and len(self.strategy) > 1:
            raise InvalidParameter("'auto' stands alone", field="strategy")

    def build(self, *, local: bool | None) -> ContextStrategy:
        """The context strategy for an endpoint of this locality."""
        if self.strategy == ("auto",):
            return default_strategy(local)
        made: list[ContextStrategy] = [
            SlidingWindow() if s == "sliding" else Compress(min_chars=self.compress_min_chars)
            for s in self.strategy
        ]
        return Chain(*made)


class WatchConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Drift detection: how often the file and env are re-checked."""

    enabled: bool = True
    interval: float = 5.0

    def __post_init__(self) -> None:
        check_float("interval", self.interval, low=0.01, high=86_400.0)


class EndpointConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """The configurable part of :class:`lmgate.Endpoint` (no callables, no keys)."""

    url: str
    models: list[str] = []
    kind: str = "unknown"
    local: bool | None = None
    api_key_env: str | None = None
    context_window: int | None = None
    context_windows: dict[str, int] = {}
    kv_tokens: int | None = None
    limit: LimitConfig | None = None
    probe: bool = True
    server_view: bool | None = None
    engine_metrics: bool | None = None
    ports: list[int] = []
    warmup: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    max_connections: int = 100

    def build(self, name: str) -> Endpoint:
        where = f"endpoints.{name}"
        try:
            fields = msgspec.structs.asdict(self)
            limit = self.limit.build(f"{where}.limit") if self.limit is not None else None
            fields.update(limit=limit, models=tuple(self.models), ports=tuple(self.ports))
            return Endpoint(name, **fields)
        except InvalidParameter as exc:
            if exc.field and exc.field.startswith(where):
                raise
            raise InvalidParameter(
                f"{where}.{exc.field}: {exc}", field=f"{where}.{exc.field}"
            ) from None


@final
class Config(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A whole, validated configuration.  Build the scheduler from it with
    ``Scheduler.from_config(path)``, or by hand with
    ``Scheduler(config.endpoints(), **config.scheduler_kwargs())``."""

    endpoint_configs: dict[str, EndpointConfig] = msgspec.field(
        default_factory=dict, name="endpoints"
    )
    limit: LimitConfig | None = None
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    context: ContextConfig = msgspec.field(default_factory=ContextConfig)
    watch: WatchConfig = msgspec.field(default_factory=WatchConfig)

    def endpoints(self) -> list[Endpoint]:
        return [ep.build(name) for name, ep in self.endpoint_configs.items()]

    def limit_policy(self) -> LimitPolicy | None:
        """The scheduler-wide policy, or None for the scheduler's default."""
        return self.limit.build() if self.limit is not None else None

    def scheduler_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"queue_size": self.queue.size, "aging": self.queue.aging}
        kw.update(msgspec.structs.asdict(self.scheduler))
        kw["context"] = self.context
        if self.limit is not None:
            kw["limit"] = self.limit_policy()
        return kw

    def holds_secret_refs(self) -> bool:
        return any(ep.api_key_env for ep in self.endpoint_configs.values())

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict (defaults left out) that loads back to this config."""
        raw: dict[str, Any] = msgspec.to_builtins(self)
        _flatten_limits(raw)
        return {k: v for k, v in raw.items() if v != {}}


def _policy_classes() -> dict[str, type]:
    """Limit policies by lower-case class name, from ``lmgate.policies``."""
    from lmgate.policies import _limit

    found: dict[str, type] = {"fixed": _limit.Fixed}
    try:
        import lmgate.policies as pol
    except ImportError:  # pragma: no cover - partial installs
        return found
    for name in getattr(pol, "__all__", ()):
        obj = getattr(pol, name, None)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and hasattr(obj, "build"):
            found[name.lower()] = obj
    return found


def convert(raw: Any, cls: type[Any], where: str) -> Any:
    """msgspec.convert, with errors rewritten as InvalidParameter at ``where``."""
    try:
        return msgspec.convert(raw, cls, strict=True)
    except msgspec.ValidationError as exc:
        reason, _, at = str(exc).partition(" - at `$")
        path = where + at.rstrip("`").replace("[...]", "")
        if reason.startswith("Object contains unknown field `"):
            path += "." + reason.split("`")[1]
            reason = "unknown key"
        cause = exc.__cause__
        if isinstance(cause, InvalidParameter) and cause.field:
            path += "." + cause.field
        raise InvalidParameter(f"{path}: {reason}", field=path) from None


def shape_limits(raw: dict[str, Any]) -> None:
    """``limit = {policy = "x", k = v}`` in TOML is ``policy`` + ``params`` here."""
    tables = [raw.get("limit")]
    eps = raw.get("endpoints")
    if isinstance(eps, dict):
        tables += [ep.get("limit") for ep in eps.values() if isinstance(ep, dict)]
    for t in tables:
        if isinstance(t, dict) and "params" not in t:
            params = {k: t.pop(k) for k in list(t) if k != "policy"}
            t["params"] = params


def _flatten_limits(raw: dict[str, Any]) -> None:
    tables = [raw.get("limit")] + [ep.get("limit") for ep in raw.get("endpoints", {}).values()]
    for t in tables:
        if t is not None:
            t.update(t.pop("params", {}))
