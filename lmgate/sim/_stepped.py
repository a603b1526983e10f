"""Server models that step like the real engines: vLLM, llama.cpp's server, Ollama.

Written from each server's documented behaviour, independently of
:class:`~lmgate.sim.SimServer`'s closed-form engine, so the overload
benchmark can check lmgate against shapes its policies were not tuned on:

* **vLLM** (``VLLMConfig``): continuous batching.  Each step schedules at
  most ``max_num_batched_tokens`` tokens -- one per decoding sequence, the
  rest prompt chunks (chunked prefill) -- over at most ``max_num_seqs``
  sequences.  The KV cache is ``kv_blocks`` blocks of ``block_size``
  tokens; a sequence is admitted when its prompt's blocks fit, and when a
  decoding sequence needs a block that is not there, the most recently
  admitted one is preempted and recomputed later (its blocks freed, its
  whole context prefilled again), as vLLM's recompute preemption does.
* **llama.cpp** (``LlamaCppConfig``): ``parallel`` slots each with
  ``n_ctx / parallel`` tokens of context; no preemption; requests wait in
  the server's queue for a slot; a prompt longer than a slot's context is a
  400, and generation stops when the slot is full; 503 while loading.
* **Ollama** (``OllamaConfig``): llama.cpp underneath with
  ``OLLAMA_NUM_PARALLEL`` slots and ``OLLAMA_MAX_QUEUE`` waiting requests;
  one more is refused with 503 "server busy".

A step lasts ``base_step + token_cost * tokens_in_step + kv_cost *
kv_tokens`` seconds divided by the speed factor, so batching amortises the
fixed cost while bigger batches and longer contexts slow every step.  No
background task: the request that finds the engine idle drives it, and
hands driving to another when its own request ends.
"""

from __future__ import annotations

import math
import random
from typing import Any, final

import anyio
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import ContextOverflow, Overloaded
from lmgate._validate import check_float, check_int
from lmgate.sim._dist import Dist
from lmgate.sim._metrics import metrics_text

__all__ = ["LlamaCppConfig", "OllamaConfig", "StepStatistics", "SteppedServer", "VLLMConfig"]


