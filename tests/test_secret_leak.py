"""A planted API key never shows in repr, stats, events, logs, metrics, spans or errors."""

from __future__ import annotations

import logging
import os
import secrets
import traceback
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import lmgate
from lmgate.otel import OtelHook
from lmgate.policies import Fixed
from lmgate.prometheus import instrument
from lmgate.security._secrets import resolve_api_key
from lmgate.transports import ClientPool, openai_chat

ENV = "LMGATE_LEAK_TEST_KEY"
ENV_KEY = "sk-envPLANTED" + secrets.token_hex(12)
CALLABLE_KEY = "sk-fnPLANTED" + secrets.token_hex(12)
KEYS = (ENV_KEY, CALLABLE_KEY)

CHAT = {
    "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def key_from_vault() -> str:
    return CALLABLE_KEY


def failing_vault() -> str:
    raise RuntimeError(f"vault refused token {CALLABLE_KEY}")


class Server:
    """A mock OpenAI-compatible server: checks the key, then answers in turn."""

    def __init__(self) -> None:
        self.n = 0
        self.authorized = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.n += 1
        sent = request.headers.get("authorization", "")
        if sent.removeprefix("Bearer ") in KEYS:
            self.authorized += 1
        match self.n % 5:
            case 1:
                return httpx.Response(500, json={"error": {"message": "internal error"}})
            case 2:
                return httpx.Response(
                    429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}}
                )
            case 3:
                raise httpx.ConnectError("connection refused", request=request)
            case _:
                return httpx.Response(200, json=CHAT)


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, ENV_KEY)


def texts_of_exception(exc: BaseException) -> list[str]:
    return ["".join(traceback.format_exception(exc)), str(exc), repr(exc)]


@pytest.mark.anyio
async def test_a_planted_key_appears_nowhere(
    planted: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys reach the server, and no text lmgate produces contains them."""
    caplog.set_level(logging.DEBUG)
    server = Server()
    endpoints = [
        lmgate.Endpoint("env", url="http://127.0.0.1:1/v1", models=["m"], api_key_env=ENV),
        lmgate.Endpoint("fn", url="http://127.0.0.1:2/v1", models=["m"], api_key=key_from_vault),
    ]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    texts: list[str] = []
    errors: list[BaseException] = []
    leases: list[lmgate.Lease] = []
    events: list[lmgate.events.Event] = []

    pool = ClientPool(endpoints, transport=lambda ep: httpx.MockTransport(server))
    sched = lmgate.Scheduler(
        endpoints,
        limit=Fixed(2),
        queue=lmgate.QueueOptions(size=4),
        hooks=[OtelHook(provider)],
        grace=0.5,
    )
    async with pool, sched:
        instrument(sched, registry=registry)
        sub = sched.events.subscribe(maxlen=10_000)

        async def call(lease: lmgate.Lease) -> Any:
            leases.append(lease)
            texts.append(repr(pool.client(lease.endpoint)))
            return await openai_chat(
                pool.client(lease.endpoint), lease, [{"role": "user", "content": "hello"}]
            )

        async def client() -> None:
            for _ in range(10):
                try:
                    await sched.run(call, model="m", timeout=5.0)
                except Exception as exc:
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(client)
        for bad in (
            lmgate.Endpoint("bad", url="http://127.0.0.1:3", api_key=failing_vault),
            lmgate.Endpoint("unset", url="http://127.0.0.1:4", api_key_env=ENV + "_UNSET"),
        ):
            with pytest.raises(lmgate.InvalidParameter) as info:
                resolve_api_key(bad)
            errors.append(info.value)
        texts.append(repr(resolve_api_key(endpoints[0])))
        texts.append(f"{resolve_api_key(endpoints[1])}")
        stats = sched.stats()
        texts += [repr(sched), repr(pool), repr(stats), repr(sched.events)]
        texts.append(msgspec.json.encode(stats).decode())
        texts += [repr(ep) for ep in (*endpoints, *sched.endpoints)]
        texts += [repr(a) for a in sched._actors]
        texts.append(generate_latest(registry).decode())
        while (e := sub.get_nowait()) is not None:
            events.append(e)
    assert server.authorized == server.n > 0  # the keys did go where they belong
    assert stats.outcomes["completed"] > 0
    assert stats.outcomes["failed"] > 0
    assert errors
    texts += [repr(lease) for lease in leases]
    texts += [repr(e) for e in events] + [msgspec.json.encode(e).decode() for e in events]
    texts += [t for exc in errors for t in texts_of_exception(exc)]
    texts += [span.to_json() for span in exporter.get_finished_spans()]
    formatter = logging.Formatter()
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        texts.append(repr(getattr(record, "fields", None)))
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
        if record.stack_info:
            texts.append(record.stack_info)
    assert len(caplog.records) > 0
    assert len(exporter.get_finished_spans()) > 0
    leaked = [t for t in texts if any(k in t for k in KEYS)]
    assert leaked == []
    provider.shutdown()


@pytest.mark.anyio
async def test_a_server_echoing_the_key_in_its_error_does_not_leak_it(planted: None) -> None:
    """Some APIs answer 'Incorrect API key provided: <key>'; lmgate's error must not repeat it."""

    def echo(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        return httpx.Response(429, json={"error": {"message": f"bad key provided: {sent}"}})

    ep = lmgate.Endpoint("env", url="http://127.0.0.1:1/v1", models=["m"], api_key_env=ENV)
    pool = ClientPool([ep], transport=lambda _: httpx.MockTransport(echo))
    async with pool, lmgate.Scheduler([ep]) as sched:

        async def call(lease: lmgate.Lease) -> Any:
            return await openai_chat(pool.client(lease.endpoint), lease, [])

        with pytest.raises(lmgate.Overloaded) as info:
            await sched.run(call, model="m")
    assert not [t for t in texts_of_exception(info.value) if ENV_KEY in t]


def test_the_scan_would_catch_a_leak() -> None:
    """The scan is not vacuous: a text holding a key is found."""
    assert any(k in repr({"authorization": f"Bearer {ENV_KEY}"}) for k in KEYS)
    assert os.environ.get(ENV) is None
