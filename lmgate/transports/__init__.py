"""Speaking HTTP to model servers, and letting any httpx client go through lmgate.

``SchedulingTransport(sched)`` makes an ``httpx.AsyncClient`` -- and so the
``openai`` SDK -- send every request under a scheduler lease.  ``ClientPool``
keeps one bounded client per endpoint; ``openai_chat`` / ``openai_stream``
and ``ollama_chat`` / ``ollama_stream`` are the chat calls for code that
lets lmgate speak the protocol; ``error_from_response`` maps each server's
errors onto lmgate's.  Imports ``Endpoint``, detect, context, policies and
security; it sees the scheduler only through the ``LeaseSource`` protocol.
"""

from lmgate.transports._errors import error_from_response, error_message, parse_retry_after
from lmgate.transports._leased import StreamDeadlineExceeded, StreamReclaimed
from lmgate.transports._ollama import ollama_chat, ollama_stream
from lmgate.transports._openai import ChatResult, openai_chat, openai_stream, raise_for_response
from lmgate.transports._options import RequestOptions, current_options, request_options
from lmgate.transports._pool import ClientPool, ClientPoolStatistics, pooled_transport
from lmgate.transports._scheduling import SchedulingTransport, SchedulingTransportStatistics
from lmgate.transports._sdk import openai_client
from lmgate.transports._urls import rebase

__all__ = [
    "ChatResult",
    "ClientPool",
    "ClientPoolStatistics",
    "RequestOptions",
    "SchedulingTransport",
    "SchedulingTransportStatistics",
    "StreamDeadlineExceeded",
    "StreamReclaimed",
    "current_options",
    "error_from_response",
    "error_message",
    "ollama_chat",
    "ollama_stream",
    "openai_chat",
    "openai_client",
    "openai_stream",
    "parse_retry_after",
    "pooled_transport",
    "raise_for_response",
    "rebase",
    "request_options",
]
