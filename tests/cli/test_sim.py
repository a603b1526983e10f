"""``lmgate sim``: a simulated server a user can point the SDK or a probe at."""

from __future__ import annotations

import io
import subprocess
import sys

import anyio
import anyio.abc
import httpx
import pytest

from lmgate.cli import main
from lmgate.cli._sim import run_sim, sim_config
from lmgate.sim.http import SimHTTPServer


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["llamacpp", "ollama", "vllm"])
async def test_serves_chat_in_its_dialect_until_cancelled(kind: str) -> None:
    out = io.StringIO()
    started: list[SimHTTPServer] = []
    config = sim_config(kind=kind, models=["tiny"], token_time=0.0, max_tokens=3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_sim(config, port=0, out=out, started=started.append))
        with anyio.fail_after(5):
            while not started:  # noqa: ASYNC110 -- waiting for the server to listen
                await anyio.sleep(0.01)
        url = started[0].url
        assert f"{kind} server on {url}" in out.getvalue()
        async with httpx.AsyncClient(base_url=url) as client:
            models = await client.get("/v1/models")
            assert models.status_code == 200
            assert "tiny" in models.text
            r = await client.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"]
        tg.cancel_scope.cancel()


def test_bad_arguments_are_refused_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["sim", "--slots", "0"]) == 2
    assert "slots" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sim", "--kind", "nonesuch"])


@pytest.mark.anyio
async def test_a_port_in_use_is_status_1() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        out = io.StringIO()
        assert await run_sim(sim_config(kind="llamacpp"), port=port, out=out) == 1
        assert "cannot listen" in out.getvalue()


def test_the_command_prints_its_url_and_stops_on_interrupt() -> None:
    """As a user runs it: ``python -m lmgate sim --port 0`` in a process of its own."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmgate", "sim", "--kind", "ollama", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("lmgate sim: ollama server on http://127.0.0.1:"), line
        url = line.split(" on ")[1].split(" ")[0]
        r = httpx.get(url + "/api/tags", timeout=5)
        assert r.status_code == 200
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
