"""Queue control: spend a server's capacity on requests that will make their deadline.

Under overload, a FIFO queue in front of a model server fills until every
request waits almost its whole deadline, gets its slot with too little time
left, and runs on the server until the deadline cuts it: the server works
at full speed and delivers nothing.  Three rules prevent that, each from a
known design:

* **A calibrated wait predictor.**  A request is admitted only if the wait
  for the requests ahead of it plus its own service time fit before its
  deadline.  The wait is Little's law over the observed *mean* service time
  (``ahead / capacity * mean``); its own service is a *quantile* of the
  observed distribution (the median by default), not the fastest ever
  seen, which would admit requests that then miss.  Durations of requests
  cut by their deadline count too (as lower bounds), so a server slowing
  down is seen at once rather than through the survivors only.
* **No hopeless start.**  When a slot frees and the request at the head
  has less time left than that quantile while others wait behind it, it is
  refused rather than started: the slot goes to a request that can finish.
* **CoDel on standing queues** (Nichols & Jacobson; Facebook's RPC queues):
  when the oldest waiter stays older than ``target`` for a whole
  ``interval`` (the *minimum* sojourn is above target: a standing queue,
  not a burst draining), the newest request of the most urgent priority
  is served first (adaptive LIFO, as in Facebook's RPC queues: it still
  has its whole deadline ahead, so the server works on requests that will
  make it), and waiters left with less time than a service takes are
  refused from the oldest end at once instead of at their deadline.  A
  request without a deadline is never shed and never overtaken this way:
  a batch with no deadline keeps its FIFO order and completes.
  Priorities still order everything.

Sans-IO: observations and ``now`` in, decisions out.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal, final

import msgspec

from lmgate._validate import check_float, check_int

__all__ = [
    "QueueControl",
    "QueueControlState",
    "QueueControlStatistics",
    "ServiceWindow",
]


@final
class ServiceWindow:
    """The last ``size`` service durations of one endpoint, for means and quantiles."""

    __slots__ = ("_sorted", "_sum", "_values")

    def __init__(self, size: int = 256) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._sorted: list[float] | None = None
        self._sum = 0.0

    def __len__(self) -> int:
        return len(self._values)

    def observe(self, duration: float) -> None:
        if not (duration >= 0.0 and math.isfinite(duration)):
            return
        values = self._values
        if len(values) == values.maxlen:
            self._sum -= values[0]
        values.append(duration)
        self._sum += duration
        self._sorted = None

    def mean(self) -> float | None:
        return self._sum / len(self._values) if self._values else None

    def quantile(self, q: float) -> float | None:
        if not self._values:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._values)
        s = self._sorted
        pos = q * (len(s) - 1)
        low = int(pos)
        high = min(low + 1, len(s) - 1)
        return s[low] + (s[high] - s[low]) * (pos - low)


@final
class QueueControlStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """How the queue was managed, and how well waits were predicted."""

    standing: bool
    lifo_served: int
    shed: int
    hopeless_dropped: int
    predicted_refused: int
    #: Absolute error of predicted against actual queue waits, seconds.
    wait_error_p50: float | None
    wait_error_p90: float | None
    predictions: int


@final
class QueueControl(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the scheduler's queue is managed (``QueueOptions(control=...)``).

    ``quantile``: which quantile of observed service durations a request is
    expected to need (0.5: the median).  ``target`` / ``interval``: CoDel's
    acceptable standing sojourn and the window over which it must persist
    (``None``: the median service time and two of them, so the rule scales
    with the server instead of assuming a speed).  ``lifo``: serve the
    newest first while the queue stands.  ``shed``: while it stands, refuse
    waiters that can no longer be served in time at once.  ``window``:
    durations kept per endpoint.
    """

    quantile: float = 0.5
    target: float | None = None
    interval: float | None = None
    lifo: bool = True
    shed: bool = True
    window: int = 256

    def __post_init__(self) -> None:
        check_float("control.quantile", self.quantile, low=0.0, high=1.0)
        if self.target is not None:
            check_float("control.target", self.target, low=0.0, low_open=True, high=1e6)
        if self.interval is not None:
            check_float("control.interval", self.interval, low=0.0, low_open=True, high=1e6)
        for name in ("lifo", "shed"):
            if not isinstance(getattr(self, name), bool):
                from lmgate._errors import InvalidParameter

                raise InvalidParameter(f"control.{name} must be a bool", field=f"control.{name}")
        check_int("control.window", self.window, low=8, high=1_000_000)

    def build(self) -> QueueControlState:
        return QueueControlState(self)


