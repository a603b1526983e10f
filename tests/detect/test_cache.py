"""The probe cache as a state machine: bounded, time-limited, invalidatable."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate.detect import Locality, ProbeCache, ServerInfo

URLS = st.sampled_from(["http://a:1", "http://a:1/", "HTTP://A:1", "http://b:2", "http://c:3/v1"])
MODELS = st.sampled_from([None, "m1", "m2"])
TTL, SIZE = 10.0, 4


def info(url: str) -> ServerInfo:
    return ServerInfo(
        url=url, kind="unknown", local=True, locality=Locality.LOOPBACK, reason="", reachable=True
    )


def norm(url: str) -> str:
    return url.strip().rstrip("/").lower()


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cache = ProbeCache(ttl=TTL, maxsize=SIZE)
        self.now = 1000.0
        self.model: dict[tuple[str, str | None], tuple[float, ServerInfo]] = {}

    @rule(url=URLS, model=MODELS)
    def put(self, url: str, model: str | None) -> None:
        value = info(url)
        self.cache.put(url, model, value, self.now)
        self.model[(norm(url), model)] = (self.now, value)

    @rule(url=URLS, model=MODELS)
    def get(self, url: str, model: str | None) -> None:
        got = self.cache.get(url, model, self.now)
        stored = self.model.get((norm(url), model))
        if got is not None:
            assert stored is not None
            assert got is stored[1]
            assert self.now - stored[0] < TTL
        elif stored is not None and self.now - stored[0] >= TTL:
            del self.model[(norm(url), model)]

    @rule(url=URLS)
    def invalidate(self, url: str) -> None:
        self.cache.invalidate(url)
        for key in [k for k in self.model if k[0] == norm(url)]:
            del self.model[key]
        for model in (None, "m1", "m2"):
            assert self.cache.get(url, model, self.now) is None

    @rule(dt=st.floats(min_value=0.0, max_value=15.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def clock_from_another_loop(self) -> None:
        """An entry from a later clock reading is treated as expired."""
        self.cache.put("http://z:9", None, info("http://z:9"), self.now + 50.0)
        assert self.cache.get("http://z:9", None, self.now) is None

    @invariant()
    def bounded(self) -> None:
        assert self.cache.statistics().entries <= SIZE


TestProbeCache = CacheMachine.TestCase
TestProbeCache.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
