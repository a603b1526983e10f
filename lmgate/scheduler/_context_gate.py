"""Context before admission: route a prompt only where it can fit, then fit it there.

A request that carries ``messages`` is priced before it is submitted.  For
each endpoint serving its model, the gate asks what the endpoint's context
strategy could bring the prompt down to at most (``reachable_tokens``),
plus the output reserved for it (``max_tokens``, else the configured
default): an endpoint whose known window is smaller can never serve it.
That becomes the request's ``min_window``, which admission respects when
it grants now, hands a freed slot over or dispatches; a request that no
endpoint could ever fit is refused at once with ``ContextOverflow``,
counted as submitted and ended ``rejected``, and nothing else moves.

Once granted, the prompt is fitted to *that* endpoint's window with its
strategy -- the scheduler's ``context=`` if given, else the default for
the endpoint's locality -- and exposed as ``lease.fitted`` and
``lease.messages``.  If it still does not fit (a counter calibrated
differently, a failed summary), ``ContextOverflow`` is raised inside the
request before anything is sent: the lease is released with a
``client_error`` sample and the request ends ``rejected``.

Tokens are counted with the endpoint's own calibrated counter once it has
seen enough usage reports (``lease.report(prompt_tokens=...)`` after a call
whose prompt was fitted here), else with the tokenizer-free estimate.  An
endpoint whose window is unknown is not constrained, and its prompt is not
shortened: ``lease.fitted.window`` is None.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, cast, final

import anyio

from lmgate._endpoint import Endpoint
from lmgate._errors import ContextOverflow, DeadlineExceeded, InvalidParameter
from lmgate.config._schema import ContextConfig
from lmgate.context._estimate import TokenCounter, estimate_tokens, overhead, scaled_counter
from lmgate.context._fit import (
    ContextCounters,
    ContextStatistics,
    ContextStrategy,
    Fitted,
    afit_messages,
    context_events,
    reachable_tokens,
)
from lmgate.context._messages import Message, text_of, to_messages
from lmgate.detect._tokens import TokenEstimator
from lmgate.observability._events import EventHub
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._lease import Lease
from lmgate.scheduler._slot import EndpointSlot

__all__ = ["ContextGate", "ContextRequest"]

T = TypeVar("T")

_MAX_TOKENS = 100_000_000
#: Leases kept per endpoint until their usage report can calibrate its counter.
_PENDING = 32
#: Usage reports an endpoint's counter needs before it replaces the estimate.
_WARMUP = 8


@final
class ContextRequest:
    """A request's prompt, validated once: its messages, reserve and window need."""

    __slots__ = ("messages", "model", "need", "prompt_tokens", "reserve")

    def __init__(
        self,
        messages: tuple[Message, ...],
        model: str,
        reserve: int,
        need: int | None,
        prompt_tokens: int | None = None,
    ) -> None:
        self.messages = messages
        self.model = model
        self.reserve = reserve
        self.need = need
        #: The prompt's size counted for an endpoint with a KV budget (None: none has one).
        self.prompt_tokens = prompt_tokens

    def __repr__(self) -> str:
        return f"<ContextRequest {self.model} messages={len(self.messages)} need={self.need}>"


