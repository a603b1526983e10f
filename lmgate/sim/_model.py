"""An in-process simulated model server that serves a lease.

``SimServer`` is the ``call`` of ``Scheduler.run()``: awaiting it with a
lease behaves like one request to a continuous-batching server -- it waits
for a slot, prefills, writes tokens at the speed the current batch allows,
reports its token counts to the lease and returns.  It reads time only
through anyio and draws only from its own seeded generator, so under trio's
``MockClock(autojump_threshold=0)`` an hour of traffic replays the same way
in seconds.

Faults are methods that a test or a :class:`~lmgate.sim.FaultSchedule`
calls while traffic runs; they change what the next request (and, for a
crash, hang or speed change, every request in flight) experiences.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal, Protocol, final
from urllib.parse import urlsplit

import anyio
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import ContextOverflow, InvalidParameter, Overloaded
from lmgate._validate import check_float, check_int
from lmgate.sim._config import SimConfig, SimKVOverflow, SimResult, SimStatistics
from lmgate.sim._engine import ACTIVE, DONE, QUEUED, Engine, Seq
from lmgate.sim._metrics import metrics_text

__all__ = ["SimLease", "SimServer"]

_FAILURES = (
    "refused",
    "reset",
    "queue_full",
    "rate_limited",
    "loading",
    "context_overflow",
    "kv_overflow",
    "cancelled",
)


class SimLease(Protocol):
    """What the simulator needs from a lease: somewhere to report sizes.

    If the lease also has ``endpoint.url``, a request whose URL names a port
    other than the server's current one is refused, as a moved server would.
    """

    def report(
        self,
        *,
        ttft: float | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None: ...


@final
class SimServer:
    """A continuous-batching model server, simulated in the caller's tasks.

    Build it from a :class:`SimConfig` or from its fields as keywords (both:
    the keywords override the config).  Requests that arrive in the same
    instant reach the server in the order the event loop runs their tasks.
    Errors are those a client of a real server would map them to:
    :class:`~lmgate.Overloaded` (429/503), ``ConnectionRefusedError`` when
    crashed or addressed at an old port, ``ConnectionResetError`` for
    requests in flight when it crashes, :class:`~lmgate.ContextOverflow`
    and :class:`SimKVOverflow` (a 500).
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = SimConfig(**overrides)
        elif not isinstance(config, SimConfig):
            raise InvalidParameter("config must be a SimConfig", field="config")
        elif overrides:
            config = msgspec.structs.replace(config, **overrides)
        self.config = config
        self.port = config.port
        self.model = config.model
        self.digest = config.digest
        self._rng = random.Random(config.seed)
        self._capacity = 1.0
        self._slow = 1.0
        self._engine = self._new_engine()
        self._crashed = False
        self._hung = False
        self._unhung: anyio.Event | None = None
        self._hung_waiting = 0
        self._generation = 0
        self._loading_until = -math.inf
        self._limited_until = -math.inf
        self._limit_retry_after: float | None = None
        self._served = 0
        self._failed = dict.fromkeys(_FAILURES, 0)
        self._restarts = 0
        self._peak_active = 0
        self._peak_queued = 0
        self._ports: dict[str, int | None] = {}

    @property
    def url(self) -> str:
        """The base URL a client would use now (it moves with the port)."""
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, **kwargs: Any) -> Endpoint:
        """An :class:`~lmgate.Endpoint` describing this server as it is now."""
        kwargs.setdefault("models", [self.model])
        kwargs.setdefault("kind", "sim")
        kwargs.setdefault("local", True)
        kwargs.setdefault("context_window", self.config.context_window)
        return Endpoint(self.config.name, url=self.url, **kwargs)

    # -- serving -------------------------------------------------------------

    async def __call__(self, lease: SimLease) -> SimResult:
        """Serve one request with sizes drawn from the configured distributions."""
        return await self.serve(lease)

    async def serve(
        self,
        lease: SimLease,
        *,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> SimResult:
        """Serve one request; sizes not given are drawn from the config."""
        cfg = self.config
        if prompt_tokens is not None:
            check_int("prompt_tokens", prompt_tokens, low=1)
        if output_tokens is not None:
            check_int("output_tokens", output_tokens, low=1)
        self._check_reachable(lease)
        start = anyio.current_time()
        generation = self._generation
        while self._hung:
            await self._wait_unhung(generation)
        now = anyio.current_time()
        if now < self._loading_until:
            self._failed["loading"] += 1
            raise Overloaded("loading model", status=503)
        if now < self._limited_until:
            self._failed["rate_limited"] += 1
            raise Overloaded("rate limited", status=429, retry_after=self._limit_retry_after)
        prompt = cfg.prompt_tokens.sample_int(self._rng) if prompt_tokens is None else prompt_tokens
        output = cfg.output_tokens.sample_int(self._rng) if output_tokens is None else output_tokens
        window = cfg.context_window
        if prompt >= window:
            self._failed["context_overflow"] += 1
            raise ContextOverflow(
                f"prompt of {prompt} tokens leaves no room in a {window}-token context",
                tokens=prompt,
                window=window,
            )
        finish: Literal["stop", "length"] = "stop"
        if prompt + output > window:
            output, finish = window - prompt, "length"
        engine = self._engine
        seq = Seq(prompt, output, anyio.Event())
        admitted = engine.arrive(seq, now)
        self._peak()
        if admitted == "full":
            self._failed["queue_full"] += 1
            raise Overloaded(
                "server queue full",
                status=cfg.queue_full_status,
                retry_after=cfg.queue_full_retry_after,
            )
        if admitted == "too_large":
            self._failed["kv_overflow"] += 1
            raise SimKVOverflow(
                f"prompt of {prompt} tokens exceeds the KV cache of {engine.kv_budget}",
                tokens=prompt,
                budget=engine.kv_budget,
            )
        try:
            await _wait(engine, seq)
        except BaseException:
            # Only a cancellation gets here; the sequence may have ended in
            # the same instant, in which case there is nothing to free.
            if seq.state in (QUEUED, ACTIVE):
                engine.remove(seq, anyio.current_time())
            self._failed["cancelled"] += 1
            raise
        self._peak()
        if seq.state != DONE:
            self._failed[seq.error] += 1
            if seq.error == "reset":
                raise ConnectionResetError("connection reset: simulated server crashed")
            raise SimKVOverflow(
                "KV cache overflowed while generating",
                tokens=seq.prompt + seq.output,
                budget=engine.kv_budget,
            )
        end = anyio.current_time()
        first = seq.first_at if seq.first_at is not None else end
        admitted_at = seq.admitted_at if seq.admitted_at is not None else now
        result = SimResult(
            prompt_tokens=prompt,
            output_tokens=output,
            ttft=first - start,
            duration=end - start,
            queued=admitted_at - now,
            preemptions=seq.preemptions,
            finish_reason=finish,
            model=self.model,
            digest=self.digest,
        )
        self._served += 1
        lease.report(ttft=result.ttft, prompt_tokens=prompt, output_tokens=output)
        return result

    def _check_reachable(self, lease: SimLease) -> None:
        url = getattr(getattr(lease, "endpoint", None), "url", None)
        if isinstance(url, str):
            port = self._ports.get(url, -1)
            if port == -1:
                if len(self._ports) > 64:
                    self._ports.clear()
                try:
                    port = urlsplit(url).port
                except ValueError:
                    port = None
                self._ports[url] = port
            if port is not None and port != self.port:
                self._failed["refused"] += 1
                raise ConnectionRefusedError(f"connection refused: nothing listens on port {port}")
        if self._crashed:
            self._failed["refused"] += 1
            raise ConnectionRefusedError("connection refused: simulated server is down")

    async def _wait_unhung(self, generation: int) -> None:
        if self._unhung is None:
            self._unhung = anyio.Event()
        self._hung_waiting += 1
        try:
            await self._unhung.wait()
        except BaseException:
            self._failed["cancelled"] += 1
            raise
        finally:
            self._hung_waiting -= 1
        if generation != self._generation:
            self._failed["reset"] += 1
            raise ConnectionResetError("connection reset: simulated server crashed")

    def _peak(self) -> None:
        engine = self._engine
        self._peak_active = max(self._peak_active, engine.peak_active)
        self._peak_queued = max(self._peak_queued, engine.peak_queued)

    def _new_engine(self) -> Engine:
        cfg = self.config
        return Engine(
            slots=cfg.slots,
            base_step=cfg.base_step,
            knee=cfg.knee,
            slope_below=cfg.slope_below,
            slope_above=cfg.slope_above,
            prefill_per_token=cfg.prefill_per_token,
            kv_budget=cfg.kv_budget,
            preempt=cfg.kv_overflow == "preempt",
            max_queue=cfg.max_queue,
            now=0.0,
            speed=self._capacity / self._slow,
        )

    # -- faults ----------------------------------------------------------------

    def crash(self) -> None:
        """Die now: requests in flight get a reset, new ones a refusal."""
        if self._crashed:
            return
        self._crashed = True
        self._hung = False
        self._generation += 1
        self._peak()
        engine = self._engine
        engine.fail_all("reset")
        if self._unhung is not None:
            self._unhung.set()
            self._unhung = None

    def restart(self, port: int | None = None) -> None:
        """Come back (on ``port`` if given), empty, after crashing if still up."""
        if port is not None:
            check_int("port", port, low=1, high=65535)
        self.crash()
        self._crashed = False
        self._loading_until = -math.inf
        self._limited_until = -math.inf
        self._engine = self._new_engine()
        self._restarts += 1
        if port is not None:
            self.port = port

    def hang(self) -> None:
        """Become a black hole: accept, never answer; in-flight work stalls."""
        if self._hung or self._crashed:
            return
        self._hung = True
        self._engine.set_speed(0.0, anyio.current_time())

    def unhang(self) -> None:
        """Answer again: stalled requests resume where they were."""
        if not self._hung:
            return
        self._hung = False
        self._apply_speed()
        if self._unhung is not None:
            self._unhung.set()
            self._unhung = None

    def start_loading(self, seconds: float) -> None:
        """Answer 503 "loading model" to new requests for ``seconds``."""
        check_float("seconds", seconds)
        self._loading_until = anyio.current_time() + seconds

    def rate_limit(self, seconds: float, retry_after: float | None = None) -> None:
        """Answer 429 (with ``retry_after`` if given) to new requests for ``seconds``."""
        check_float("seconds", seconds)
        if retry_after is not None:
            check_float("retry_after", retry_after)
        self._limited_until = anyio.current_time() + seconds
        self._limit_retry_after = retry_after

    def slow_tokens(self, factor: float) -> None:
        """Make every step ``factor`` times longer (1 restores the speed)."""
        self._slow = check_float("factor", factor, low=0.0, low_open=True)
        self._apply_speed()

    def set_capacity(self, factor: float) -> None:
        """Scale throughput by ``factor`` (0.5 halves it), as a shared GPU would."""
        self._capacity = check_float("factor", factor, low=0.0, low_open=True)
        self._apply_speed()

    def swap_model(self, digest: str, *, model: str | None = None) -> None:
        """Replace the weights: the digest changes, the name stays unless given."""
        if not isinstance(digest, str) or not digest:
            raise InvalidParameter("digest must be a non-empty string", field="digest")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidParameter("model must be a non-empty string", field="model")
        self.digest = digest
        if model is not None:
            self.model = model

    def _apply_speed(self) -> None:
        if not self._hung and not self._crashed:
            self._engine.set_speed(self._capacity / self._slow, anyio.current_time())

    # -- introspection -----------------------------------------------------------

    def statistics(self) -> SimStatistics:
        engine = self._engine
        self._peak()
        try:
            now = anyio.current_time()
        except RuntimeError:  # outside an event loop: time-limited faults read as over
            now = math.inf
        return SimStatistics(
            name=self.config.name,
            state=self._state(now),
            port=self.port,
            model=self.model,
            digest=self.digest,
            active=len(engine.active),
            queued=len(engine.queue),
            hung_waiting=self._hung_waiting,
            peak_active=self._peak_active,
            peak_queued=self._peak_queued,
            served=self._served,
            failed=dict(self._failed),
            preempted=engine.preempted,
            kv_used=round(engine.kv_used(now)),
            kv_peak=round(engine.kv_peak),
            kv_budget=engine.kv_budget,
            step_time=engine.step_time(),
            speed=0.0 if self._hung or self._crashed else self._capacity / self._slow,
            tokens_out=engine.tokens_out,
            restarts=self._restarts,
        )

    async def metrics(self) -> str:
        """The server's ``/metrics`` text, in vLLM's names (it batches and
        preempts as vLLM does); a crashed server refuses, a hung one never answers."""
        await anyio.lowlevel.checkpoint()
        if self._crashed:
            raise ConnectionRefusedError(111, "connection refused")
        if self._hung:
            await anyio.sleep_forever()
        engine = self._engine
        now = anyio.current_time()
        return metrics_text(
            "vllm",
            model=self.model,
            running=len(engine.active),
            waiting=len(engine.queue),
            kv_usage=min(1.0, engine.kv_used(now) / engine.kv_budget),
            preemptions=engine.preempted,
        )

    def _state(self, now: float) -> Any:
        if self._crashed:
            return "crashed"
        if self._hung:
            return "hung"
        if now < self._loading_until:
            return "loading"
        if now < self._limited_until:
            return "rate_limited"
        return "up"

    def __repr__(self) -> str:
        engine = self._engine
        state = "crashed" if self._crashed else "hung" if self._hung else "up"
        return (
            f"<SimServer {self.config.name!r} {state} port={self.port} model={self.model!r}"
            f" active={len(engine.active)}/{engine.slots} queued={len(engine.queue)}>"
        )


async def _wait(engine: Engine, seq: Seq) -> None:
    """Wait until the engine finishes ``seq``; keep its clock while holding it."""
    while seq.state == QUEUED or seq.state == ACTIVE:
        wake = seq.wake = anyio.Event()
        if engine.holder is seq:
            with anyio.move_on_at(engine.next_time()):
                await wake.wait()
            engine.advance(anyio.current_time())
        else:
            await wake.wait()
