"""The examples in ``examples/`` run as documented and leave nothing held."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("name", ["openai_sdk", "pydantic_ai_agent", "langchain_chat"])
async def test_sdk_and_framework_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    stats = await _load(name).main()
    assert stats.in_flight == 0
    assert stats.outcomes["completed"] >= 1
    assert stats.submitted == sum(stats.outcomes.values())
    assert "in_flight=0" in capsys.readouterr().out


@pytest.mark.anyio
async def test_plain_httpx_example(capsys: pytest.CaptureFixture[str]) -> None:
    stats = await _load("plain_httpx").main()
    assert stats.outcomes["completed"] == 2
    assert stats.in_flight == 0
    out = capsys.readouterr().out
    assert "refused: unknown_model" in out
    assert "finish: length" in out


def test_every_example_is_tested() -> None:
    names = {p.stem for p in EXAMPLES.glob("*.py")}
    assert names == {"openai_sdk", "pydantic_ai_agent", "langchain_chat", "plain_httpx"}