@final
class QueueControlState:
    """The running state of :class:`QueueControl` for one scheduler."""

    def __init__(self, config: QueueControl) -> None:
        self.config = config
        self._first_above: float | None = None
        self._standing = False
        self._errors: deque[float] = deque(maxlen=1024)
        self.lifo_served = 0
        self.shed = 0
        self.hopeless_dropped = 0
        self.predicted_refused = 0
        self.predictions = 0

    # -- prediction -------------------------------------------------------

    def predict(
        self, ahead: int, capacity: int, mean: float | None, service: float | None
    ) -> float:
        """Seconds from now until a request with ``ahead`` waiters before it is done.

        ``capacity`` slots drain the queue at ``capacity / mean`` requests
        per second; ``service`` is its own expected duration.  Zero with no
        observation yet, so nothing is refused on a guess.
        """
        if capacity <= 0 or mean is None or service is None:
            return 0.0
        return (ahead + 0.5) / capacity * mean + service

    def hopeless(self, now: float, deadline: float, service: float | None, behind: int) -> bool:
        """Whether a request granted now would most likely miss, with others waiting."""
        return behind > 0 and service is not None and now + service > deadline

    def record_wait(self, predicted: float, actual: float) -> None:
        """A granted request's predicted and actual queue wait, for the error figures."""
        if math.isfinite(predicted) and math.isfinite(actual):
            self.predictions += 1
            self._errors.append(abs(predicted - actual))

    # -- CoDel ------------------------------------------------------------

    def target(self, median: float | None) -> float:
        """The acceptable standing sojourn: configured, or one median service time."""
        if self.config.target is not None:
            return self.config.target
        return median if median is not None else math.inf

    def interval(self, median: float | None) -> float:
        if self.config.interval is not None:
            return self.config.interval
        return 2.0 * median if median is not None else math.inf

    def observe_head(self, age: float, now: float, median: float | None) -> None:
        """The oldest waiter has waited ``age`` (0 for an empty queue).

        The queue *stands* once the oldest waiter has been older than
        ``target`` for a whole ``interval`` -- the queue never drained in
        that time, so it is not a burst -- and stops standing the moment it
        drains below ``target``.
        """
        target = self.target(median)
        if age < target:
            self._first_above = None
            self._standing = False
        elif self._first_above is None:
            self._first_above = now + self.interval(median)
        elif now >= self._first_above:
            self._standing = True

    def order(self) -> Literal["fifo", "lifo"]:
        """Newest first while the queue stands (if ``lifo``), else oldest first."""
        return "lifo" if self._standing and self.config.lifo else "fifo"

    @property
    def standing(self) -> bool:
        return self._standing

    def statistics(self) -> QueueControlStatistics:
        errors = sorted(self._errors)

        def q(p: float) -> float | None:
            if not errors:
                return None
            return errors[min(len(errors) - 1, int(p * len(errors)))]

        return QueueControlStatistics(
            standing=self._standing,
            lifo_served=self.lifo_served,
            shed=self.shed,
            hopeless_dropped=self.hopeless_dropped,
            predicted_refused=self.predicted_refused,
            wait_error_p50=q(0.5),
            wait_error_p90=q(0.9),
            predictions=self.predictions,
        )

    def __repr__(self) -> str:
        state = "standing" if self._standing else "draining"
        return f"<QueueControlState {state} dropped={self.shed + self.hopeless_dropped}>"
