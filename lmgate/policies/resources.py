"""Turn machine readings into one admission recommendation, without flapping.

A local model shares the box with the agent, so memory, swap, disk, file
descriptors and sockets tend to run out together.  This policy reads a
snapshot of them (:class:`ResourceReadings`, gathered elsewhere) and answers
with the gentlest action that keeps the machine out of trouble:

``proceed`` < ``reduce_context`` < ``shed_low_priority`` < ``pause_admission``

Each signal has an *enter* and an *exit* threshold per level.  A level is
entered when the reading crosses ``enter`` and left only once it is back past
``exit``, so a reading wobbling around one threshold cannot toggle the
decision; ``min_hold`` additionally keeps a raised level for a while before it
is lowered.  Raising is always immediate: pressure is acted on at once, calm
is trusted only after it has lasted.  Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from typing import Final, Literal, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int

__all__ = [
    "RECOMMENDATIONS",
    "DiskReading",
    "EndpointConnections",
    "GpuReading",
    "Recommendation",
    "ResourceGuard",
    "ResourceGuardState",
    "ResourceReadings",
    "ResourceStatistics",
    "SignalStatistics",
    "Thresholds",
]

Recommendation = Literal["proceed", "reduce_context", "shed_low_priority", "pause_admission"]

#: Every recommendation, mildest first; the index is its severity.
RECOMMENDATIONS: Final[tuple[Recommendation, ...]] = (
    "proceed",
    "reduce_context",
    "shed_low_priority",
    "pause_admission",
)

Pair = tuple[float, float]


@final
class Thresholds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``(enter, exit)`` per level of one signal; ``None`` leaves a level unused.

    Whether "crossing" means going above or below depends on the signal (see
    :class:`ResourceGuard`); the exit always lies on the calm side of enter.
    """

    reduce_context: Pair | None = None
    shed_low_priority: Pair | None = None
    pause_admission: Pair | None = None

    def __post_init__(self) -> None:
        for level in RECOMMENDATIONS[1:]:
            pair = getattr(self, level)
            if pair is None:
                continue
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise InvalidParameter(f"{level} must be an (enter, exit) pair", field=level)
            enter = check_float(f"{level}.enter", pair[0], low=-math.inf)
            exit_ = check_float(f"{level}.exit", pair[1], low=-math.inf)
            msgspec.structs.force_setattr(self, level, (enter, exit_))

    def levels(self) -> tuple[tuple[int, Pair], ...]:
        """The configured levels as ``(severity, (enter, exit))``, mildest first."""
        out = []
        for severity, level in enumerate(RECOMMENDATIONS[1:], start=1):
            pair: Pair | None = getattr(self, level)
            if pair is not None:
                out.append((severity, pair))
        return tuple(out)


#: Signal name -> True when a *lower* reading is worse (free fractions).
_LOW_IS_BAD: Final[dict[str, bool]] = {
    "memory": True,
    "swap": False,
    "disk": True,
    "fds": False,
    "sockets": False,
    "connections": False,
    "gpu": True,
}
_SIGNALS: Final[tuple[str, ...]] = tuple(_LOW_IS_BAD)
_FRACTIONS: Final[frozenset[str]] = frozenset({"memory", "disk", "fds", "gpu"})


