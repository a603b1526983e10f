"""Size and time distributions for simulated requests.

Real prompt and output lengths are heavy-tailed; a simulation that draws
them all equal hides the head-of-line blocking and KV pressure that long
requests cause.  ``Dist`` is a frozen value so a scenario file can carry it,
and it draws only from the ``random.Random`` it is handed, so a seed fixes a
whole run.
"""

from __future__ import annotations

import math
import random
from typing import Literal, final

import msgspec

from lmgate._errors import InvalidParameter

__all__ = ["Dist"]

DistKind = Literal["fixed", "uniform", "lognormal"]


@final
class Dist(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A distribution clipped to ``[min, max]``.

    ``fixed`` always gives ``value``; ``uniform`` draws from ``[low, high]``;
    ``lognormal`` has mean ``mean`` (of the values, not of their logarithm)
    and ``sigma`` (of the underlying normal), the usual shape of token counts.
    """

    kind: DistKind = "fixed"
    value: float = 0.0
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    sigma: float = 0.0
    min: float = 0.0
    max: float = math.inf

    def __post_init__(self) -> None:
        for name in ("value", "low", "high", "mean", "sigma", "min"):
            _check_finite(name, getattr(self, name))
        if (
            isinstance(self.max, bool)
            or not isinstance(self.max, int | float)
            or self.max != self.max
        ):
            raise InvalidParameter("max must be a number", field="max")
        if self.min < 0:
            raise InvalidParameter("min must be >= 0", field="min")
        if self.max < self.min:
            raise InvalidParameter("max must be >= min", field="max")
        if self.kind == "fixed" and self.value < 0:
            raise InvalidParameter("value must be >= 0", field="value")
        if self.kind == "uniform" and not 0 <= self.low <= self.high:
            raise InvalidParameter("uniform needs 0 <= low <= high", field="high")
        if self.kind == "lognormal":
            if self.mean <= 0:
                raise InvalidParameter("lognormal needs mean > 0", field="mean")
            if self.sigma < 0:
                raise InvalidParameter("lognormal needs sigma >= 0", field="sigma")

    @classmethod
    def fixed(cls, value: float) -> Dist:
        return cls(kind="fixed", value=value)

    @classmethod
    def uniform(cls, low: float, high: float) -> Dist:
        return cls(kind="uniform", low=low, high=high)

    @classmethod
    def lognormal(
        cls, mean: float, sigma: float, *, min: float = 0.0, max: float = math.inf
    ) -> Dist:
        return cls(kind="lognormal", mean=mean, sigma=sigma, min=min, max=max)

    def sample(self, rng: random.Random) -> float:
        """One draw, clipped; uses ``rng`` only (never the global generator)."""
        if self.kind == "fixed":
            x = self.value
        elif self.kind == "uniform":
            x = rng.uniform(self.low, self.high)
        else:
            mu = math.log(self.mean) - self.sigma * self.sigma / 2.0
            x = rng.lognormvariate(mu, self.sigma)
        return min(max(x, self.min), self.max)

    def sample_int(self, rng: random.Random, *, floor: int = 1) -> int:
        """One draw rounded to an int no smaller than ``floor`` (a token count)."""
        return max(floor, round(self.sample(rng)))

    def __repr__(self) -> str:
        if self.kind == "fixed":
            return f"Dist.fixed({self.value:g})"
        if self.kind == "uniform":
            return f"Dist.uniform({self.low:g}, {self.high:g})"
        clip = (
            ""
            if (self.min, self.max) == (0.0, math.inf)
            else f", min={self.min:g}, max={self.max:g}"
        )
        return f"Dist.lognormal({self.mean:g}, {self.sigma:g}{clip})"


def _check_finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number", field=name)
