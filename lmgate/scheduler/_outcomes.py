"""Request outcomes, and turning a call's exception into a sample class.

Every request ends with exactly one of ``OUTCOMES``; the counters in
``stats()`` add up because admission is the only place that counts them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import anyio

from lmgate._errors import EndpointUnavailable
from lmgate.policies._classify import Classification, UserClassifier, compose
from lmgate.policies._sample import OutcomeClass

__all__ = ["OUTCOMES", "classification_of", "classify_error", "unknown_model"]

OUTCOMES = (
    "completed",
    "failed",
    "rejected",
    "deadline_exceeded",
    "cancelled",
    "unavailable",
    "closed",
    # The prompt did not fit the window: refused before it was sent (the
    # scheduler's own check) or by the server (a transport's ContextOverflow).
)


def classify_error(
    error: BaseException, user: UserClassifier | None
) -> tuple[OutcomeClass, float | None]:
    """The sample class of a call's error, and the server's Retry-After if any."""
    c = classification_of(error, user)
    return c.outcome, c.retry_after


def classification_of(
    error: BaseException, user: UserClassifier | None, *, deadline_expired: bool = False
) -> Classification:
    """The full classification of a call's error, for the sample and for retries.

    ``deadline_expired`` says the request's deadline interrupted the call:
    a black-holed server shows nothing else, so that is a timeout.
    ``before_send`` and ``context_overflow`` stay on the result for the
    retry layer.  compose() ignores a user hook that raises or answers junk
    (release must never fail, and a bad class would break the endpoint
    actor), and keeps a cancellation a cancellation.
    """
    try:
        cancelled: type[BaseException] | None = anyio.get_cancelled_exc_class()
    except Exception:  # outside an event loop: both backends' classes are known anyway
        cancelled = None
    return compose(user)(
        error, deadline_expired=deadline_expired, cancelled_exc=cancelled, now_epoch=time.time()
    )


def unknown_model(served_models: Iterable[str], model: str) -> EndpointUnavailable:
    """The refusal of a model no endpoint serves, naming those that are served."""
    served = tuple(sorted(served_models))
    shown = ", ".join(repr(m) for m in served[:20]) + (", ..." if len(served) > 20 else "")
    return EndpointUnavailable(
        f"no endpoint serves model {model[:200]!r}; served: {shown}",
        reason="unknown_model",
        models=served,
    )
