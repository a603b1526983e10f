"""A stand-in with the scheduler surface the transport uses (acquire/release)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anyio

from lmgate._endpoint import Endpoint, EndpointRef
from lmgate._errors import EndpointUnavailable, LmgateError


class StandInLease:
    def __init__(self, sched: StandInScheduler, ref: EndpointRef, deadline: float) -> None:
        self._sched = sched
        self.endpoint = ref
        self.deadline = deadline
        self.priority = 0
        self.reports: list[dict[str, Any]] = []
        self.releases: list[tuple[BaseException | None, str | None]] = []

    def remaining(self) -> float:
        return max(0.0, self.deadline - anyio.current_time())

    def report(self, **kw: Any) -> None:
        self.reports.append({k: v for k, v in kw.items() if v is not None})

    def release(self, error: BaseException | None = None, *, outcome: str | None = None) -> None:
        self.releases.append((error, outcome))
        if len(self.releases) == 1:
            self._sched.in_flight -= 1

    @property
    def reported(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.reports:
            out.update(r)
        return out


class StandInScheduler:
    """Grants up to ``limit`` leases on the first endpoint serving the model."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        refuse: LmgateError | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.aliases = dict(aliases or {})
        self.in_flight = 0
        self.max_in_flight = 0
        self.leases: list[StandInLease] = []
        self.calls: list[dict[str, Any]] = []
        self.prompts: list[tuple[int, int | None]] = []
        self.refuse = refuse

    async def acquire(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the scheduler's signature
        messages: Sequence[Any] | None = None,
        max_tokens: int | None = None,
    ) -> StandInLease:
        self.calls.append({"model": model, "priority": priority, "timeout": timeout})
        if messages is not None:
            self.prompts.append((len(messages), max_tokens))
        if self.refuse is not None:
            raise self.refuse
        for ep in self.endpoints:
            if model in ep.models or not ep.models:
                break
        else:
            raise EndpointUnavailable(f"no endpoint serves {model!r}")
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        ref = EndpointRef(
            name=ep.name, url=ep.url, model=self.aliases.get(model, model), kind=ep.kind
        )
        lease = StandInLease(self, ref, deadline)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.leases.append(lease)
        return lease
