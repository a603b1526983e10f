"""Simulated model servers that speak HTTP: llama.cpp, Ollama, vLLM, OpenAI dialects.

Each dialect answers the routes its real server answers (health, models,
props, chat, streaming), on top of one simulated engine, either in process
(``sim_transport``, an httpx transport) or on a loopback port
(``SimHTTPServer``).  Used by the detection tests, the transport tests and
the demo.
"""

from lmgate.sim.http._app import (
    HTTP_DIALECTS,
    SimHTTPConfig,
    SimHTTPServer,
    SimHTTPServerStatistics,
    sim_transport,
)

__all__ = [
    "HTTP_DIALECTS",
    "SimHTTPConfig",
    "SimHTTPServer",
    "SimHTTPServerStatistics",
    "sim_transport",
]
