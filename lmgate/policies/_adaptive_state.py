"""One endpoint's limit under :class:`~lmgate.policies.Adaptive`: windows, probes and cuts.

How and why the limit moves is told once, in the docstring of
``lmgate/policies/_adaptive.py``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Final, final

from lmgate.policies._adaptive_settings import AdaptiveSettings
from lmgate.policies._engine import NO_FACTS, EngineFacts, EngineReading, EngineWindow
from lmgate.policies._limit import LimitStatistics
from lmgate.policies._sample import Sample
from lmgate.policies._windows import (
    DROPS,
    Profile,
    Reading,
    Spread,
    blend,
    latency_ratio,
    log_ratio,
    profile_of,
    read_sample,
)

__all__ = ["AdaptiveState"]

_NAN: Final = math.nan
#: Finished requests (successes and timeouts) over which timeouts are counted.
_TIMEOUT_SPAN: Final = 32
#: How much more elasticity a down-step must show than an up-step, unless configured.
_DOWN_MARGIN: Final = 0.15
#: What ``statistics()`` counts.
_COUNTS: Final = (
    *("samples", "drops", "windows", "cuts", "shifts", "probes", "kept", "aborted"),
    *("server_queue_cuts", "engine_refusals", "readings"),
)


@final
class AdaptiveState:
    """One endpoint's limit under :class:`~lmgate.policies.Adaptive`."""

    __slots__ = (
        "_before",
        "_bisecting",
        "_climb",
        "_config",
        "_counts",
        "_cut_epoch",
        "_direction",
        "_engine",
        "_epoch",
        "_facts",
        "_limit",
        "_next_probe",
        "_now",
        "_obs",
        "_obs_spread",
        "_pending",
        "_probe_level",
        "_ratio",
        "_recent",
        "_ref",
        "_rng",
        "_run",
        "_run_start",
        "_startup",
        "_step",
        "_turn",
        "_urgent",
        "_window_start",
    )

    def __init__(self, config: AdaptiveSettings) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._limit = config.initial_limit
        self._probe_level = 0  # the step being measured; 0 while holding
        self._pending: tuple[int, list[Reading], Profile, EngineFacts] | None = None
        self._direction = 1
        self._step = 1
        self._run = 0  # steps kept in a row in the current direction
        self._run_start: float | None = None  # when a routine probe run began
        self._startup = True
        self._urgent = False  # the next run follows a shift: no bracketing
        self._bisecting = False  # a run's grown step overshot: its steps now halve
        self._climb = 0  # the first step of the next run, when a failed doubling set it
        self._turn = False  # a shift's run turns round if its first step fails
        self._ref: Profile | None = None  # steady reference, averaged
        self._before: Profile | None = None  # the latest window at the held limit
        self._ratio = _NAN
        self._now = -math.inf
        self._next_probe = -math.inf
        self._epoch = -math.inf
        self._cut_epoch = -math.inf
        self._window_start = -math.inf
        self._obs: list[Reading] = []
        # log ratios of this window's readings to ``_before`` (which changes
        # only when a window closes or restarts, as ``_obs`` is emptied)
        self._obs_spread = Spread()
        self._recent: deque[bool] = deque(maxlen=_TIMEOUT_SPAN)  # True: a timeout
        self._engine = EngineWindow()  # the server's own readings in this window
        self._facts = NO_FACTS  # what they said over the step being decided
        self._counts = dict.fromkeys(_COUNTS, 0)

    @property
    def limit(self) -> int:
        return self._probe_level or self._limit

    def _clock(self, now: float) -> float:
        if math.isfinite(now) and now > self._now:
            self._now = now
        return self._now

    def update(self, sample: Sample, now: float) -> int:
        now = self._clock(now)
        outcome = sample.outcome
        if outcome in DROPS:
            self._counts["samples"] += 1
            self._counts["drops"] += 1
            # Granted since the last cut, and under a limit no higher than
            # today's: a request the old limit let in (the cut takes a moment
            # to reach admission, and a fast 503 comes back at once) is news
            # of the overload already acted on.
            fresh = sample.start >= self._cut_epoch and sample.in_flight <= self.limit
            if fresh and (outcome != "timeout" or self._timeouts_pile_up()):
                self._cut(now)
            return self.limit
        if outcome != "success":
            return self.limit
        self._counts["samples"] += 1
        self._recent.append(False)
        obs = read_sample(sample, self._config.prompt_scale)
        if obs is None or sample.start < self._epoch or obs.in_flight > self.limit:
            return self.limit
        self._obs.append(obs)
        if self._before is not None and (x := log_ratio(obs, self._before)) == x:
            self._obs_spread.add(x)
        self._maybe_close(now)  # closes at max_window_samples at the latest
        return self.limit

    def observe_engine(self, reading: EngineReading, now: float) -> int:
        """One reading of the server's metrics, folded into the window it falls in."""
        self._clock(now)
        self._counts["readings"] += 1
        engine = self._engine
        engine.add(reading, in_window=reading.at >= self._window_start)
        # A doubling (or a step searching one) under which the server
        # preempts or queues is past its knee: no need to measure the
        # overshoot for a whole window.
        wide = self._startup or self._bisecting
        if wide and self._probe_level > self._limit and (engine.preempted or engine.standing_queue):
            self._counts["engine_refusals"] += 1
            if self._startup:
                self._doubling_failed(self._probe_level, True, now)
            elif self._step > 1:
                self._step //= 2
                self._probe_level = 0
                self._probe(now)
            else:
                self._end_run(now)
        return self.limit

    def tick(self, now: float) -> int:
        now = self._clock(now)
        probing = self._probe_level or self._pending is not None
        if probing and now - self._window_start > self._config.probe_timeout:
            self._abort(now)
        self._maybe_close(now)
        return self.limit

    # -- windows -------------------------------------------------------------

    def _restart(self, now: float) -> None:
        """Start a window for samples granted once the new limit has settled (``settle``)."""
        config, known = self._config, self._before or self._ref
        settle = config.settle * known.duration if known is not None else 0.0
        self._epoch = self._window_start = now + min(settle, config.probe_timeout)
        self._obs, self._obs_spread = [], Spread()
        self._engine.clear()

    def _maybe_close(self, now: float) -> None:
        config = self._config
        if self._window_start == -math.inf:
            self._window_start = now
        obs = self._obs
        enough = len(obs) >= config.window_samples and now - self._window_start >= config.window
        if not ((enough and self._precise()) or len(obs) >= config.max_window_samples):
            return
        self._counts["windows"] += 1
        profile = profile_of(obs)
        facts = self._engine.facts()
        self._obs, self._obs_spread = [], Spread()
        self._engine.clear()
        self._window_start = now
        if self._probe_level:
            self._measured(obs, profile, facts, now)
        elif self._pending is not None:
            self._judge(obs, profile, now)
        else:
            self._steady(obs, profile, facts, now)

    def _precise(self) -> bool:
        """Whether a window that decides a step knows its elasticity within ``precision``."""
        pending, before = self._pending, self._before
        level = self._probe_level or (pending[0] if pending is not None else 0)
        if not level or before is None:
            return True
        span = abs(math.log(level / self._limit))
        return self._obs_spread.standard_error() <= self._config.precision * span

    # -- decisions -----------------------------------------------------------

    def _steady(self, obs: list[Reading], profile: Profile, facts: EngineFacts, now: float) -> None:
        config = self._config
        ref = self._ref
        # Of the requests the server kept waiting, ours are at most those in
        # excess of what it runs (others may share it).
        ours = min(facts.standing_queue, round(profile.in_flight) - facts.running)
        if ours > 0 and not facts.cache_full and self._limit > config.min_limit:
            self._server_queues(ours, now)
            return
        if ref is None:
            self._ref = self._before = profile
        elif profile.in_flight < ref.in_flight * (1.0 - config.probe_step):
            return  # the client, not the server, set this window's load
        else:
            ratio = self._ratio = latency_ratio(obs, ref)
            self._before = profile
            if self._shifted(ratio, now):
                return
            if ratio == ratio:
                self._ref = blend(ref, profile, config.smoothing)
        # An up-step the client cannot fill would measure nothing.  (A first
        # window, filling from nothing, is taken as full.)
        full = ref is None or profile.in_flight >= self._limit * (1.0 - config.probe_step)
        if now >= self._next_probe and (self._direction < 0 or full):
            self._step = max(1, round(self._limit * config.probe_step))
            if self._climb and self._direction > 0:
                # Search the doubling that failed by halves, not in small steps
                # whose latency change the noise of a window would drown.
                self._step, self._bisecting = self._climb, True
            self._climb = 0
            self._run = 0
            self._run_start = None if self._startup else now
            self._probe(now)

    def _shifted(self, ratio: float, now: float) -> bool:
        """Whether the server changed under a steady limit (and if so, react).

        Whether its knee moved too is for a probe run to find out, from a
        reference measured wholly after the change.
        """
        if not abs(math.log(ratio)) > math.log1p(self._config.jump):
            return False
        before = self._before
        if before is not None and before.duration < self._config.min_latency:
            return False  # sub-millisecond calls: no latency signal to shift
        self._counts["shifts"] += 1
        self._startup = False  # what startup learnt is out of date
        self._ref = self._before = None
        self._hold(now, -1 if ratio > 1.0 else 1)
        self._next_probe = now
        self._urgent = self._turn = True
        return True

    def _probe(self, now: float) -> None:
        config = self._config
        limit = self._limit
        if self._direction > 0 and self._startup:
            level = max(limit + 1, math.ceil(limit * config.startup_factor))
        else:
            level = limit + self._direction * self._step
        level = max(config.min_limit, min(config.max_limit, level))
        if level == limit or (self._bisecting and self._step < 1):
            self._end_run(now)
            return
        self._counts["probes"] += 1
        self._probe_level = level
        self._restart(now)

    def _measured(
        self, obs: list[Reading], profile: Profile, facts: EngineFacts, now: float
    ) -> None:
        """A step's window is in: judge it, or first measure the way back."""
        level, before = self._probe_level, self._before
        if before is None:
            self._abort(now)
        elif self._startup or self._run or self._urgent:
            self._facts = facts
            self._decide(level, latency_ratio(obs, before), before.peak, profile, now)
        else:
            # The first step of a routine run is bracketed by a window at the
            # held limit before and after it, so a drift in latency cancels.
            self._pending = (level, obs, profile, facts)
            self._probe_level = 0
            self._restart(now)

    def _judge(self, back: list[Reading], after: Profile, now: float) -> None:
        pending, before = self._pending, self._before
        self._pending = None
        if pending is None or before is None or self._shifted(latency_ratio(back, before), now):
            return
        level, obs, profile, self._facts = pending
        first, second = latency_ratio(obs, before), latency_ratio(obs, after)
        base = math.sqrt(before.peak * after.peak)
        self._before = after
        if first == first and second == second:
            self._decide(level, math.sqrt(first * second), base, profile, now)
        else:
            self._decide(level, first if first == first else second, base, profile, now)

    def _decide(self, level: int, ratio: float, base: float, profile: Profile, now: float) -> None:
        """Keep or undo a step, from the latency ratio over the concurrency it reached.

        The concurrency is the one reached (the peak in flight), not the one
        allowed: a client that cannot fill a step says nothing about the
        server, and a step it fills only partly is judged on what it did.
        """
        up = level > self._limit
        span = math.log(profile.peak / base)
        if ratio != ratio or span * (1 if up else -1) < 0.75 * math.log1p(1 / self._limit):
            self._abort(now)
            return
        self._ratio = ratio
        config = self._config
        elasticity = math.log(ratio) / span
        if profile.duration < config.min_latency:
            # No server behind this call has a latency to lose: what rises
            # is the event loop's own turn-around, which more concurrency
            # only amortises.  Treat a step as free, so the limit follows
            # the client instead of collapsing.
            elasticity = 0.0
        down = config.down_elasticity
        if down is None:
            down = config.elasticity + _DOWN_MARGIN
        # A doubling is judged on the average over a wide span, which hides
        # a hard knee inside it: keep one only while it is clearly cheap --
        # unless the server itself showed no queue and a cache with room
        # all along, so that there was no hard knee to hide.
        facts = self._facts
        room = facts.room
        keep_up = config.elasticity / 2 if self._startup and not room else config.elasticity
        # A server that queued or preempted under the step is past its knee
        # there, whatever latency says.
        keep = not (facts.standing_queue and not facts.cache_full) and elasticity < keep_up
        if keep if up else elasticity > down:
            self._counts["kept"] += 1
            reached = int(profile.peak)
            self._limit = max(self._limit + 1, min(level, reached)) if up else level
            self._probe_level = 0
            self._ref = self._before = profile
            self._run += 1
            if self._bisecting:
                self._step //= 2
            elif up and elasticity >= config.elasticity / 3 and not room:
                # Batching is getting dearer: a knee is near, so go on in
                # routine steps rather than double past it.
                self._startup = False
                self._step = max(1, round(self._limit * config.probe_step))
            else:
                self._step = min(2 * self._step, max(1, self._limit // 4))
            self._probe(now)
        elif self._startup and up:
            # Past the knee already (latency grew with the load): undo an
            # overshoot of the last doubling.  Below it (the knee lies
            # within the doubling), or where the server showed itself
            # filling up (a queue, a full cache): search it by halves.
            below = elasticity < config.elasticity or facts.standing_queue > 0 or facts.cache_full
            self._doubling_failed(level, below, now)
        elif self._turn and not self._run:
            # After a shift the first step failed: the knee may have moved
            # the other way, so try that way at once rather than a probe later.
            self._turn = False
            self._hold(now, -self._direction)
            self._next_probe = now
            self._urgent = True
        elif self._run and self._step > 1:
            # A run's grown step went too far: halve it until it fits.
            self._bisecting = True
            self._step //= 2
            self._probe_level = 0
            self._probe(now)
        else:
            self._end_run(now)

    def _doubling_failed(self, level: int, below: bool, now: float) -> None:
        self._startup = False
        self._hold(now, 1 if below else -1)
        if below:
            self._climb = max(1, (level - self._limit) // 2)
        self._next_probe = now
        self._urgent = True

    def _end_run(self, now: float) -> None:
        self._startup = self._turn = False
        self._hold(now, -self._direction)
        # The way down is looked at half as often as the way up, and a long
        # run is followed by a long pause (``probe_cv``): see the module doc.
        wait = 0.0
        if (start := self._run_start) is not None:
            step = max(1, round(self._limit * self._config.probe_step))
            duty = min(1.0, (self._config.probe_cv * self._limit / step) ** 2)
            wait = (now - start) * (1.0 - duty) / duty
            self._run_start = None
        self._schedule(now, 1.0 if self._direction > 0 else 2.0, at_least=wait)

    def _abort(self, now: float) -> None:
        self._counts["aborted"] += 1
        if self._probe_level > self._limit:
            # The client could not fill the step, so nothing is known above
            # the limit: look again soon, still in startup if it was (a
            # client that ramps up, or a server that slows, fills it later).
            self._hold(now, self._direction)
            self._schedule(now, 0.25)
            return
        self._hold(now, self._direction)
        self._schedule(now)

    def _hold(self, now: float, direction: int) -> None:
        self._probe_level = 0
        self._pending = None
        self._urgent = False
        self._bisecting = False
        self._direction = direction
        self._restart(now)

    def _schedule(self, now: float, share: float = 1.0, at_least: float = 0.0) -> None:
        config = self._config
        spread = config.probe_jitter * self._rng.uniform(-1.0, 1.0)
        self._next_probe = now + max(share * config.probe_interval * (1.0 + spread), at_least)

    def _timeouts_pile_up(self) -> bool:
        """Count a fresh timeout; whether they now make ``timeout_share`` of the last few."""
        share = self._config.timeout_share
        recent = self._recent
        recent.append(True)
        return sum(recent) >= max(1, math.ceil(share * _TIMEOUT_SPAN))

    def _cut(self, now: float) -> None:
        """A fresh drop: back off from the lower of the held and probed limits."""
        base = min(self._limit, self.limit)
        cut = int(base * self._config.backoff)
        self._limit = max(self._config.min_limit, min(cut, base - 1))
        self._counts["cuts"] += 1
        self._recent.clear()
        self._startup = False
        self._ref = self._before = None
        self._cut_epoch = now
        self._hold(now, 1)
        self._schedule(now, 0.25)

    def _server_queues(self, waiting: int, now: float) -> None:
        """``waiting`` of ours stood queued at the server, where no priority orders them."""
        config = self._config
        self._limit = max(config.min_limit, self._limit - waiting)
        self._counts["server_queue_cuts"] += 1
        self._startup, self._climb = False, 0
        self._ref = self._before = None
        self._hold(now, 1)
        self._schedule(now)

    def reset(self) -> None:
        """Forget every latency measured so far, keeping the limit in force.

        Called when the model behind the endpoint changed (a new digest under
        the same name): its old latencies say nothing about the new model,
        so the next windows measure afresh and a probe run follows.
        """
        self._probe_level = 0
        self._pending = None
        self._ref = None
        self._before = None
        self._ratio = _NAN
        self._obs, self._obs_spread = [], Spread()
        self._engine.clear()
        self._recent.clear()
        self._urgent = True
        self._next_probe = -math.inf
        self._window_start = -math.inf

    def statistics(self) -> LimitStatistics:
        detail = {name: float(value) for name, value in self._counts.items()}
        detail["probing"] = float(self._probe_level != 0 or self._pending is not None)
        detail["startup"] = float(self._startup)
        detail["ratio"] = self._ratio if math.isfinite(self._ratio) else 0.0
        detail["held_limit"] = float(self._limit)
        return LimitStatistics(
            policy="Adaptive", limit=self.limit, samples=self._counts["samples"], detail=detail
        )

    def __repr__(self) -> str:
        state = f"probing {self._probe_level}" if self._probe_level else "holding"
        return f"<AdaptiveState limit={self._limit} {state} samples={self._counts['samples']}>"
