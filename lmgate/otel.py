"""OpenTelemetry spans per request (optional extra: ``pip install 'lmgate[otel]'``).

::

    from lmgate.otel import OtelHook

    async with lmgate.Scheduler(endpoints, hooks=[OtelHook()]) as sched:
        ...   # lmgate.request > lmgate.queue, lmgate.call (current while the call runs)

Only the API package is used: without a configured SDK every span is a
no-op.  Importing this module needs ``opentelemetry-api``; ``import lmgate``
does not.
"""

from lmgate.observability._otel import ERROR_OUTCOMES, OtelHook, RequestSpans

__all__ = ["ERROR_OUTCOMES", "OtelHook", "RequestSpans"]
