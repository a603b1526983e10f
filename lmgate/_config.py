"""Configuration: ``lmgate.toml``, then ``LMGATE_*`` env vars, then arguments.

Each source overrides the one before, key by key.  Env var names map to key
paths with ``__`` between levels (``LMGATE_QUEUE__SIZE=512``,
``LMGATE_ENDPOINTS__GPU_BOX__URL=...``; ``_`` and ``-`` in endpoint names
match each other); their values are read as TOML values when they parse as
one (``8``, ``0.5``, ``true``, ``["a", "b"]``) and as plain strings
otherwise.  The merged result is validated whole: an unknown key or a bad
value is refused with its key path, its source and the reason, and nothing
of it is used.  API keys are never configuration: an endpoint names the env
var that holds its key (``api_key_env``).

:func:`write_config` writes atomically.  Drift: :class:`ConfigWatcher` is the
sans-IO core that tells whether the file or env changed and what the new
config changes; :func:`watch_config` is the timer loop a scheduler runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, final

import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate._events import Event, EventHub
from lmgate.policies._limit import LimitPolicy, LimitState, check_float, check_int
from lmgate.policies.context import (
    Chain,
    Compress,
    ContextStrategy,
    SlidingWindow,
    default_strategy,
)

__all__ = [
    "Changed",
    "Config",
    "ConfigApplied",
    "ConfigDiff",
    "ConfigRefused",
    "ConfigWatcher",
    "ContextConfig",
    "EndpointConfig",
    "LimitConfig",
    "QueueConfig",
    "Refused",
    "SchedulerConfig",
    "Unchanged",
    "WatchConfig",
    "diff_configs",
    "load_config",
    "watch_config",
    "write_config",
]

ENV_PREFIX = "LMGATE_"
#: LMGATE_* variables that are not config keys.
ENV_RESERVED = frozenset({"LMGATE_CONFIG"})
MAX_FILE = 1024 * 1024


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
        policy: LimitPolicy = _convert(self.params, cls, where)
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
    """When to shorten prompts and how: ``strategy`` is ``auto`` or a list of names."""

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
    limit: LimitConfig | None = None
    probe: bool = False
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


def _convert(raw: Any, cls: type[Any], where: str) -> Any:
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


def _shape_limits(raw: dict[str, Any]) -> None:
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


def _tree(
    pairs: Mapping[str, Any], origin: str, out: dict[str, Any], origins: dict[str, str]
) -> None:
    for dotted, value in pairs.items():
        keys = dotted.split(".")
        node = out
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise InvalidParameter(f"{dotted}: conflicting keys ({origin})", field=dotted)
            node = nxt
        node[keys[-1]] = value
        origins[dotted] = origin


def _env_pairs(env: Mapping[str, str], endpoints: Any) -> dict[str, tuple[Any, str]]:
    names = (
        {n.lower().replace("-", "_"): n for n in endpoints} if isinstance(endpoints, dict) else {}
    )
    pairs: dict[str, tuple[Any, str]] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in ENV_RESERVED:
            continue
        keys = var[len(ENV_PREFIX) :].lower().split("__")
        if not all(keys):
            raise InvalidParameter(f"{var}: empty key in the name", field=var)
        if keys[0] == "endpoints" and len(keys) > 1:
            keys[1] = names.get(keys[1], keys[1])
        pairs[".".join(keys)] = (_env_value(env[var]), var)
    return pairs


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_config(
    file_bytes: bytes | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "lmgate.toml",
) -> Config:
    """The sans-IO core of :func:`load_config`: sources in, validated Config out."""
    raw: dict[str, Any] = {}
    if file_bytes is not None:
        if len(file_bytes) > MAX_FILE:
            raise InvalidParameter(f"{source}: larger than {MAX_FILE} bytes", field=source)
        try:
            raw = tomllib.loads(file_bytes.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidParameter(f"{source}: not valid TOML: {exc}", field=source) from None
    origins: dict[str, str] = {}
    env_tree: dict[str, Any] = {}
    env_pairs = _env_pairs(env, raw.get("endpoints"))
    _tree({k: v for k, (v, _) in env_pairs.items()}, "env", env_tree, origins)
    origins.update({k: var for k, (_, var) in env_pairs.items()})
    arg_tree: dict[str, Any] = {}
    _tree(dict(overrides or {}), "arguments", arg_tree, origins)
    merged = _merge(_merge(raw, env_tree), arg_tree)
    for name, ep in (merged.get("endpoints") or {}).items():
        if isinstance(ep, dict) and "api_key" in ep:
            raise InvalidParameter(
                f"endpoints.{name}.api_key: keys are not stored in config;"
                " set api_key_env to the name of the env var that holds it",
                field=f"endpoints.{name}.api_key",
            )
    _shape_limits(merged)
    try:
        eps = merged.pop("endpoints", {})
        if not isinstance(eps, dict):
            raise InvalidParameter("endpoints: must be a table of endpoints", field="endpoints")
        config: Config = _convert(merged, Config, "")
        converted = {n: _convert(ep, EndpointConfig, f".endpoints.{n}") for n, ep in eps.items()}
        config = msgspec.structs.replace(config, endpoint_configs=converted)
        config.endpoints()
        config.limit_policy()
    except InvalidParameter as exc:
        field = (exc.field or "").lstrip(".")
        where = next((o for k, o in origins.items() if field.startswith(k)), source)
        raise InvalidParameter(f"{str(exc).lstrip('.')} (from {where})", field=field) from None
    return config


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` (default ``$LMGATE_CONFIG`` or ``./lmgate.toml`` if present),
    overlay ``LMGATE_*`` env vars and then ``overrides`` (dotted keys allowed)."""
    env = os.environ if env is None else env
    p = _resolve(path, env)
    data = _read(p)
    if p is not None and data is None and (path is not None or env.get("LMGATE_CONFIG")):
        raise InvalidParameter(f"config file {str(p)[:200]!r} not found", field="path")
    return parse_config(data, env, overrides, source=str(p) if p else "lmgate.toml")


