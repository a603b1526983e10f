"""Knowing what an endpoint is, by evidence rather than by guesswork.

``locality(url)`` says where a URL points without touching the network;
``probe(url)`` asks the server through its documented routes what it is,
which models it serves with which context windows and how many slots it
has; the fingerprint rules decide from the combination of signals whether
it is a self-hosted model server or a cloud API.  ``learn`` applies a probe
to any endpoint-shaped value (``lmgate.Endpoint.discover`` builds one).
Imports only lmgate's errors: it knows servers, not the endpoint type or
anything above it.
"""

from lmgate.detect._cache import ProbeCache, ProbeCacheStatistics
from lmgate.detect._evidence import Observation
from lmgate.detect._fingerprint import Evidence, Verdict, decide
from lmgate.detect._learn import HealthAnswer, health_check, health_status, learn
from lmgate.detect._locality import Locality, UrlLocality, classify_url, locality
from lmgate.detect._probe import ServerInfo, invalidate, probe, server_root
from lmgate.detect._tokens import TokenCount, TokenEstimator, TokenEstimatorStatistics, count_tokens
from lmgate.detect._windows import WindowChoice, family_default, resolve_window, server_default

__all__ = [
    "Evidence",
    "HealthAnswer",
    "Locality",
    "Observation",
    "ProbeCache",
    "ProbeCacheStatistics",
    "ServerInfo",
    "TokenCount",
    "TokenEstimator",
    "TokenEstimatorStatistics",
    "UrlLocality",
    "Verdict",
    "WindowChoice",
    "classify_url",
    "count_tokens",
    "decide",
    "family_default",
    "health_check",
    "health_status",
    "invalidate",
    "learn",
    "locality",
    "probe",
    "resolve_window",
    "server_default",
    "server_root",
]


def __getattr__(name: str) -> object:
    # ``lmgate.detect.discover`` moved to ``lmgate.Endpoint.discover``: the
    # endpoint type sits above this package, so it is looked up by name.
    if name == "discover":
        import importlib
        import warnings

        warnings.warn(
            "lmgate.detect.discover is deprecated; use lmgate.Endpoint.discover",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("lmgate._endpoint").Endpoint.discover
    raise AttributeError(f"module 'lmgate.detect' has no attribute {name!r}")
