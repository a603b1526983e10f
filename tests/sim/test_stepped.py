"""The vLLM-, llama.cpp- and Ollama-shaped server models: their documented limits hold."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from lmgate import ContextOverflow, Overloaded
from lmgate.sim._dist import Dist
from lmgate.sim._stepped import LlamaCppConfig, OllamaConfig, SteppedServer, VLLMConfig


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Both backends, in virtual time."""
    return virtual_backends


class _Lease:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, **kw: Any) -> None:
        self.reports.append(kw)


async def _many(server: SteppedServer, n: int, **kw: Any) -> list[object]:
    out: list[object] = []

    async def one() -> None:
        try:
            out.append(await server.serve(_Lease(), **kw))
        except Exception as exc:
            out.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return out


@pytest.mark.anyio
async def test_llamacpp_runs_parallel_slots_and_queues_the_rest(
    anyio_backend: Any,
) -> None:
    server = SteppedServer(LlamaCppConfig(parallel=2, n_ctx=4096))
    start = anyio.current_time()
    done = await _many(server, 6, prompt_tokens=100, output_tokens=20)
    assert done == [20] * 6
    assert server.statistics().peak_running == 2
    assert anyio.current_time() > start


@pytest.mark.anyio
async def test_llamacpp_refuses_a_prompt_over_a_slot_and_stops_at_a_full_slot(
    anyio_backend: Any,
) -> None:
    server = SteppedServer(LlamaCppConfig(parallel=4, n_ctx=1024))  # 256 per slot
    with pytest.raises(ContextOverflow):
        await server.serve(_Lease(), prompt_tokens=300, output_tokens=1)
    written = await server.serve(_Lease(), prompt_tokens=200, output_tokens=500)
    assert written == 56  # the slot's 256 tokens are full


@pytest.mark.anyio
async def test_ollama_says_server_busy_past_its_queue(
    anyio_backend: Any,
) -> None:
    server = SteppedServer(OllamaConfig(num_parallel=1, max_queue=2))
    done = await _many(server, 6, prompt_tokens=50, output_tokens=50)
    busy = [d for d in done if isinstance(d, Overloaded)]
    assert len(busy) == 3  # 1 running, 2 waiting, the rest refused
    assert all(b.status == 503 for b in busy)


@pytest.mark.anyio
async def test_vllm_preempts_when_the_kv_cache_fills_and_finishes_everything(
    anyio_backend: Any,
) -> None:
    config = VLLMConfig(kv_blocks=64, block_size=16, max_num_seqs=16, max_model_len=2048)
    server = SteppedServer(config)
    done = await _many(server, 8, prompt_tokens=64, output_tokens=200)
    assert done == [200] * 8
    assert server.statistics().preemptions > 0


@pytest.mark.anyio
async def test_bigger_batches_make_each_step_slower_and_throughput_higher(
    anyio_backend: Any,
) -> None:
    async def timed(n: int) -> float:
        server = SteppedServer(VLLMConfig(output_tokens=Dist.fixed(100)))
        start = anyio.current_time()
        await _many(server, n, prompt_tokens=100)
        return anyio.current_time() - start

    one, sixteen = await timed(1), await timed(16)
    assert one < sixteen < 16 * one


@pytest.mark.anyio
async def test_a_cancelled_request_frees_its_place(anyio_backend: Any) -> None:
    server = SteppedServer(LlamaCppConfig(parallel=1))
    with anyio.move_on_after(0.05):
        await server.serve(_Lease(), prompt_tokens=10, output_tokens=10_000)
    assert server.statistics().running == 0
    assert await server.serve(_Lease(), prompt_tokens=10, output_tokens=3) == 3


@pytest.mark.anyio
async def test_a_caller_leaving_during_its_last_step_does_not_break_the_others(
    anyio_backend: Any,
) -> None:
    """The step that would finish a request whose caller just gave up goes on for the rest."""

    async def pair(cancel_after: float) -> tuple[list[object], float]:
        server = SteppedServer(VLLMConfig())
        start = anyio.current_time()
        results: list[object] = []
        left = start

        async def long() -> None:
            results.extend(await _many(server, 1, prompt_tokens=10, output_tokens=100))

        async def short() -> None:
            nonlocal left
            with anyio.move_on_after(cancel_after):
                await server.serve(_Lease(), prompt_tokens=10, output_tokens=10)
            left = anyio.current_time()

        async with anyio.create_task_group() as tg:
            tg.start_soon(long)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(short)
        return results, left - start

    _, finish = await pair(1e9)
    results, _ = await pair(finish * 0.999)  # its caller leaves inside its last step
    assert results == [100]