class _Common(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    name: str = "sim"
    model: str = "sim-model"
    port: int = 8000
    base_step: float = 0.015
    token_cost: float = 0.00004
    kv_cost: float = 0.0000005
    prompt_tokens: Dist = Dist.fixed(200)
    output_tokens: Dist = Dist.fixed(100)
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("port", self.port, low=1, high=65535)
        check_float("base_step", self.base_step, low=0.0, low_open=True)
        check_float("token_cost", self.token_cost)
        check_float("kv_cost", self.kv_cost)


@final
class VLLMConfig(_Common, frozen=True, tag="vllm"):
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_blocks: int = 2048
    max_model_len: int = 8192


@final
class LlamaCppConfig(_Common, frozen=True, tag="llamacpp"):
    parallel: int = 4
    n_ctx: int = 16384
    n_batch: int = 2048


@final
class OllamaConfig(_Common, frozen=True, tag="ollama"):
    num_parallel: int = 4
    max_queue: int = 512
    n_ctx: int = 8192
    n_batch: int = 512


EngineConfig = VLLMConfig | LlamaCppConfig | OllamaConfig


@final
class StepStatistics(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    port: int
    model: str
    digest: str
    running: int
    waiting: int
    completed: int
    preemptions: int
    refused: int
    peak_running: int


class _Seq:
    """One request: ``context`` tokens to prefill (the prompt, plus what it had
    written when a preemption threw its cache away), ``kv`` tokens cached."""

    __slots__ = ("context", "done", "error", "event", "kv", "output", "prompt", "written")

    def __init__(self, prompt: int, output: int) -> None:
        self.prompt = prompt
        self.context = prompt
        self.output = output
        self.written = 0
        self.kv = 0
        self.done = False
        self.error: BaseException | None = None
        self.event = anyio.Event()


@final
class SteppedServer:
    """One simulated server of ``config``'s kind; ``await serve(lease)`` is one request."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._speed = 1.0
        self._loading_until = -math.inf
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []
        self._driver: _Seq | None = None
        self._admissions = 0
        self.completed = self.preemptions = self.refused = self.peak_running = 0
        if isinstance(config, VLLMConfig):
            self._max_seqs, self._budget = config.max_num_seqs, config.max_num_batched_tokens
            self._window = config.max_model_len
        elif isinstance(config, LlamaCppConfig):
            self._max_seqs, self._budget = config.parallel, config.n_batch
            self._window = config.n_ctx // config.parallel
        else:
            self._max_seqs, self._budget = config.num_parallel, config.n_batch
            self._window = config.n_ctx

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def endpoint(self, **kwargs: Any) -> Endpoint:
        kwargs.setdefault("models", [self.model])
        kwargs.setdefault("kind", "sim")
        kwargs.setdefault("local", True)
        kwargs.setdefault("context_window", self._window)
        kwargs.setdefault("kv_tokens", self.kv_tokens)
        return Endpoint(self.config.name, url=self.url, **kwargs)

    @property
    def kv_tokens(self) -> int:
        """The most prompt + output tokens the engine holds at once, as the real
        server tells it (vLLM: blocks times block size; llama.cpp: ``n_ctx``)."""
        cfg = self.config
        if isinstance(cfg, VLLMConfig):
            return cfg.kv_blocks * cfg.block_size
        if isinstance(cfg, LlamaCppConfig):
            return cfg.n_ctx
        return cfg.n_ctx * cfg.num_parallel

    # -- faults -----------------------------------------------------------------

    def set_capacity(self, factor: float) -> None:
        self._speed = max(1e-6, float(factor))

    def slow_tokens(self, factor: float) -> None:
        self._speed = 1.0 / max(1e-6, float(factor))

    def start_loading(self, seconds: float) -> None:
        self._loading_until = anyio.current_time() + seconds

    # -- serving ----------------------------------------------------------------

    async def serve(
        self, lease: Any, *, prompt_tokens: int | None = None, output_tokens: int | None = None
    ) -> int:
        cfg = self.config
        prompt = prompt_tokens or cfg.prompt_tokens.sample_int(self._rng)
        output = output_tokens or cfg.output_tokens.sample_int(self._rng)
        await anyio.lowlevel.checkpoint()
        if anyio.current_time() < self._loading_until:
            self.refused += 1
            raise Overloaded("loading model", status=503)
        if prompt + (1 if isinstance(cfg, VLLMConfig) else 0) > self._window:
            self.refused += 1
            raise ContextOverflow(
                "the request exceeds the available context size", tokens=prompt, window=self._window
            )
        if isinstance(cfg, OllamaConfig) and len(self._waiting) >= cfg.max_queue:
            self.refused += 1
            raise Overloaded(
                "server busy, please try again.  maximum pending requests exceeded", status=503
            )
        if isinstance(cfg, VLLMConfig):
            output = min(output, self._window - prompt)
        seq = _Seq(prompt, output)
        self._waiting.append(seq)
        try:
            while not seq.done:
                if self._driver is None:
                    self._driver = seq
                    await self._drive(seq)
                else:
                    await seq.event.wait()
                    seq.event = anyio.Event()
        finally:
            self._leave(seq)
        if seq.error is not None:
            raise seq.error
        lease.report(prompt_tokens=prompt, output_tokens=seq.output)
        return seq.output

    def _leave(self, seq: _Seq) -> None:
        if seq in self._running:
            self._running.remove(seq)
        elif seq in self._waiting:
            self._waiting.remove(seq)
        if self._driver is seq:
            self._driver = None
            rest = self._running or self._waiting
            if rest:
                rest[0].event.set()  # it takes over driving

    async def _drive(self, mine: _Seq) -> None:
        """Run steps until ``mine`` is done; others are woken as they finish."""
        while not mine.done:
            tokens, finished = self._schedule()
            if tokens == 0:
                # Nothing schedulable (mine waits for room that never frees): give up.
                mine.error = Overloaded("no room in the KV cache", status=503)
                mine.done = True
                return
            kv = sum(s.kv for s in self._running)
            cfg = self.config
            step = (cfg.base_step + cfg.token_cost * tokens + cfg.kv_cost * kv) / self._speed
            await anyio.sleep(step)
            for seq in finished():
                if seq not in self._running:
                    continue  # its caller gave up during the step: it already left
                seq.done = True
                self.completed += 1
                self._running.remove(seq)
                if seq is not mine:
                    seq.event.set()

    def _schedule(self) -> tuple[int, Any]:
        """Plan one step: admit, preempt, share the token budget; returns its size."""
        self._admit()
        decoding = [s for s in self._running if s.kv >= s.context]
        if isinstance(self.config, VLLMConfig):
            decoding = self._make_room(decoding)
        budget = self._budget - len(decoding)
        chunks: list[tuple[_Seq, int]] = []
        for s in self._running:
            if s.kv < s.context and budget > 0:
                take = min(s.context - s.kv, budget)
                chunks.append((s, take))
                budget -= take
        tokens = len(decoding) + sum(t for _, t in chunks)
        self.peak_running = max(self.peak_running, len(self._running))

        def finished() -> list[_Seq]:
            out = []
            for s in decoding:
                s.kv += 1
                s.written += 1
                if s.written >= s.output or self._full(s):
                    s.output = s.written
                    out.append(s)
            for s, take in chunks:
                s.kv += take
            return out

        return tokens, finished

    def _full(self, s: _Seq) -> bool:
        return not isinstance(self.config, VLLMConfig) and s.kv >= self._window

    def _blocks(self, tokens: int) -> int:
        assert isinstance(self.config, VLLMConfig)
        return -(-tokens // self.config.block_size)

    def _free_blocks(self) -> int:
        assert isinstance(self.config, VLLMConfig)
        used = sum(self._blocks(s.kv) for s in self._running)
        return self.config.kv_blocks - used

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self._max_seqs:
            seq = self._waiting[0]
            if isinstance(self.config, VLLMConfig):
                need = self._blocks(seq.context)
                if need > self._free_blocks() - self.config.kv_blocks // 100:
                    return
            self._waiting.pop(0)
            self._running.append(seq)

    def _make_room(self, decoding: list[_Seq]) -> list[_Seq]:
        """vLLM: a decoding sequence that needs a new block preempts the newest."""
        cfg = self.config
        assert isinstance(cfg, VLLMConfig)
        needed = sum(1 for s in decoding if s.kv % cfg.block_size == 0)
        while needed > self._free_blocks() and len(self._running) > 1:
            victim = self._running.pop()
            self.preemptions += 1
            if victim in decoding:
                decoding.remove(victim)
                if victim.kv % cfg.block_size == 0:
                    needed -= 1
            # Recompute: what it has written is prefilled again when it returns.
            victim.context = victim.prompt + victim.written
            victim.kv = 0
            self._waiting.insert(0, victim)
        return decoding

    async def metrics(self) -> str:
        """The server's ``/metrics`` text, as vLLM or llama.cpp publish it.

        Ollama publishes none: an empty text, which reads as no metrics.
        """
        await anyio.lowlevel.checkpoint()
        cfg = self.config
        if isinstance(cfg, OllamaConfig):
            return ""
        if isinstance(cfg, VLLMConfig):
            used = sum(self._blocks(s.kv) for s in self._running) / cfg.kv_blocks
        else:
            used = sum(s.kv for s in self._running) / cfg.n_ctx
        return metrics_text(
            "vllm" if isinstance(cfg, VLLMConfig) else "llamacpp",
            model=cfg.model,
            running=len(self._running),
            waiting=len(self._waiting),
            kv_usage=used,
            preemptions=self.preemptions,
        )

    def statistics(self) -> StepStatistics:
        now = anyio.current_time()
        return StepStatistics(
            state="loading" if now < self._loading_until else "ready",
            port=self.config.port,
            model=self.config.model,
            digest="sha256:0000",
            running=len(self._running),
            waiting=len(self._waiting),
            completed=self.completed,
            preemptions=self.preemptions,
            refused=self.refused,
            peak_running=self.peak_running,
        )

    def __repr__(self) -> str:
        kind = type(self.config).__name__.removesuffix("Config").lower()
        return f"<SteppedServer {kind} {self.config.name} running={len(self._running)}>"
