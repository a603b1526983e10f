"""Consensus rules: a combination of signals decides, never one route."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgate.detect import Evidence, Locality, decide
from lmgate.detect._fingerprint import SELF_HOSTED_KINDS, model_name_hint


def ev(points_to: str, weight: int, signal: str = "s") -> Evidence:
    return Evidence(source="GET /x", signal=signal, points_to=points_to, weight=weight)


def test_one_imitated_route_is_not_enough() -> None:
    """A single weak Ollama signal (an imitated route) claims no kind."""
    v = decide([ev("ollama", 1)], Locality.PUBLIC, host="llm.example.com")
    assert v.kind == "unknown"


def test_localai_beats_ollama_routes_it_imitates() -> None:
    """LocalAI answering Ollama's routes is LocalAI once its own signals show."""
    evidence = [ev("ollama", 1, "a"), ev("ollama", 1, "b"), ev("ollama", 1, "c"), ev("localai", 3)]
    assert decide(evidence, Locality.LOOPBACK).kind == "localai"


def test_tie_goes_to_the_imitator() -> None:
    """Equal scores resolve to the more specific server."""
    assert decide([ev("ollama", 2), ev("localai", 2)], Locality.LOOPBACK).kind == "localai"


def test_self_hosted_fingerprint_beats_public_url() -> None:
    """A reverse proxy on a public name in front of llama.cpp is local."""
    v = decide([ev("llamacpp", 3)], Locality.PUBLIC, host="llm.example.com")
    assert (v.kind, v.local) == ("llamacpp", True)
    assert "public URL" in v.reason


def test_cloud_fingerprint_beats_loopback_url() -> None:
    """A loopback proxy to a cloud API is not local."""
    v = decide([ev("openai", 3)], Locality.LOOPBACK)
    assert (v.kind, v.local) == ("openai", False)
    assert "proxy" in v.reason


def test_generic_cloud_signals() -> None:
    """Hosted-API headers without a kind still say cloud."""
    v = decide([ev("cloud", 3)], Locality.LOOPBACK)
    assert v.local is False


def test_generic_self_hosted_signal() -> None:
    """A self-hosted server of a kind lmgate does not know is still local."""
    v = decide([ev("self-hosted", 3)], Locality.PUBLIC, host="x.example.com")
    assert (v.kind, v.local) == ("unknown", True)


@pytest.mark.parametrize(
    ("where", "host", "models", "local"),
    [
        (Locality.LOOPBACK, "127.0.0.1", (), True),
        (Locality.UNIX_SOCKET, "localhost", (), True),
        (Locality.PRIVATE, "ollama", (), True),
        (Locality.PUBLIC, "api.openai.com", (), False),
        (Locality.PUBLIC, "eu.api.groq.com", (), False),
        (Locality.PUBLIC, "llm.example.com", ("llama3.1:8b",), True),
        (Locality.PUBLIC, "llm.example.com", ("Qwen2.5-7B-Instruct-Q4_K_M.gguf",), True),
        (Locality.PUBLIC, "llm.example.com", ("gpt-4o",), False),
        (Locality.PUBLIC, "llm.example.com", (), False),
        (Locality.INVALID, "", (), None),
    ],
)
def test_without_fingerprint_locality_and_names_decide(
    where: Locality, host: str, models: tuple[str, ...], local: bool | None
) -> None:
    """With no fingerprint, the URL's locality and then model names decide."""
    v = decide([], where, host=host, models=models)
    assert (v.kind, v.local) == ("unknown", local)


def test_informative_evidence_counts_nothing() -> None:
    """Weight-0 evidence never changes the verdict."""
    assert decide([ev("openai", 0)] * 10, Locality.LOOPBACK).local is True


@pytest.mark.parametrize(
    ("names", "hint"),
    [
        (["llama3.2:latest"], True),
        (["mistral:7b"], True),
        (["bartowski/Qwen2.5-7B-Instruct-GGUF"], True),
        (["model-q4_k_m"], True),
        (["gpt-4o-mini"], False),
        (["claude-3-5-sonnet"], False),
        (["anthropic/claude-3.5-sonnet"], False),
        (["my-model"], None),
        ([], None),
    ],
)
def test_model_name_hint(names: list[str], hint: bool | None) -> None:
    """Model names hint at local or cloud only when the pattern is clear."""
    assert model_name_hint(names) is hint


kinds = st.sampled_from([*sorted(SELF_HOSTED_KINDS), "openai", "cloud", "self-hosted"])
evidence_lists = st.lists(
    st.builds(ev, kinds, st.integers(min_value=0, max_value=3), st.text(max_size=3)), max_size=12
)


@given(evidence_lists, st.sampled_from(list(Locality)))
def test_verdict_is_consistent(evidence: list[Evidence], where: Locality) -> None:
    """A self-hosted kind is always local, the cloud kind never is."""
    v = decide(evidence, where, host="h.example.com")
    if v.kind in SELF_HOSTED_KINDS:
        assert v.local is True
    if v.kind == "openai":
        assert v.local is False
    if v.kind in SELF_HOSTED_KINDS:
        assert v.scores.get(v.kind, 0) >= 2
    if v.kind == "openai":
        assert v.scores.get("openai", 0) + v.scores.get("cloud", 0) >= 2


@given(evidence_lists, st.sampled_from(list(Locality)))
def test_order_does_not_matter(evidence: list[Evidence], where: Locality) -> None:
    """The verdict depends on the evidence, not on the order it arrived in."""
    a = decide(evidence, where, host="h.example.com")
    b = decide(list(reversed(evidence)), where, host="h.example.com")
    assert (a.kind, a.local) == (b.kind, b.local)
