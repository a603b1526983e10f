"""Timed faults: what happens to a simulated server, and when.

A fault is one of :class:`~lmgate.sim.SimServer`'s fault methods with its
arguments; a :class:`FaultSchedule` lists them against seconds from the
start of a run, and :func:`run_schedule` plays it in anyio time, so under a
mock clock "capacity halves at t=300 s" happens at exactly 300 s.  Steps are
validated when built (a scenario file with ``factor = -1`` fails to load,
not five minutes into a run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, final

import anyio
import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int

if TYPE_CHECKING:
    from lmgate.sim._model import SimServer

__all__ = ["FaultAction", "FaultSchedule", "FaultStep", "run_schedule"]

FaultAction = Literal[
    "crash",
    "restart",
    "hang",
    "unhang",
    "start_loading",
    "rate_limit",
    "slow_tokens",
    "set_capacity",
    "swap_model",
]

# action -> {argument: (kind, required)}; kinds: "seconds" (>= 0), "factor"
# (> 0), "port", "text".
_ARGS: dict[str, dict[str, tuple[str, bool]]] = {
    "crash": {},
    "restart": {"port": ("port", False)},
    "hang": {},
    "unhang": {},
    "start_loading": {"seconds": ("seconds", True)},
    "rate_limit": {"seconds": ("seconds", True), "retry_after": ("seconds", False)},
    "slow_tokens": {"factor": ("factor", True)},
    "set_capacity": {"factor": ("factor", True)},
    "swap_model": {"digest": ("text", True), "model": ("text", False)},
}


@final
class FaultStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Call ``server.<action>(**args)`` at ``at`` seconds into the run.

    ``server`` names the target in a scenario with several servers; a
    schedule for one server ignores it.
    """

    at: float
    action: FaultAction
    args: dict[str, int | float | str] = msgspec.field(default_factory=dict)
    server: str | None = None

    def __post_init__(self) -> None:
        check_float("at", self.at)
        spec = _ARGS.get(self.action)
        if spec is None:
            raise InvalidParameter(f"unknown fault action {self.action!r}", field="action")
        if not isinstance(self.args, Mapping):
            raise InvalidParameter("args must be a table of arguments", field="args")
        for key, value in self.args.items():
            if key not in spec:
                known = ", ".join(spec) or "none"
                raise InvalidParameter(
                    f"{self.action} takes no argument {key!r} (takes: {known})", field=f"args.{key}"
                )
            _check_arg(f"args.{key}", spec[key][0], value)
        for key, (_, required) in spec.items():
            if required and key not in self.args:
                raise InvalidParameter(f"{self.action} needs {key!r}", field=f"args.{key}")
        msgspec.structs.force_setattr(self, "args", dict(self.args))

    def apply(self, server: SimServer) -> None:
        """Perform this fault on ``server`` now."""
        getattr(server, self.action)(**self.args)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        target = f" on {self.server!r}" if self.server else ""
        return f"<FaultStep at={self.at:g}s {self.action}({args}){target}>"


def _check_arg(field: str, kind: str, value: object) -> None:
    if kind == "seconds":
        check_float(field, value)
    elif kind == "factor":
        check_float(field, value, low=0.0, low_open=True)
    elif kind == "port":
        check_int(field, value, low=1, high=65535)
    elif not isinstance(value, str) or not value or "\x00" in value or len(value) > 256:
        raise InvalidParameter(f"{field} must be a short non-empty string", field=field)


@final
class FaultSchedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Faults in time order (steps given out of order are sorted, stably)."""

    steps: tuple[FaultStep, ...] = ()

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        for i, step in enumerate(steps):
            if not isinstance(step, FaultStep):
                raise InvalidParameter("steps must be FaultStep values", field=f"steps[{i}]")
        msgspec.structs.force_setattr(self, "steps", tuple(sorted(steps, key=lambda s: s.at)))

    @classmethod
    def of(
        cls, *items: tuple[float, str] | tuple[float, str, Mapping[str, int | float | str]]
    ) -> FaultSchedule:
        """Build from ``(at, action)`` or ``(at, action, args)`` tuples."""
        steps = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise InvalidParameter("each item is (at, action[, args])", field=f"steps[{i}]")
            args = dict(item[2]) if len(item) == 3 else {}
            try:
                steps.append(FaultStep(at=item[0], action=item[1], args=args))  # type: ignore[arg-type]
            except InvalidParameter as exc:
                raise InvalidParameter(str(exc), field=f"steps[{i}].{exc.field}") from None
        return cls(steps=tuple(steps))

    def for_server(self, name: str) -> FaultSchedule:
        """The steps aimed at ``name`` (or at no server in particular)."""
        return FaultSchedule(steps=tuple(s for s in self.steps if s.server in (None, name)))

    @property
    def end(self) -> float:
        """When the last step fires (0 for an empty schedule)."""
        return self.steps[-1].at if self.steps else 0.0

    def __len__(self) -> int:
        return len(self.steps)


async def run_schedule(
    server: SimServer, schedule: FaultSchedule, *, start: float | None = None
) -> None:
    """Apply each step at ``start + at`` (``start`` defaults to now).

    Returns after the last step; cancel the task running it to stop early.
    """
    origin = anyio.current_time() if start is None else start
    if not math.isfinite(origin):
        raise InvalidParameter("start must be finite", field="start")
    for step in schedule.steps:
        await anyio.sleep_until(origin + step.at)
        step.apply(server)
