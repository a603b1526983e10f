"""The limit policy a scheduler uses when it is given none.

One function, so every place that needs "the default" (the scheduler, a
config without a ``[limit]`` section, the demo) gets the same fresh config.
"""

from __future__ import annotations

from lmgate.policies._adaptive import Adaptive
from lmgate.policies._limit import LimitPolicy

__all__ = ["default_limit"]


def default_limit() -> LimitPolicy:
    """A new config of the default policy: :class:`~lmgate.policies.Adaptive`."""
    return Adaptive()
