"""Config drift: notice that the file or its env changed, and apply it whole or not at all.

:class:`ConfigWatcher` is the sans-IO core: fed the file's bytes and an env
snapshot, it says whether anything changed (by hash), validates the new
config and works out what it changes (:class:`ConfigDiff`).
:func:`watch_config` is the timer loop a scheduler runs in its task group;
it hands each valid change to an ``apply`` callback, which applies it whole
or raises, and publishes :class:`ConfigApplied` or :class:`ConfigRefused`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate.config._load import ENV_PREFIX, parse_config, read_source
from lmgate.config._schema import Config
from lmgate.observability._events import Event, EventHub

__all__ = [
    "Changed",
    "ConfigApplied",
    "ConfigDiff",
    "ConfigRefused",
    "ConfigWatcher",
    "Refused",
    "Unchanged",
    "WatcherStatistics",
    "diff_configs",
    "watch_config",
]


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
    """A changed config was validated and applied whole."""

    source: str
    digest: str
    diff: ConfigDiff


class ConfigRefused(Event, frozen=True, kw_only=True):
    """A changed config was refused whole; the one running is kept."""

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


def digest_of(file_bytes: bytes | None, env: Mapping[str, str]) -> str:
    """A hash of everything a config is made from: the file and the LMGATE_* vars."""
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
        data = read_source(Path(path))
        if data is None:
            raise InvalidParameter(f"config file {str(path)[:200]!r} not found", field="path")
        config = parse_config(data, env, overrides, source=str(path))
        return cls(config, digest_of(data, env), source=str(path), overrides=overrides)

    @property
    def config(self) -> Config:
        return self._config

    def check(
        self, file_bytes: bytes | None, env: Mapping[str, str]
    ) -> Unchanged | Changed | Refused:
        self._checks += 1
        digest = digest_of(file_bytes, env)
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
            data = read_source(p)
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