def _resolve(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if env.get("LMGATE_CONFIG"):
        return Path(env["LMGATE_CONFIG"])
    return Path("lmgate.toml") if Path("lmgate.toml").exists() else None


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None


# -- writing ---------------------------------------------------------------------------


def write_config(path: str | os.PathLike[str], config: Config) -> None:
    """Write ``config`` as TOML, atomically: a reader sees the old file or the new.

    Temp file in the same directory, fsync, rename over, fsync the
    directory.  Mode 0600 when the config names secrets (``api_key_env``),
    so even the names of credentials are not world-readable; 0644 otherwise.
    """
    if not isinstance(config, Config):
        raise InvalidParameter("config must be a Config", field="config")
    p = Path(path)
    text = dumps_toml(config.to_dict())
    mode = 0o600 if config.holds_secret_refs() else 0o644
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """TOML for the nested dicts of str/int/float/bool/list a Config holds."""
    lines: list[str] = []

    def table(prefix: str, d: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict)]
        subs = [(k, v) for k, v in d.items() if isinstance(v, dict)]
        if prefix and (scalars or not subs):
            lines.extend(["", f"[{prefix}]"])
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars)
        for k, v in subs:
            table(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _toml_str(key)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise InvalidParameter(f"cannot write {type(v).__name__} to TOML", field="config")


# -- drift -----------------------------------------------------------------------------


@final
class ConfigDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What a new config changes, so it can be applied in one go.

    ``removed`` endpoints are drained; ``replaced`` ones (any setting but
    the limit changed) are drained and added back new; ``limits`` names the
    endpoints that stay but whose effective limit policy changed.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    queue: bool = False
    scheduler: bool = False
    context: bool = False
    watch: bool = False

    @property
    def empty(self) -> bool:
        return self == ConfigDiff()


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    a, b = old.endpoint_configs, new.endpoint_configs
    kept = [n for n in b if n in a]
    replaced = tuple(
        n
        for n in kept
        if msgspec.structs.replace(a[n], limit=None) != msgspec.structs.replace(b[n], limit=None)
    )
    limits = tuple(
        n
        for n in kept
        if n not in replaced and (a[n].limit or old.limit) != (b[n].limit or new.limit)
    )
    return ConfigDiff(
        added=tuple(n for n in b if n not in a),
        removed=tuple(n for n in a if n not in b),
        replaced=replaced,
        limits=limits,
        queue=old.queue != new.queue,
        scheduler=old.scheduler != new.scheduler,
        context=old.context != new.context,
        watch=old.watch != new.watch,
    )


@final
class Unchanged(msgspec.Struct, frozen=True):
    """Nothing to do: same sources, or new sources that mean the same config."""


@final
class Changed(msgspec.Struct, frozen=True, kw_only=True):
    """A valid new config; apply ``diff`` whole, then :meth:`ConfigWatcher.commit`."""

    config: Config
    diff: ConfigDiff
    digest: str


@final
class Refused(msgspec.Struct, frozen=True, kw_only=True):
    """The sources changed into something invalid; the running config stays."""

    reason: str
    field: str | None
    digest: str


class ConfigApplied(Event, frozen=True, kw_only=True):
    source: str
    digest: str
    diff: ConfigDiff


class ConfigRefused(Event, frozen=True, kw_only=True):
    source: str
    digest: str
    reason: str
    field: str | None = None


@final
class WatcherStatistics(msgspec.Struct, frozen=True, kw_only=True):
    checks: int
    applied: int
    refused: int
    digest: str
    stale: bool  # the sources hold a refused config: what runs is not what is on disk


def _digest(file_bytes: bytes | None, env: Mapping[str, str]) -> str:
    h = hashlib.sha256(b"\x00none" if file_bytes is None else b"\x01" + file_bytes)
    for k in sorted(env):
        if k.startswith(ENV_PREFIX):
            h.update(f"\x00{k}={env[k]}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@final
class ConfigWatcher:
    """Decides, from the file's bytes and an env snapshot, whether config drifted.

    Sans-IO: the caller reads the file and the environment.  A valid change
    is returned as :class:`Changed` and adopted only on :meth:`commit`, after
    the caller applied it; an invalid one is refused once per distinct
    content, so a bad file is reported, not re-reported every tick.
    """

    __slots__ = (
        "_applied",
        "_checks",
        "_config",
        "_digest",
        "_overrides",
        "_refused",
        "_refused_n",
        "source",
    )

    def __init__(
        self,
        config: Config,
        digest: str,
        *,
        source: str = "lmgate.toml",
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._config, self._digest, self.source = config, digest, source
        self._overrides = dict(overrides or {})
        self._refused: str | None = None
        self._checks = self._applied = self._refused_n = 0

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ConfigWatcher:
        """Load the config at ``path`` and watch it from there."""
        env = os.environ if env is None else env
        data = _read(Path(path))
        config = parse_config(data, env, overrides, source=str(path))
        return cls(config, _digest(data, env), source=str(path), overrides=overrides)

    @property
    def config(self) -> Config:
        return self._config

    def check(
        self, file_bytes: bytes | None, env: Mapping[str, str]
    ) -> Unchanged | Changed | Refused:
        self._checks += 1
        digest = _digest(file_bytes, env)
        if digest in (self._digest, self._refused):
            return Unchanged()
        if file_bytes is None:
            return self._refuse(digest, "config file is missing", None)
        try:
            new = parse_config(file_bytes, env, self._overrides, source=self.source)
        except InvalidParameter as exc:
            return self._refuse(digest, str(exc), exc.field)
        if new == self._config:
            self._digest, self._refused = digest, None
            return Unchanged()
        return Changed(config=new, diff=diff_configs(self._config, new), digest=digest)

    def commit(self, change: Changed) -> None:
        """The change was applied: it is the running config now."""
        self._config, self._digest, self._refused = change.config, change.digest, None
        self._applied += 1

    def reject(self, change: Changed, reason: str) -> Refused:
        """Applying the change failed: keep the old config, remember the refusal."""
        return self._refuse(change.digest, reason, None)

    def _refuse(self, digest: str, reason: str, field: str | None) -> Refused:
        self._refused = digest
        self._refused_n += 1
        return Refused(reason=reason, field=field, digest=digest)

    def statistics(self) -> WatcherStatistics:
        return WatcherStatistics(
            checks=self._checks,
            applied=self._applied,
            refused=self._refused_n,
            digest=self._digest,
            stale=self._refused is not None,
        )

    def __repr__(self) -> str:
        return f"<ConfigWatcher {self.source!r} digest={self._digest[:12]}>"


async def watch_config(
    path: str | os.PathLike[str],
    interval: float | None,
    on_change: Callable[[Changed], Awaitable[None]],
    *,
    watcher: ConfigWatcher,
    env: Mapping[str, str] | None = None,
    hub: EventHub | None = None,
    on_refused: Callable[[Refused], Awaitable[None]] | None = None,
) -> None:
    """Re-check the file and env every ``interval`` seconds (None: the config's
    own ``watch.interval``) and apply changes with ``on_change``, forever.

    ``on_change`` must apply the change whole or raise; if it raises, the
    change is refused and the watcher keeps the old config.  Runs until
    cancelled; meant for the scheduler's task group.
    """
    import anyio

    p = Path(path)
    environ = os.environ if env is None else env
    while True:
        await anyio.sleep(interval if interval is not None else watcher.config.watch.interval)
        if interval is None and not watcher.config.watch.enabled:
            continue
        snapshot = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
        try:
            data = _read(p)
        except OSError as exc:
            result: Unchanged | Changed | Refused = Refused(
                reason=f"cannot read config: {exc}", field=None, digest=""
            )
        else:
            result = watcher.check(data, snapshot)
        if isinstance(result, Changed):
            try:
                await on_change(result)
            except Exception as exc:
                result = watcher.reject(result, f"applying failed: {type(exc).__name__}: {exc}")
            else:
                watcher.commit(result)
                if hub is not None:
                    hub.publish(
                        ConfigApplied(
                            at=anyio.current_time(),
                            source=watcher.source,
                            digest=result.digest,
                            diff=result.diff,
                        )
                    )
        if isinstance(result, Refused):
            if hub is not None:
                hub.publish(
                    ConfigRefused(
                        at=anyio.current_time(),
                        source=watcher.source,
                        digest=result.digest,
                        reason=result.reason[:500],
                        field=result.field,
                    )
                )
            if on_refused is not None:
                await on_refused(result)
