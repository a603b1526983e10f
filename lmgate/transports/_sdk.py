"""``lmgate.openai_client(sched)``: the openai SDK, scheduled, in one line.

The client it returns sends every request through a ``SchedulingTransport``
in SDK-native mode: lmgate's refusals come back as the SDK's own typed
errors (``RateLimitError`` for a full queue, ``APIStatusError`` 504 for a
deadline, ``NotFoundError`` for an unknown model, ``BadRequestError`` with
``code == "context_length_exceeded"``), each marked ``x-should-retry:
false`` so the SDK does not retry lmgate's own decision and a user call is
counted once.  No base URL or key is needed: the endpoint a lease grants
supplies both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from lmgate._errors import InvalidParameter
from lmgate.transports._scheduling import LeaseSource, SchedulingTransport

if TYPE_CHECKING:
    import openai

__all__ = ["openai_client"]

_TRANSPORT_OPTIONS = ("forward_auth", "raise_errors", "context", "stream_idle", "inner")


def openai_client(sched: LeaseSource, **kw: Any) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` whose every request goes through ``sched``.

    ``kw`` are ``AsyncOpenAI``'s own arguments (``max_retries``, ``timeout``,
    ...) plus the transport's: ``stream_idle``, ``context``, ``forward_auth``,
    ``raise_errors``, ``inner``.  ``refusal_responses`` is on; pass
    ``refusal_responses=False`` to get lmgate's exceptions instead.
    """
    try:
        import openai
    except ImportError:  # pragma: no cover - the optional extra
        raise InvalidParameter(
            "lmgate.openai_client needs the openai package: pip install 'lmgate[openai]'",
            field="openai",
        ) from None
    if "http_client" in kw:
        raise InvalidParameter(
            "openai_client builds its own http_client; pass a SchedulingTransport yourself"
            " to use another",
            field="http_client",
        )
    options = {k: kw.pop(k) for k in _TRANSPORT_OPTIONS if k in kw}
    refusals = kw.pop("refusal_responses", True)
    transport = SchedulingTransport(sched, refusal_responses=refusals, **options)
    kw.setdefault("base_url", "http://lmgate.local/v1")
    kw.setdefault("api_key", "lmgate")
    http_client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))
    # The SDK's annotations name its own HTTP package; it takes any httpx client.
    return openai.AsyncOpenAI(http_client=http_client, **kw)  # type: ignore[arg-type]
