"""lmgate's default limit for language-model endpoints.

Why not a gradient against the no-load latency, as Gradient2 and Envoy do?
On a GPU, per-token time rises with batch size long before throughput stops
rising.  A controller that reads any rise over the idle latency as a queue
settles where that rise reaches its tolerance, which on a GPU can be a tenth
of the best fixed concurrency.  What matters is the
*marginal* cost -- how much latency one more slot adds, relative to the
throughput it adds -- so this policy measures latency at neighbouring
limits and keeps a step only when it is worth it.  With latency ratio ``r``
between a step and the held limit, ``e = ln r / ln(step / limit)`` is the
latency elasticity: near 0 below a knee (batching is free), 1 or more past
it (every extra request only waits).  An up-step is kept when ``e <
elasticity``, a down-step when ``e > down_elasticity`` (by default 0.15
more than ``elasticity``): between the two nothing moves, so a measurement
that lands near the threshold cannot undo the step before it, and a server
whose latency grows almost in proportion to its batch (llama.cpp on a CPU)
is not walked down below the concurrency that still pays a little.

Latency is read per request, normalised so output length cannot pass for
load: a window's reference holds the median time to first token (divided by
``1 + prompt_tokens / prompt_scale``), time per output token after the
first, time per token and raw duration, and each request is compared with
the duration the reference predicts for its own sizes, from the most
specific figures both have.  A window's ratio is the mean of the logs of
those comparisons, one outlier at each end dropped: past a hard knee only
the few requests that queue get slower, which a median would not see.
Requests of one server differ by tens of per cent even after their sizes
are allowed for, so a window that decides a step stays open (up to
``max_window_samples``) until the standard error of the elasticity it
measures is under ``precision``; a quiet server decides in
``window_samples``, a noisy one takes the samples it needs.  Calls faster
than ``min_latency`` (no model behind them) carry no latency signal: their
steps count as free and their latency never reads as a shift.

Cancelled, client-error and loading outcomes are not samples.  Overload,
error and timeout are drops, never latencies: the first drop of a request
granted since the last cut, under a limit no higher than today's, cuts the
limit by ``backoff`` at once, so a fast failure can neither look healthy nor
cut twice for one overload (a burst of 503s from requests the old limit let
in is one overload, not one per request).  A timeout alone is weaker news: a request that
ran into its caller's deadline may have spent that deadline queueing, or
be writing a long answer.  It cuts only once timeouts make up
``timeout_share`` of the last few finished requests (``timeout_share`` 0:
every fresh one cuts) -- the share a black hole or a server too slow for
its callers reaches at once, and stray long answers never do.

How the limit moves, always in whole slots within ``[min_limit, max_limit]``:

- *Startup*: the limit multiplies by ``startup_factor`` while that is nearly
  free (elasticity under a third of ``elasticity``), then goes on in routine
  steps.  A doubling is kept only while under half of ``elasticity``: its
  elasticity is an average over a wide span, which hides a hard knee inside
  it.  One that fails below ``elasticity`` starts a run up from the old
  limit at once that searches the doubling by halves (the knee lies within
  it, and steps of one slot would change latency less than the noise of a
  window on a server whose requests vary in size); one that fails
  above it, a run down (the old limit may be past the knee already).  A
  shift or a cut ends startup; a doubling the client cannot fill is tried
  again later (a client that ramps up, or a server that slows, fills it).
- *Probes*: every ``probe_interval`` seconds, give or take ``probe_jitter``
  (drawn from a generator seeded by ``seed``), it steps by ``probe_step`` of
  itself (at least one slot), alternately up and down -- up only when the
  client keeps the held limit full, since a step it cannot fill measures
  nothing (startup waits for that too).  A kept step is followed at once
  by one twice as large (up to a quarter of the limit) in the same
  direction, so a run covers a large change quickly, unless it was barely
  worth it (a knee is near); a grown step that fails is halved until it
  fits or is down to one slot.  The first step of a routine run is judged
  against windows at the held limit both before and after it, so a drift
  in latency cancels out.  After a cut, or a step the client could not
  fill, the next probe comes four times sooner: a cut that was noise is
  soon undone, and a client that grows is followed.  After a run up the
  next probe, downwards, waits twice as long: a down-step costs throughput
  while it is measured, and a limit a little past the knee costs only some
  queueing at the server.  And a run that took long (a slow server needs
  minutes of samples per step) is followed by a longer pause, so probing
  adds at most ``probe_cv`` to the limit's coefficient of variation: a step
  of ``s`` slots at limit ``L`` is measured at most ``(probe_cv L / s)^2`` of
  the time.
- *Shifts*: a steady window whose latency moved more than ``1 + jump``
  times from the reference means the server changed.  It is not a cut --
  a server that got uniformly slower still wants the same concurrency --
  but a new reference and an immediate probe run towards the change, which
  finds out whether the knee moved; if its first step fails, a run the
  other way follows at once.

A window takes at least ``window`` seconds and ``window_samples`` samples,
and only from requests granted ``settle`` request-durations after the last
change: a new limit takes about one request's time to reach its steady
state, and the first requests to finish are those that saw least of it.

*The server's own metrics*, where it publishes them
(``Endpoint(engine_metrics=True)``; see ``lmgate.policies._engine``),
say what latency can only suggest.  A window in which the server kept
requests waiting in every reading, with a cache that was not full, means
the batch is full: a held limit drops by the requests that stood waiting,
and an up-step under such a queue is never kept.  A window in which it
kept none waiting (fewer than half of the readings caught a request
between two steps) has no hard knee inside it, so a startup doubling is
kept while its elasticity is under ``elasticity`` rather than half of it,
and a barely cheap one does not end startup.  A doubling under which the
server preempts or queues is undone at the reading that shows it,
without waiting out the window, and the doubling is then searched by
halves.  Without metrics, all of this is simply never triggered.

Between probes the limit does not move at all, which is the hysteresis;
wrapping this policy in :class:`~lmgate.policies.Hysteresis` is not needed
and would hold back the steps it measures.
"""

from __future__ import annotations

from typing import final

from lmgate.policies._adaptive_settings import AdaptiveSettings
from lmgate.policies._adaptive_state import AdaptiveState

__all__ = ["Adaptive", "AdaptiveState"]


@final
class Adaptive(AdaptiveSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """lmgate's default limit; :meth:`build` makes one endpoint's state.

    Every setting, with its bounds, is on :class:`AdaptiveSettings`; the
    module docstring says what each does to the limit.
    """

    def build(self) -> AdaptiveState:
        return AdaptiveState(self)
