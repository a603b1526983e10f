"""When to probe an endpoint, and where to look for a server that moved.

Probes are cheap but not free: a healthy endpoint is probed at a steady,
jittered pace (so a fleet of schedulers does not probe in lockstep), a down
one less and less often, and a recovering one (half-open or held) quickly so
traffic returns as soon as it can.  Local servers also move: a restarted
llama-server or a container comes back on another port, so when the known
port refuses connections the actor walks a short list of candidate ports.
The probing itself is the actor's; this module only plans.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._breaker import BreakerStateName

__all__ = [
    "HealthSchedule",
    "PortSearch",
    "PortSearchStatistics",
    "default_ports",
    "replace_port",
    "url_port",
]

_PORTS: Final[dict[str, tuple[int, ...]]] = {
    "ollama": (11434,),
    "llamacpp": (8080,),
    "vllm": (8000,),
    "lmstudio": (1234,),
    "tgi": (8080, 3000),
    "localai": (8080,),
    "openai": (),
}
_ALL_LOCAL: Final = (11434, 8080, 8000, 1234)
_STATES: Final = frozenset(get_args(BreakerStateName))


@final
class HealthSchedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Probe pacing; every delay is jittered by up to ``jitter`` of itself.

    ``interval`` applies while closed and healthy; after failures while
    down (open) the delay grows by ``down_multiplier`` per failure up to
    ``down_max``; while half-open, held, or closed-but-failing it is
    ``recovering_interval``.  Each probe runs under ``probe_timeout``.
    ``search_after`` consecutive refused connections start a port search.
    """

    interval: float = 10.0
    jitter: float = 0.1
    down_multiplier: float = 2.0
    down_max: float = 60.0
    recovering_interval: float = 1.0
    probe_timeout: float = 2.0
    search_after: int = 2

    def __post_init__(self) -> None:
        check_float("interval", self.interval, low=0.0, low_open=True, high=86_400.0)
        check_float("jitter", self.jitter, low=0.0, high=0.9)
        check_float("down_multiplier", self.down_multiplier, low=1.0, high=100.0)
        check_float("down_max", self.down_max, low=0.0, low_open=True, high=86_400.0)
        check_float(
            "recovering_interval", self.recovering_interval, low=0.0, low_open=True, high=86_400.0
        )
        check_float("probe_timeout", self.probe_timeout, low=0.0, low_open=True, high=3600.0)
        check_int("search_after", self.search_after, low=1, high=1000)

    def next_probe_delay(
        self,
        state: BreakerStateName,
        consecutive_failures: int,
        draw: float,
        *,
        state_ends_in: float | None = None,
    ) -> float:
        """Seconds until the next probe; ``draw`` is uniform in [0, 1].

        ``state_ends_in`` is how long until the breaker's open time or hold
        ends (``retry_at - now``): the probe then comes no later than that,
        so an endpoint is tested the moment it may recover instead of after
        a backed-off wait.
        """
        check_int("consecutive_failures", consecutive_failures, low=0, high=1 << 62)
        check_float("draw", draw, low=0.0, high=1.0)
        if state_ends_in is not None:
            check_float("state_ends_in", state_ends_in, low=0.0, high=1e12)
        if state not in _STATES:
            raise InvalidParameter(f"unknown breaker state {state!r}", field="state")
        if state == "open":
            try:
                base = self.interval * self.down_multiplier ** min(consecutive_failures, 10_000)
            except OverflowError:
                base = self.down_max
            base = min(base, max(self.down_max, self.interval))
        elif state in ("half_open", "held") or consecutive_failures > 0:
            base = min(self.recovering_interval, self.interval)
        else:
            base = self.interval
        delay = base * (1.0 + self.jitter * (2.0 * draw - 1.0))
        if state_ends_in is not None and state_ends_in < delay:
            return state_ends_in
        return delay

    def should_search(self, consecutive_refused: int) -> bool:
        """Whether refused connections have gone on long enough to look elsewhere."""
        return consecutive_refused >= self.search_after


def default_ports(kind: str) -> tuple[int, ...]:
    """Where a server of ``kind`` listens unless told otherwise.

    An unknown kind gets all four common local ports; a cloud API none.
    """
    return _PORTS.get(kind, _ALL_LOCAL)


def url_port(url: str) -> int | None:
    """The port a URL points at, its scheme's default included."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if port is not None:
        return port
    return {"http": 80, "https": 443}.get(parts.scheme)


def replace_port(url: str, port: int) -> str:
    """``url`` with its port replaced, keeping path, userinfo and IPv6 brackets."""
    check_int("port", port, low=1, high=65535)
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise InvalidParameter(f"url has no host: {url[:80]!r}", field="url")
    if ":" in host:
        host = f"[{host}]"
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@final
class PortSearchStatistics(msgspec.Struct, frozen=True, kw_only=True):
    current: int
    tried: tuple[int, ...]
    found: int | None
    remaining: int


@final
class PortSearch:
    """One round of looking for a server among candidate ports.

    Drive it as ``while (port := s.next_port()) is not None: s.report(port,
    await probe(port))``.  The known port is tried first (the server may
    simply be back), then the candidates in order, each once.  ``report``'s
    ``ok`` must mean *the same server* answered -- same kind and model --
    not merely that something listens, or an Ollama endpoint would "find"
    the llama-server next door.  A found port is where traffic goes only
    after the actor has re-probed it through the breaker's half-open path.
    """

    __slots__ = ("_current", "_found", "_order", "_pos", "_tried")

    def __init__(self, current: int, candidates: Iterable[int]) -> None:
        check_int("current", current, low=1, high=65535)
        order = [current]
        for p in candidates:
            check_int("candidates[]", p, low=1, high=65535)
            if p not in order:
                order.append(p)
            if len(order) > 64:
                raise InvalidParameter("too many candidate ports", field="candidates")
        self._current = current
        self._order = tuple(order)
        self._pos = 0
        self._tried: list[int] = []
        self._found: int | None = None

    @property
    def found(self) -> int | None:
        """The port the server answered on, once one did."""
        return self._found

    @property
    def moved(self) -> bool:
        """Whether the server was found on a port other than the known one."""
        return self._found is not None and self._found != self._current

    @property
    def done(self) -> bool:
        return self._found is not None or self._pos >= len(self._order)

    def next_port(self) -> int | None:
        """The port to probe next, or None when the round is over."""
        if self.done:
            return None
        return self._order[self._pos]

    def report(self, port: int, ok: bool) -> None:
        """The probe of ``port`` (the one :meth:`next_port` gave) answered ``ok``."""
        if self.done or port != self._order[self._pos]:
            raise InvalidParameter(f"port {port} was not the one to probe", field="port")
        self._tried.append(port)
        self._pos += 1
        if ok:
            self._found = port

    def statistics(self) -> PortSearchStatistics:
        return PortSearchStatistics(
            current=self._current,
            tried=tuple(self._tried),
            found=self._found,
            remaining=0 if self.done else len(self._order) - self._pos,
        )

    def __repr__(self) -> str:
        return (
            f"<PortSearch current={self._current} tried={self._tried}"
            f" found={self._found} remaining={len(self._order) - self._pos}>"
        )
