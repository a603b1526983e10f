"""OpenTelemetry spans per request, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import lmgate
from lmgate._endpoint import EndpointRef
from lmgate.observability._otel import OtelHook, RequestSpans
from lmgate.policies import Fixed

GPU = EndpointRef(
    name="gpu", url="http://user:pw@127.0.0.1:8080/v1?key=x", model="m", kind="llamacpp", local=True
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    yield exp
    exp.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    prov = TracerProvider()
    prov.add_span_processor(SimpleSpanProcessor(exporter))
    yield prov
    prov.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert len(set(names)) == len(names), names
    return {s.name: s for s in spans}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_completed_request_is_one_tree(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """request > queue, call; the caller's own spans nest under call; no error status."""
    hook = OtelHook(provider)
    user = provider.get_tracer("user")
    handle = hook.on_request_start(model="m", priority=2)
    hook.on_request_granted(handle, endpoint=GPU, queue_wait=0.25)
    with user.start_as_current_span("http.post"):
        pass
    hook.on_request_end(
        handle,
        endpoint="gpu",
        model="m",
        outcome="completed",
        queue_wait=0.25,
        duration=1.5,
        ttft=0.2,
    )
    spans = by_name(exporter)
    assert set(spans) == {"lmgate.request", "lmgate.queue", "lmgate.call", "http.post"}
    request, queue, call = spans["lmgate.request"], spans["lmgate.queue"], spans["lmgate.call"]
    assert request.context is not None
    assert call.context is not None
    assert parent_of(queue) == request.context.span_id
    assert parent_of(call) == request.context.span_id
    assert parent_of(spans["http.post"]) == call.context.span_id
    assert request.attributes is not None
    assert call.attributes is not None
    assert request.attributes["lmgate.model"] == "m"
    assert request.attributes["lmgate.priority"] == 2
    assert request.attributes["lmgate.outcome"] == "completed"
    assert call.attributes["lmgate.endpoint"] == "gpu"
    assert call.attributes["lmgate.endpoint.kind"] == "llamacpp"
    assert call.attributes["server.address"] == "127.0.0.1"
    assert call.attributes["server.port"] == 8080
    assert call.attributes["lmgate.duration"] == 1.5
    assert call.attributes["lmgate.ttft"] == 0.2
    assert queue.attributes is not None
    assert queue.attributes["lmgate.queue_wait"] == 0.25
    assert all(s.status.status_code is StatusCode.UNSET for s in spans.values())
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_request_refused_in_the_queue(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Refused before a grant: request and queue spans end as errors, no call span."""
    hook = OtelHook(provider)
    handle = hook.on_request_start(model="m", priority=0)
    hook.on_request_end(
        handle,
        endpoint=None,
        model="m",
        outcome="deadline_exceeded",
        queue_wait=3.0,
        duration=None,
    )
    spans = by_name(exporter)
    assert set(spans) == {"lmgate.request", "lmgate.queue"}
    for span in spans.values():
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "deadline_exceeded"
    assert repr(handle) == "<RequestSpans done>"


def test_a_failed_call_records_the_error_type_only(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The error's class is recorded; its message (which may hold a key) is not."""
    hook = OtelHook(provider)
    handle = hook.on_request_start(model="m", priority=0)
    hook.on_request_granted(handle, endpoint=GPU, queue_wait=0.0)
    hook.on_request_end(
        handle,
        endpoint="gpu",
        model="m",
        outcome="failed",
        queue_wait=0.0,
        duration=0.1,
        error=ValueError("Bearer sk-PLANTED"),
    )
    spans = by_name(exporter)
    call = spans["lmgate.call"]
    assert call.attributes is not None
    assert call.attributes["error.type"] == "ValueError"
    assert call.status.status_code is StatusCode.ERROR
    dumped = "".join(s.to_json() for s in spans.values())
    assert "sk-PLANTED" not in dumped
    assert "user:pw" not in dumped
    assert "key=x" not in dumped


@pytest.mark.anyio
async def test_concurrent_requests_keep_their_own_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Two interleaved requests in two tasks: each caller span nests under its own call."""
    hook = OtelHook(provider)
    user = provider.get_tracer("user")

    async def request(name: str, first: anyio.Event, second: anyio.Event) -> None:
        handle = hook.on_request_start(model=name, priority=0)
        hook.on_request_granted(handle, endpoint=GPU, queue_wait=0.0)
        first.set()
        await second.wait()
        with user.start_as_current_span(f"work-{name}"):
            await anyio.lowlevel.checkpoint()
        hook.on_request_end(
            handle, endpoint="gpu", model=name, outcome="completed", queue_wait=0, duration=0
        )

    a_in, b_in = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "a", a_in, b_in)
        await a_in.wait()
        go = anyio.Event()
        go.set()
        tg.start_soon(request, "b", b_in, go)
        await b_in.wait()
    spans = exporter.get_finished_spans()
    calls = {}
    for s in spans:
        if s.name == "lmgate.request":
            assert s.attributes is not None
            assert s.context is not None
            calls[s.context.span_id] = s.attributes["lmgate.model"]
    call_owner = {s.context.span_id: calls[parent_of(s)] for s in spans if s.name == "lmgate.call"}
    work = {s.name: call_owner[parent_of(s)] for s in spans if s.name.startswith("work-")}
    assert work == {"work-a": "a", "work-b": "b"}
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_without_an_sdk_every_call_is_a_cheap_no_op() -> None:
    """With the API's no-op provider, hooks run and record nothing."""
    hook = OtelHook(trace.NoOpTracerProvider())
    handle = hook.on_request_start(model="m", priority=0)
    assert isinstance(handle, RequestSpans)
    hook.on_request_granted(handle, endpoint=GPU, queue_wait=0.0)
    hook.on_request_end(
        handle, endpoint="gpu", model="m", outcome="completed", queue_wait=0.0, duration=0.0
    )
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert repr(hook) == "<OtelHook>"


def test_foreign_handles_are_ignored(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A handle from another hook (None) makes the methods no-ops."""
    hook = OtelHook(provider)
    hook.on_request_granted(None, endpoint=GPU, queue_wait=0.0)
    hook.on_request_end(
        None, endpoint=None, model="m", outcome="closed", queue_wait=0.0, duration=None
    )
    assert exporter.get_finished_spans() == ()


@pytest.mark.anyio
async def test_a_scheduler_emits_one_tree_per_request(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Through a real scheduler: queued calls too run under their own call span."""
    hook = OtelHook(provider)
    user = provider.get_tracer("user")
    gate = anyio.Event()
    after: dict[str, object] = {}

    async def call(lease: lmgate.Lease) -> None:
        await gate.wait()
        with user.start_as_current_span(f"work-{lease.priority}"):
            await anyio.lowlevel.checkpoint()
        if lease.priority == 2:
            raise ValueError("the call failed")

    async def client(sched: lmgate.Scheduler, priority: int) -> None:
        with contextlib.suppress(ValueError):
            await sched.run(call, model="m", priority=priority)
        after[f"current-{priority}"] = trace.get_current_span()

    ep = lmgate.Endpoint("gpu", url="http://10.0.0.1:8080", models=["m"])
    async with lmgate.Scheduler([ep], limit=Fixed(1), hooks=[hook]) as sched:
        async with anyio.create_task_group() as tg:
            for priority in (1, 2, 3):
                tg.start_soon(client, sched, priority)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        with pytest.raises(lmgate.EndpointUnavailable):
            await sched.run(call, model="unknown")
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    requests = [s for s in spans if s.name == "lmgate.request"]
    assert len(requests) == 3  # the unknown model is bad input, refused before any span
    for priority in (1, 2, 3):
        (work,) = [s for s in spans if s.name == f"work-{priority}"]
        call_span = by_id[parent_of(work)]  # type: ignore[index]
        assert call_span.name == "lmgate.call"
        request = by_id[parent_of(call_span)]  # type: ignore[index]
        assert request.attributes is not None
        assert request.attributes["lmgate.priority"] == priority
        outcome = "failed" if priority == 2 else "completed"
        assert request.attributes["lmgate.outcome"] == outcome
        assert after[f"current-{priority}"] is trace.INVALID_SPAN
    assert not [s for s in requests if s.attributes and s.attributes["lmgate.model"] == "unknown"]
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert all(s.end_time is not None for s in spans)


def test_an_end_from_another_task_restores_the_caller_context_later(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Ended elsewhere, spans end at once; the caller's context is restored at its next start."""
    hook = OtelHook(provider)
    handle = hook.on_request_start(model="m", priority=0)
    hook.on_request_granted(handle, endpoint=GPU, queue_wait=0.0)
    assert trace.get_current_span() is handle.call
    contextvars.copy_context().run(
        hook.on_request_end,
        handle,
        endpoint="gpu",
        model="m",
        outcome="closed",
        queue_wait=0.0,
        duration=1.0,
    )
    assert {s.name for s in exporter.get_finished_spans()} == {
        "lmgate.request",
        "lmgate.queue",
        "lmgate.call",
    }
    assert trace.get_current_span() is not trace.INVALID_SPAN  # not ours to touch from there
    nxt = hook.on_request_start(model="m", priority=0)
    assert trace.get_current_span() is trace.INVALID_SPAN
    hook.on_request_end(
        nxt, endpoint=None, model="m", outcome="rejected", queue_wait=0.0, duration=None
    )
