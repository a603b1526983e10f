"""``lmgate sim --kind llamacpp --port 8080``: a model server with no model.

A simulated server answers the routes its real counterpart answers
(health, models, props or ``/api/ps``, chat with and without streaming), so
the openai SDK, a framework built on it or ``lmgate probe`` can be tried
end to end on a machine without a GPU.  It listens on loopback unless told
otherwise, prints its URL once it is listening (a script can wait for that
line), and runs until interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import anyio

from lmgate._errors import InvalidParameter
from lmgate.sim.http import SimHTTPConfig, SimHTTPServer

__all__ = ["run_sim", "sim_config"]


def sim_config(
    *,
    kind: str,
    models: list[str] | None = None,
    slots: int = 4,
    n_ctx: int = 4096,
    token_time: float = 0.02,
    prompt_time: float = 0.0,
    max_tokens: int = 64,
    api_key: str | None = None,
) -> SimHTTPConfig:
    """The server's configuration; bad values raise ``InvalidParameter``."""
    return SimHTTPConfig(
        kind=kind,
        models=tuple(models) if models else ("sim-model",),
        slots=slots,
        n_ctx=n_ctx,
        token_time=token_time,
        prompt_time=prompt_time,
        max_tokens=max_tokens,
        api_key=api_key,
    )


async def run_sim(
    config: SimHTTPConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    out: TextIO | None = None,
    started: Callable[[SimHTTPServer], None] | None = None,
) -> int:
    """Serve until cancelled; returns the process exit status."""
    stream = out if out is not None else sys.stdout
    try:
        server = SimHTTPServer(config, host=host, port=port)
        async with server:
            api = "/v1" if config.kind != "ollama" else "/v1 and /api"
            stream.write(
                f"lmgate sim: {config.kind} server on {server.url} "
                f"(OpenAI API at {api}; models: {', '.join(config.models)})\n"
            )
            stream.flush()
            if started is not None:
                started(server)
            await anyio.sleep_forever()
    except InvalidParameter as exc:
        stream.write(f"lmgate sim: {exc}\n")
        return 2
    except OSError as exc:
        stream.write(f"lmgate sim: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
        return 1
    return 0  # pragma: no cover - sleep_forever only ends by cancellation
