"""The scheduler's grouped options, and the keywords they replaced.

``Scheduler(endpoints, *, limit=, queue=, resilience=, context=,
resources=, coordinator=, hooks=, grace=)``: each group is a frozen,
validated msgspec Struct with safe defaults, so a new feature adds a field
to a group rather than a keyword to the constructor.  The flat keywords of
the first release (``queue_size=``, ``tick_interval=``, ``retry=``, ...)
are still accepted for one release, with a ``DeprecationWarning`` naming
the new spelling.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.actors._resilience import Resilience
from lmgate.actors._resources import Reader
from lmgate.policies._queueing import QueueControl
from lmgate.policies.resources import ResourceGuard

__all__ = ["QueueOptions", "ResourceOptions", "split_legacy"]

_MAX_DIRS = 64


@final
class QueueOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How requests wait for a slot.

    ``size`` bounds the requests waiting at once (beyond it a request is
    refused with ``Rejected(reason="queue_full")``).  Lower priority numbers
    go first; ``aging`` is how many seconds of waiting are worth one
    priority level, so a low-priority request is never starved.
    """

    size: int = 1024
    aging: float = 10.0
    control: QueueControl | None = QueueControl()

    def __post_init__(self) -> None:
        check_int("queue.size", self.size, low=0, high=10_000_000)
        check_float("queue.aging", self.aging, low=0.0, high=1e9)
        if self.control is not None and not isinstance(self.control, QueueControl):
            raise InvalidParameter(
                "queue.control must be a QueueControl or None", field="queue.control"
            )


@final
class ResourceOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the scheduler may look at on the machine around it: nothing by default.

    With the defaults, entering a scheduler starts no thread, reads no
    file and opens no socket.  ``guard`` turns on resource sampling (psutil,
    every ``interval`` seconds, in a worker thread that close abandons):
    memory, swap, disk under ``dirs``, file descriptors, connections, GPU
    memory; admission then follows its recommendations.  ``reader``
    replaces the sampling itself (tests feed readings from it, no thread).
    ``check_exposure`` inspects, once at start, what listens behind each
    loopback endpoint (a model server bound to every interface, or running
    as root, is reported).  ``state_dirs`` are directories whose leftover
    temp files of interrupted atomic writes are removed at start.
    """

    guard: ResourceGuard | None = None
    interval: float = 5.0
    dirs: tuple[str, ...] = ()
    reader: Reader | None = None
    check_exposure: bool = False
    state_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.guard is not None and not isinstance(self.guard, ResourceGuard):
            raise InvalidParameter("resources.guard must be a ResourceGuard", field="guard")
        check_float("resources.interval", self.interval, low=0.0, low_open=True, high=86_400.0)
        msgspec.structs.force_setattr(self, "dirs", _check_dirs("resources.dirs", self.dirs))
        msgspec.structs.force_setattr(
            self, "state_dirs", _check_dirs("resources.state_dirs", self.state_dirs)
        )
        if self.reader is not None and not callable(self.reader):
            raise InvalidParameter("resources.reader must be an async callable", field="reader")
        if type(self.check_exposure) is not bool:
            raise InvalidParameter(
                "resources.check_exposure must be a bool", field="check_exposure"
            )


def _check_dirs(name: str, dirs: object) -> tuple[str, ...]:
    if isinstance(dirs, str | bytes) or not isinstance(dirs, list | tuple):
        raise InvalidParameter(f"{name} must be a list of directories", field=name)
    if len(dirs) > _MAX_DIRS:
        raise InvalidParameter(f"{name}: at most {_MAX_DIRS} directories", field=name)
    out = []
    for d in dirs:
        if not isinstance(d, str | os.PathLike):
            raise InvalidParameter(f"{name} must hold paths", field=name)
        path = os.fspath(d)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidParameter(f"{name} must hold non-empty paths", field=name)
        out.append(path)
    return tuple(out)


#: Old keyword -> (group, field in the group).
_LEGACY: dict[str, tuple[str, str]] = {
    "queue_size": ("queue", "size"),
    "aging": ("queue", "aging"),
    "tick_interval": ("resilience", "tick_interval"),
    "mailbox_size": ("resilience", "mailbox_size"),
    "retry": ("resilience", "retry"),
    "fallbacks": ("resilience", "fallbacks"),
    "throttle": ("resilience", "throttle"),
    "resource_interval": ("resources", "interval"),
    "resource_dirs": ("resources", "dirs"),
    "resource_reader": ("resources", "reader"),
    "state_dirs": ("resources", "state_dirs"),
}


def split_legacy(
    legacy: Mapping[str, Any],
    queue: QueueOptions | None,
    resilience: Resilience | None,
    resources: ResourceOptions | ResourceGuard | None,
) -> tuple[QueueOptions, Resilience, ResourceOptions]:
    """The three option groups, with any deprecated flat keywords folded in.

    An unknown keyword is refused (``InvalidParameter``) before anything is
    built.  ``resources=`` may still be a bare ``ResourceGuard``.
    """
    for key in legacy:
        if key not in _LEGACY:
            raise InvalidParameter(f"Scheduler() got an unknown keyword {key!r}", field=key)
    if queue is None:
        queue = QueueOptions()
    elif not isinstance(queue, QueueOptions):
        raise InvalidParameter("queue must be a QueueOptions", field="queue")
    if resilience is None:
        resilience = Resilience()
    elif not isinstance(resilience, Resilience):
        raise InvalidParameter("resilience must be a Resilience", field="resilience")
    if resources is None:
        resources = ResourceOptions()
    elif isinstance(resources, ResourceGuard):
        resources = ResourceOptions(guard=resources)
    elif not isinstance(resources, ResourceOptions):
        raise InvalidParameter(
            "resources must be a ResourceOptions (or a ResourceGuard)", field="resources"
        )
    groups: dict[str, dict[str, Any]] = {"queue": {}, "resilience": {}, "resources": {}}
    for key, value in legacy.items():
        group, field = _LEGACY[key]
        warnings.warn(
            f"Scheduler({key}=...) is deprecated; use {group}=...({field}=...)",
            DeprecationWarning,
            stacklevel=3,
        )
        if group == "resources" and field in ("dirs", "state_dirs"):
            value = _check_dirs(key, value)
        groups[group][field] = value
    try:
        if groups["queue"]:
            queue = msgspec.structs.replace(queue, **groups["queue"])
        if groups["resilience"]:
            resilience = msgspec.structs.replace(resilience, **groups["resilience"])
        if groups["resources"]:
            resources = msgspec.structs.replace(resources, **groups["resources"])
    except InvalidParameter:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(str(exc)) from exc
    return queue, resilience, resources