@final
class ResourceGuard(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds for every signal the resource sampler reads.

    Units: ``memory``, ``disk`` and ``gpu`` are the *free* fraction (0..1) of
    available memory, free space on the worst configured directory and free
    memory on the fullest GPU -- lower is worse.  ``swap`` is swap-in plus
    swap-out in bytes per second, ``fds`` the fraction of the soft
    ``RLIMIT_NOFILE`` in use, ``sockets`` this process's inet sockets and
    ``connections`` the open connections to the busiest endpoint -- higher is
    worse.

    The defaults are deliberately late: a model server legitimately fills its
    GPU (vLLM reserves 90 % by design), so the GPU only narrows contexts when
    it is nearly full, and disk pressure pauses only near the end.  Sockets
    and connections are off by default because the fd fraction already
    covers exhaustion; set them where a pool is known to leak.
    """

    memory: Thresholds = Thresholds(
        reduce_context=(0.15, 0.20), shed_low_priority=(0.10, 0.14), pause_admission=(0.05, 0.08)
    )
    swap: Thresholds = Thresholds(
        reduce_context=(1 << 20, 256 << 10),
        shed_low_priority=(8 << 20, 2 << 20),
        pause_admission=(32 << 20, 8 << 20),
    )
    disk: Thresholds = Thresholds(shed_low_priority=(0.05, 0.07), pause_admission=(0.01, 0.02))
    fds: Thresholds = Thresholds(shed_low_priority=(0.80, 0.70), pause_admission=(0.95, 0.85))
    sockets: Thresholds = Thresholds()
    connections: Thresholds = Thresholds()
    gpu: Thresholds = Thresholds(reduce_context=(0.03, 0.05))
    #: Seconds a raised recommendation is kept before it may be lowered.
    min_hold: float = 5.0
    #: Seconds without a reading after which a signal's level is forgotten.
    stale_after: float = 60.0
    #: From ``reduce_context`` up: the factor applied to the context
    #: threshold of new requests (smaller prompts, smaller KV cache).
    context_factor: float = 0.5
    #: From ``shed_low_priority`` up: requests whose priority number is above
    #: this are refused and evicted from the queue (0 sheds all background
    #: work, i.e. every positive priority).
    shed_priority_above: int = 0

    def __post_init__(self) -> None:
        check_float("min_hold", self.min_hold)
        check_float("stale_after", self.stale_after, low_open=True)
        check_float("context_factor", self.context_factor, low_open=True, high=1.0)
        check_int("shed_priority_above", self.shed_priority_above, low=-1_000_000, high=1_000_000)
        for signal in _SIGNALS:
            thresholds = getattr(self, signal)
            if not isinstance(thresholds, Thresholds):
                raise InvalidParameter(f"{signal} must be a Thresholds", field=signal)
            _check_direction(signal, thresholds)

    def build(self) -> ResourceGuardState:
        """A fresh guard state; one per scheduler."""
        return ResourceGuardState(self)


def _check_direction(signal: str, thresholds: Thresholds) -> None:
    low_is_bad = _LOW_IS_BAD[signal]
    previous: float | None = None
    for severity, (enter, exit_) in thresholds.levels():
        field = f"{signal}.{RECOMMENDATIONS[severity]}"
        if signal in _FRACTIONS and not (0.0 <= enter <= 1.0 and 0.0 <= exit_ <= 1.0):
            raise InvalidParameter(f"{field}: fractions must lie in [0, 1]", field=field)
        if signal not in _FRACTIONS and (enter < 0 or exit_ < 0):
            raise InvalidParameter(f"{field}: thresholds must be >= 0", field=field)
        if (exit_ <= enter) if low_is_bad else (exit_ >= enter):
            side = "above" if low_is_bad else "below"
            raise InvalidParameter(
                f"{field}: exit {exit_} must lie {side} enter {enter} (hysteresis)", field=field
            )
        if previous is not None and ((enter >= previous) if low_is_bad else (enter <= previous)):
            raise InvalidParameter(
                f"{field}: a more severe level must enter at a worse reading", field=field
            )
        previous = enter


@final
class DiskReading(msgspec.Struct, frozen=True, kw_only=True):
    """Free and total bytes of the filesystem holding ``path``."""

    path: str
    free: int
    total: int


@final
class GpuReading(msgspec.Struct, frozen=True, kw_only=True):
    """Used and total memory of one GPU, in bytes."""

    index: int
    used: int
    total: int


@final
class EndpointConnections(msgspec.Struct, frozen=True, kw_only=True):
    """How many of this process's sockets are connected to one endpoint."""

    endpoint: str
    count: int


@final
class ResourceReadings(msgspec.Struct, frozen=True, kw_only=True):
    """One snapshot of the machine; a field is ``None`` (or empty) when unknown.

    ``swap_in``/``swap_out`` are cumulative byte counters (as the kernel keeps
    them); the guard turns consecutive snapshots into a rate.
    """

    memory_available: int | None = None
    memory_total: int | None = None
    swap_in: int | None = None
    swap_out: int | None = None
    disks: tuple[DiskReading, ...] = ()
    open_fds: int | None = None
    max_fds: int | None = None
    sockets: int | None = None
    connections: tuple[EndpointConnections, ...] = ()
    gpus: tuple[GpuReading, ...] = ()


@final
class SignalStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One signal's last derived value and the level it holds."""

    name: str
    value: float | None
    level: Recommendation


@final
class ResourceStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The guard's state for ``stats()``: what it recommends, since when, why."""

    recommendation: Recommendation
    #: The signal behind the recommendation (``None`` while proceeding).
    reason: str | None
    since: float | None
    updates: int
    changes: int
    signals: tuple[SignalStatistics, ...]
    readings: ResourceReadings | None


@final
class ResourceGuardState:
    """The hysteresis state a :class:`ResourceGuard` builds; fed by the sampler."""

    __slots__ = (
        "_changes",
        "_config",
        "_current",
        "_levels",
        "_prev_swap",
        "_readings",
        "_reason",
        "_seen_at",
        "_since",
        "_updates",
        "_values",
    )

    def __init__(self, config: ResourceGuard) -> None:
        self._config = config
        self._levels: dict[str, int] = dict.fromkeys(_SIGNALS, 0)
        self._values: dict[str, float | None] = dict.fromkeys(_SIGNALS)
        self._seen_at: dict[str, float] = {}
        self._prev_swap: tuple[float, int] | None = None
        self._current = 0
        self._reason: str | None = None
        self._since: float | None = None
        self._updates = 0
        self._changes = 0
        self._readings: ResourceReadings | None = None

    @property
    def recommendation(self) -> Recommendation:
        return RECOMMENDATIONS[self._current]

    @property
    def reason(self) -> str | None:
        """The signal that drove the current recommendation, if any."""
        return self._reason

    def update(self, readings: ResourceReadings, now: float) -> Recommendation:
        """Take one snapshot taken at ``now``; return the recommendation to apply."""
        if not isinstance(readings, ResourceReadings):
            raise InvalidParameter("readings must be a ResourceReadings", field="readings")
        now = check_float("now", now, low=-math.inf)
        self._updates += 1
        self._readings = readings
        values = self._derive(readings, now)
        worst, worst_signal = 0, None
        for signal in _SIGNALS:
            value = values[signal]
            self._values[signal] = value
            if value is None:
                seen = self._seen_at.get(signal)
                if seen is None or now - seen >= self._config.stale_after:
                    self._levels[signal] = 0
            else:
                self._seen_at[signal] = now
                self._levels[signal] = self._step(signal, self._levels[signal], value)
            if self._levels[signal] > worst:
                worst, worst_signal = self._levels[signal], signal
        self._settle(worst, worst_signal, now)
        return RECOMMENDATIONS[self._current]

    def _derive(self, r: ResourceReadings, now: float) -> dict[str, float | None]:
        v: dict[str, float | None] = dict.fromkeys(_SIGNALS)
        if r.memory_available is not None and r.memory_total:
            v["memory"] = _clamp(r.memory_available / r.memory_total)
        if r.swap_in is not None and r.swap_out is not None:
            total = r.swap_in + r.swap_out
            prev = self._prev_swap
            if prev is not None and now > prev[0] and total >= prev[1]:
                v["swap"] = (total - prev[1]) / (now - prev[0])
            self._prev_swap = (now, total)
        fractions = [d.free / d.total for d in r.disks if d.total > 0]
        if fractions:
            v["disk"] = _clamp(min(fractions))
        if r.open_fds is not None and r.max_fds:
            v["fds"] = r.open_fds / r.max_fds
        if r.sockets is not None:
            v["sockets"] = float(r.sockets)
        if r.connections:
            v["connections"] = float(max(c.count for c in r.connections))
        gpus = [1.0 - g.used / g.total for g in r.gpus if g.total > 0]
        if gpus:
            v["gpu"] = _clamp(min(gpus))
        return v

    def _step(self, signal: str, level: int, value: float) -> int:
        low_is_bad = _LOW_IS_BAD[signal]
        levels = getattr(self._config, signal).levels()
        raised = 0
        for severity, (enter, _) in levels:
            if (value <= enter) if low_is_bad else (value >= enter):
                raised = max(raised, severity)
        # Walk down from the held level while its exit has been crossed; a
        # level jumped over on the way up counts as held too.
        lowered = level
        for severity, (_, exit_) in reversed(levels):
            if severity > lowered:
                continue
            if (value >= exit_) if low_is_bad else (value <= exit_):
                lowered = max((s for s, _ in levels if s < severity), default=0)
            else:
                break
        return max(raised, lowered)

    def _settle(self, worst: int, signal: str | None, now: float) -> None:
        if worst > self._current or (
            worst < self._current
            and self._since is not None
            and now - self._since >= self._config.min_hold
        ):
            self._current = worst
            self._since = now
            self._changes += 1
            self._reason = signal
        elif worst == self._current and worst > 0:
            self._reason = signal

    def statistics(self) -> ResourceStatistics:
        return ResourceStatistics(
            recommendation=RECOMMENDATIONS[self._current],
            reason=self._reason,
            since=self._since,
            updates=self._updates,
            changes=self._changes,
            signals=tuple(
                SignalStatistics(
                    name=s, value=self._values[s], level=RECOMMENDATIONS[self._levels[s]]
                )
                for s in _SIGNALS
            ),
            readings=self._readings,
        )

    def __repr__(self) -> str:
        return (
            f"<ResourceGuardState {RECOMMENDATIONS[self._current]}"
            f" reason={self._reason} updates={self._updates}>"
        )


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))
