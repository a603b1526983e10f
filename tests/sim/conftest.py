"""A stand-in lease for the simulator's tests."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from lmgate._endpoint import EndpointRef


class FakeLease:
    """The surface of ``lmgate.Lease`` the simulator touches, recording reports."""

    def __init__(self, url: str | None = None) -> None:
        self.endpoint = (
            None if url is None else EndpointRef(name="sim", url=url, model="sim-model", kind="sim")
        )
        self.deadline = math.inf
        self.priority = 0
        self.reports: list[dict[str, Any]] = []

    def report(
        self,
        *,
        ttft: float | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        self.reports.append(
            {"ttft": ttft, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens}
        )


@pytest.fixture
def make_lease() -> Callable[..., FakeLease]:
    """A factory of stand-in leases (optionally aimed at a URL)."""
    return FakeLease
