"""Which window to believe: override, running, configured, default, family."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgate.detect import family_default, resolve_window, server_default


def test_override_wins_over_everything() -> None:
    """The user's figure is used as given."""
    c = resolve_window("m", override=1000, loaded=8192, reported=4096, trained=2048)
    assert (c.tokens, c.source) == (1000, "override")


def test_loaded_beats_configured_and_default() -> None:
    """What the server runs the model with beats what it would configure."""
    c = resolve_window("llama3:8b", loaded=8192, configured=2048, kind="ollama")
    assert (c.tokens, c.source) == (8192, "server: loaded model")


def test_trained_maximum_only_caps() -> None:
    """The trained maximum never raises a window, only caps it."""
    assert resolve_window("m", kind="ollama", trained=131072).tokens == 4096
    capped = resolve_window("m", kind="ollama", trained=2048)
    assert capped.tokens == 2048
    assert "capped" in capped.source


def test_server_defaults() -> None:
    """Ollama and LM Studio have documented defaults; others report theirs."""
    assert server_default("ollama") == 4096
    assert server_default("lmstudio") == 4096
    assert server_default("llamacpp") is None


@pytest.mark.parametrize(
    ("model", "local", "window"),
    [
        ("llama-2-7b-chat", True, 4096),
        ("Meta-Llama-3.1-8B-Instruct", True, 8192),
        ("qwen2.5-coder:7b", True, 8192),
        ("TinyLlama-1.1B", True, 2048),
        ("phi-3-mini-4k-instruct", True, 4096),
        ("some-model-32k", True, 32768),
        ("mystery", True, 4096),
        ("mystery", False, 8192),
        ("gpt-4o-mini", False, 128000),
        ("gpt-4.1", False, 1047576),
        ("gpt-3.5-turbo", False, 16385),
        ("claude-3-5-sonnet-latest", False, 200000),
        ("openai/o3-mini", False, 200000),
    ],
)
def test_family_defaults(model: str, local: bool, window: int) -> None:
    """Local families default to what servers run; cloud ones to their window."""
    assert family_default(model, local=local) == window


@given(
    st.text(min_size=1, max_size=40),
    st.none() | st.integers(1, 10**6),
    st.none() | st.integers(1, 10**6),
    st.none() | st.integers(1, 10**6),
    st.none() | st.integers(1, 10**6),
    st.sampled_from(["ollama", "llamacpp", "vllm", "lmstudio", "unknown"]),
)
def test_window_is_positive_and_never_above_trained(
    model: str,
    loaded: int | None,
    reported: int | None,
    configured: int | None,
    trained: int | None,
    kind: str,
) -> None:
    """Without an override the window is positive and at most the trained max."""
    c = resolve_window(
        model, loaded=loaded, reported=reported, configured=configured, trained=trained, kind=kind
    )
    assert c.tokens >= 1
    if trained is not None:
        assert c.tokens <= trained