@final
class ContextGate:
    """The scheduler's context settings, counters and calibrated token counters."""

    __slots__ = (
        "_counters",
        "_estimators",
        "_events",
        "_override",
        "_pending",
        "_settings",
        "_strategies",
    )

    def __init__(self, context: object, events: EventHub) -> None:
        self._events = events
        self._counters = ContextCounters()
        self._estimators: dict[str, TokenEstimator] = {}
        self._pending: dict[str, deque[Lease]] = {}
        self._settings, self._override = _settings_of(context)
        self._strategies: dict[bool | None, ContextStrategy] = {}

    # -- settings ---------------------------------------------------------------------

    @property
    def settings(self) -> ContextConfig:
        return self._settings

    def configure(self, context: object) -> None:
        """Adopt new settings whole (validated first; a bad value changes nothing)."""
        settings, override = _settings_of(context)
        self._settings, self._override, self._strategies = settings, override, {}

    def strategy_for(self, endpoint: Endpoint) -> ContextStrategy:
        if self._override is not None:
            return self._override
        s = self._strategies.get(endpoint.local)
        if s is None:
            s = self._strategies[endpoint.local] = self._settings.build(local=endpoint.local)
        return s

    def counter_for(self, name: str) -> TokenCounter:
        """The endpoint's calibrated counter once it has seen enough reports."""
        est = self._estimators.get(name)
        if est is None or est.statistics().samples < _WARMUP:
            return estimate_tokens
        return scaled_counter(est.estimate)

    def forget(self, name: str) -> None:
        """The endpoint is gone: drop what was learned about its tokenizer."""
        self._estimators.pop(name, None)
        self._pending.pop(name, None)

    # -- before admission ---------------------------------------------------------------

    def prepare(
        self,
        adm: Admission,
        model: str,
        messages: Iterable[Message | Mapping[str, Any]],
        max_tokens: object,
        *,
        route: bool = True,
        priority: int = 0,
    ) -> ContextRequest:
        """Validate the prompt and work out the window it needs (see the module doc).

        With ``route`` false nothing is checked against the endpoints (a
        retry layer routes by itself); otherwise a prompt no endpoint could
        ever take is counted and refused here.
        """
        msgs = to_messages(messages)
        if max_tokens is None:
            reserve = self._settings.default_reserve
        elif type(max_tokens) is not int or not 0 <= max_tokens <= _MAX_TOKENS:
            raise InvalidParameter(
                f"max_tokens must be None or an int in [0, {_MAX_TOKENS}]", field="max_tokens"
            )
        else:
            reserve = max_tokens
        need = self._need(adm, model, msgs, reserve, priority) if route else None
        size = self.prompt_size(adm, model, msgs, reserve)
        return ContextRequest(msgs, model, reserve, need, size)

    def prompt_size(
        self, adm: Admission, model: str, msgs: tuple[Message, ...], reserve: int = 0
    ) -> int | None:
        """The prompt's tokens by the counter of the first endpoint with a KV budget,
        as fitted to that endpoint's window (what will be sent)."""
        for s in adm.by_model.get(model, ()):
            if s.kv is not None:
                count = self.counter_for(s.endpoint.name)
                tokens = sum(count(m) for m in msgs)
                window = s.endpoint.window_for(model)
                if window is not None:
                    tokens = min(tokens, max(0, window - reserve))
                return tokens
        return None

    def _need(
        self, adm: Admission, model: str, msgs: tuple[Message, ...], reserve: int, priority: int
    ) -> int | None:
        slots = adm.by_model.get(model)
        if not slots:
            return None  # admission refuses the model itself
        totals: dict[int, int] = {}
        known: list[tuple[EndpointSlot, int, TokenCounter]] = []
        for s in slots:
            window = s.endpoint.window_for(model)
            if window is None:
                continue
            count = self.counter_for(s.endpoint.name)
            if id(count) not in totals:
                totals[id(count)] = sum(count(m) for m in msgs)
            known.append((s, window, count))
        if all(totals[id(c)] + reserve <= w for _, w, c in known):
            return None  # every known window takes it as it is
        unknown = len(known) < len(slots)
        reaches: dict[tuple[int, int], int] = {}
        fit_needs: list[int] = []
        fit_windows: list[int] = []
        unfit_windows: list[int] = []
        for s, window, count in known:
            strategy = self.strategy_for(s.endpoint)
            key = (id(strategy), id(count))
            if key not in reaches:
                least = reachable_tokens(msgs, strategy=strategy, count_tokens=count)
                reaches[key] = min(least, totals[id(count)])
            need = reaches[key] + reserve
            if need <= window:
                fit_needs.append(need)
                fit_windows.append(window)
            else:
                unfit_windows.append(window)
        if not fit_needs and not unknown:
            self._counters.record_overflow()
            adm.submitted += 1
            adm.outcomes["rejected"] += 1
            least = min(reaches.values()) + reserve
            largest = max(w for _, w, _ in known)
            error = ContextOverflow(
                f"prompt needs at least ~{least} tokens (with {reserve} reserved for output)"
                f" after every strategy; the largest window serving {model!r} is {largest}",
                tokens=least,
                window=largest,
                before_send=True,
            )
            if adm.watch is not None:
                adm.watch.refused(model, priority, "rejected", error, adm.clock())
            raise error
        floor = max(unfit_windows) + 1 if unfit_windows else 0
        if not fit_needs:
            return floor or None
        # Exclude what cannot fit, never what can (counters may differ per endpoint).
        return min(max(min(fit_needs), floor), min(fit_windows))

    # -- after the grant ----------------------------------------------------------------------

    async def fit(self, lease: Lease, req: ContextRequest) -> Fitted:
        """Fit the prompt to the granted endpoint; sets ``lease.fitted`` and ``messages``."""
        ep = lease._slot.endpoint
        name, model = ep.name, lease.endpoint.model
        self._calibrate(name)
        count = self.counter_for(name)
        window = ep.window_for(model)
        if window is None:
            tokens = sum(count(m) for m in req.messages)
            fitted = Fitted(messages=req.messages, tokens=tokens, window=None, reserve=req.reserve)
        else:
            try:
                fitted = await afit_messages(
                    req.messages,
                    window=window,
                    reserve=req.reserve,
                    strategy=self.strategy_for(ep),
                    count_tokens=count,
                    # Resource pressure tightens the threshold for new prompts.
                    threshold=self._settings.threshold * _admission_of(lease).context_factor,
                    deadline=lease.deadline,
                )
            except ContextOverflow as exc:
                self._counters.record_overflow()
                exc.before_send = True
                raise
        lease.fitted = fitted
        lease.messages = fitted.to_dicts()
        self._counters.record(fitted)
        if fitted.applied:
            now = anyio.current_time()
            for event in context_events(fitted, at=now, endpoint=name, model=model):
                self._events.publish(event)
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = deque(maxlen=_PENDING)
        pending.append(lease)
        return fitted

    async def fit_held(self, lease: Lease, req: ContextRequest) -> None:
        """:meth:`fit` for ``acquire()``: under the lease's deadline, released on failure."""
        try:
            with anyio.CancelScope(deadline=lease.deadline) as scope:
                await self.fit(lease, req)
        except BaseException as exc:
            lease.release(exc)
            raise
        if scope.cancelled_caught:
            _admission_of(lease).finish(
                lease, None, outcome="cancelled", result="deadline_exceeded"
            )
            raise DeadlineExceeded(f"deadline passed fitting the prompt for {lease.endpoint.name}")

    def wrap(
        self, call: Callable[[Lease], Awaitable[T]], req: ContextRequest
    ) -> Callable[[Lease], Awaitable[T]]:
        """``call`` preceded by fitting: for a retry layer, whose every attempt
        may land on an endpoint with another window."""

        async def fitted(lease: Lease) -> T:
            await self.fit(lease, req)
            return await call(lease)

        return fitted

    def _calibrate(self, name: str) -> None:
        """Learn from released leases whose prompt was fitted here and reported."""
        pending = self._pending.get(name)
        if not pending:
            return
        keep: list[Lease] = []
        for lease in pending:
            if not lease.released:
                keep.append(lease)
                continue
            tokens, fitted = lease._prompt_tokens, lease.fitted
            if tokens is None or fitted is None:
                continue
            chars = sum(len(text_of(m)) for m in fitted.messages)
            framing = sum(overhead(m) for m in fitted.messages)
            est = self._estimators.get(name)
            if est is None:
                est = self._estimators[name] = TokenEstimator(warmup=_WARMUP)
            est.observe(chars, max(0, tokens - framing))
        pending.clear()
        pending.extend(keep)

    def statistics(self) -> ContextStatistics:
        return self._counters.statistics()

    def __repr__(self) -> str:
        return f"<ContextGate threshold={self._settings.threshold} {self._counters!r}>"


def _settings_of(context: object) -> tuple[ContextConfig, ContextStrategy | None]:
    if context is None:
        return ContextConfig(), None
    if isinstance(context, ContextConfig):
        return context, None
    if callable(getattr(context, "fit", None)):
        return ContextConfig(), context  # type: ignore[return-value]
    raise InvalidParameter(
        "context must be a context strategy (e.g. SlidingWindow()) or a ContextConfig",
        field="context",
    )


def _admission_of(lease: Lease) -> Admission:
    """The admission that granted ``lease`` (the only kind of releaser there is)."""
    return cast(Admission, lease._admission)
