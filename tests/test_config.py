"""Configuration: precedence, refusal with the key's path, atomic writes, drift."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate.config import (
    Changed,
    Config,
    ConfigApplied,
    ConfigDiff,
    ConfigRefused,
    ConfigWatcher,
    ContextConfig,
    Refused,
    Unchanged,
    load_config,
    parse_config,
    watch_config,
    write_config,
)
from lmgate.context._fit import Chain, Compress, SlidingWindow
from lmgate.observability._events import EventHub
from lmgate.policies._limit import Fixed

BASE = """
[limit]
policy = "fixed"
limit = 4

[queue]
size = 100

[endpoints.gpu-box]
url = "http://127.0.0.1:8080"
models = ["llama-3-8b"]
local = true
context_window = 4096

[endpoints.cloud]
url = "https://api.openai.com/v1"
models = ["gpt-4o"]
api_key_env = "OPENAI_API_KEY"
limit = { policy = "fixed", limit = 32 }
"""


@pytest.fixture
def anyio_backend(virtual_backend: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Drift tests run on trio's MockClock: minutes of polling in milliseconds."""
    return virtual_backend


def _file(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "lmgate.toml"
    path.write_text(text)
    return path


def test_file_builds_endpoints_and_policies(tmp_path: Path) -> None:
    """A file describes endpoints, their limits and the scheduler's settings."""
    config = load_config(_file(tmp_path), env={})
    gpu, cloud = config.endpoints()
    assert gpu == Endpoint(
        "gpu-box",
        url="http://127.0.0.1:8080",
        models=("llama-3-8b",),
        local=True,
        context_window=4096,
        probe=True,
    )
    assert cloud.limit == Fixed(32)
    assert cloud.api_key_env == "OPENAI_API_KEY"
    assert config.limit_policy() == Fixed(4)
    assert config.scheduler_kwargs() == {
        "queue_size": 100,
        "aging": 10.0,
        "grace": 5.0,
        "tick_interval": 1.0,
        "mailbox_size": 4096,
        "context": ContextConfig(),
        "limit": Fixed(4),
    }


def test_precedence_file_then_env_then_arguments(tmp_path: Path) -> None:
    """Env overrides the file and arguments override both, key by key."""
    env = {
        "LMGATE_QUEUE__SIZE": "7",
        "LMGATE_QUEUE__AGING": "2.5",
        "LMGATE_ENDPOINTS__GPU_BOX__MODELS": '["a", "b"]',
        "OTHER": "x",
    }
    config = load_config(_file(tmp_path), env=env, overrides={"queue.aging": 1.0})
    assert config.queue.size == 7  # env over file
    assert config.queue.aging == 1.0  # argument over env
    assert config.endpoint_configs["gpu-box"].models == ["a", "b"]  # _ matches -
    assert config.endpoint_configs["gpu-box"].url == "http://127.0.0.1:8080"  # file kept


def test_default_path_comes_from_env(tmp_path: Path) -> None:
    """LMGATE_CONFIG names the file; a named file that is missing is an error."""
    path = _file(tmp_path)
    assert load_config(env={"LMGATE_CONFIG": str(path)}).queue.size == 100
    with pytest.raises(InvalidParameter, match="not found"):
        load_config(tmp_path / "missing.toml", env={})


REFUSALS = [
    ("unknown key in file", "[queue]\nsizes = 3\n", {}, "queue.sizes", "unknown key"),
    ("unknown section", "[queues]\nsize = 3\n", {}, "queues", "unknown key"),
    (
        "unknown endpoint key",
        '[endpoints.a]\nurl = "http://a"\nmodel = "m"\n',
        {},
        "endpoints.a.model",
        "unknown key",
    ),
    ("wrong type", '[queue]\nsize = "big"\n', {}, "queue.size", "Expected `int`"),
    ("bool for a number", "[queue]\nsize = true\n", {}, "queue.size", "Expected `int`"),
    ("number for a bool", "[watch]\nenabled = 1\n", {}, "watch.enabled", "Expected `bool`"),
    ("out of range", "[context]\nthreshold = 1.5\n", {}, "context.threshold", "out of range"),
    ("non-finite", "[queue]\naging = inf\n", {}, "queue.aging", "finite"),
    ("bad url", '[endpoints.a]\nurl = "ftp://a"\n', {}, "endpoints.a.url", "http(s)"),
    ("bad limit", '[limit]\npolicy = "fixed"\nlimit = 0\n', {}, "limit.limit", "[1, 1000000]"),
    ("unknown policy", '[limit]\npolicy = "magic"\n', {}, "limit.policy", "unknown policy"),
    (
        "unknown policy setting",
        '[limit]\npolicy = "fixed"\nmax = 3\n',
        {},
        "limit.max",
        "unknown key",
    ),
    (
        "a stored key",
        '[endpoints.a]\nurl = "http://a"\napi_key = "sk-1"\n',
        {},
        "endpoints.a.api_key",
        "api_key_env",
    ),
    ("bad env value", "", {"LMGATE_QUEUE__SIZE": "lots"}, "queue.size", "LMGATE_QUEUE__SIZE"),
    ("unknown env key", "", {"LMGATE_QUEUE__SIZ": "1"}, "queue.siz", "LMGATE_QUEUE__SIZ"),
    ("empty env segment", "", {"LMGATE_QUEUE____SIZE": "1"}, "LMGATE_QUEUE____SIZE", "empty"),
    ("not TOML", "[queue\n", {}, "lmgate.toml", "not valid TOML"),
    (
        "null byte in a name",
        '[endpoints."a\\u0000"]\nurl = "http://a"\n',
        {},
        "endpoints.a\x00.name",
        "null byte",
    ),
]


@pytest.mark.parametrize(
    ("text", "env", "field", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_bad_config_is_refused_with_path_and_reason(
    text: str, env: dict[str, str], field: str, reason: str
) -> None:
    """Unknown keys and bad values are refused whole, naming the key path and why."""
    with pytest.raises(InvalidParameter) as info:
        parse_config(text.encode(), env)
    assert info.value.field == field
    assert reason in str(info.value)


def test_write_is_atomic_private_and_round_trips(tmp_path: Path) -> None:
    """write_config leaves no temp file, uses 0600 when secrets are named, reloads equal."""
    config = load_config(_file(tmp_path), env={})
    out = tmp_path / "out.toml"
    write_config(out, config)
    assert load_config(out, env={}) == config
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert "sk-" not in out.read_text()
    assert "OPENAI_API_KEY" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lmgate.toml", "out.toml"]
    plain = parse_config(b'[endpoints.a]\nurl = "http://a"\n', {})
    write_config(out, plain)
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the rename leaves the old file intact and no temp file behind."""
    out = _file(tmp_path)
    before = out.read_bytes()

    def boom(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="I/O"):
        write_config(out, parse_config(b"", {}))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lmgate.toml"]


_names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        _names,
        st.tuples(
            st.text(max_size=10).filter(lambda s: "\x00" not in s),
            st.integers(1, 10**6),
            st.booleans(),
        ),
        max_size=3,
    ),
    st.integers(0, 10_000),
    st.floats(0.01, 1.0),
)
def test_any_config_round_trips_through_toml(
    eps: dict[str, tuple[str, int, bool]], size: int, threshold: float
) -> None:
    """Whatever write_config writes, load_config reads back equal."""
    import tempfile

    raw: dict[str, Any] = {
        "queue.size": size,
        "context.threshold": threshold,
        **{f"endpoints.{n}.url": "http://h/" + n for n in eps},
        **{f"endpoints.{n}.models": [m] if m else [] for n, (m, _, _) in eps.items()},
        **{f"endpoints.{n}.context_window": w for n, (_, w, _) in eps.items()},
        **{f"endpoints.{n}.local": loc for n, (_, _, loc) in eps.items()},
    }
    config = parse_config(None, {}, raw)
    with tempfile.TemporaryDirectory() as d:
        write_config(Path(d) / "c.toml", config)
        assert load_config(Path(d) / "c.toml", env={}) == config


def test_context_settings_build_strategies() -> None:
    """The context section picks the strategy chain; auto depends on locality."""
    config = parse_config(b'[context]\nstrategy = ["compress", "sliding"]\n', {})
    assert config.context.build(local=True) == Chain(Compress(), SlidingWindow())
    auto = parse_config(b"", {}).context
    assert auto.build(local=True) == Chain(SlidingWindow(), Compress())
    with pytest.raises(InvalidParameter):
        parse_config(b'[context]\nstrategy = ["auto", "sliding"]\n', {})


# -- drift ------------------------------------------------------------------------------


def test_watcher_reports_a_change_once_and_adopts_it_on_commit(tmp_path: Path) -> None:
    """Same bytes: unchanged.  New bytes: a diff, adopted only when committed."""
    watcher = ConfigWatcher.load(_file(tmp_path), env={})
    assert watcher.check(BASE.encode(), {}) == Unchanged()
    new = BASE.replace("limit = 4", "limit = 6") + '\n[endpoints.b]\nurl = "http://b"\n'
    new = new.replace("[endpoints.cloud]", "[endpoints.cloud2]")
    change = watcher.check(new.encode(), {})
    assert isinstance(change, Changed)
    assert change.diff == ConfigDiff(added=("cloud2", "b"), removed=("cloud",), limits=("gpu-box",))
    assert watcher.config.queue.size == 100
    assert watcher.config.limit_policy() == Fixed(4)
    watcher.commit(change)
    assert watcher.config == change.config
    assert watcher.check(new.encode(), {}) == Unchanged()


def test_watcher_refuses_whole_and_reports_once(tmp_path: Path) -> None:
    """An invalid new file is refused once; the running config stays and is marked stale."""
    watcher = ConfigWatcher.load(_file(tmp_path), env={})
    bad = BASE.replace("size = 100", "size = -1").encode()
    refused = watcher.check(bad, {})
    assert isinstance(refused, Refused)
    assert refused.field == "queue.size"
    assert watcher.check(bad, {}) == Unchanged()
    assert watcher.config.queue.size == 100
    assert watcher.statistics().stale
    assert isinstance(watcher.check(None, {}), Refused)  # deleted file: refused too


def test_env_change_is_drift_too(tmp_path: Path) -> None:
    """A changed LMGATE_* variable changes the config; an unrelated one does not."""
    watcher = ConfigWatcher.load(_file(tmp_path), env={})
    assert watcher.check(BASE.encode(), {"HOME": "/x"}) == Unchanged()
    change = watcher.check(BASE.encode(), {"LMGATE_ENDPOINTS__GPU_BOX__CONTEXT_WINDOW": "8192"})
    assert isinstance(change, Changed)
    assert change.diff.replaced == ("gpu-box",)
    # a whitespace-only edit is new bytes but the same config
    assert watcher.check((BASE + "\n\n").encode(), {}) == Unchanged()


@pytest.mark.anyio
async def test_drift_is_applied_or_refused_whole_in_virtual_time(tmp_path: Path) -> None:
    """The loop polls on its timer, applies valid changes whole, refuses the rest whole."""
    path = _file(tmp_path)
    env: dict[str, str] = {}
    watcher = ConfigWatcher.load(path, env=env)
    hub = EventHub(log_events=False)
    events = hub.subscribe()
    applied: list[tuple[float, Changed]] = []
    refusals: list[Refused] = []
    fail_next = False
    start = anyio.current_time()

    async def on_change(change: Changed) -> None:
        if fail_next:
            raise RuntimeError("endpoint would not drain")
        applied.append((anyio.current_time() - start, change))

    async def on_refused(refused: Refused) -> None:
        refusals.append(refused)

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(
                watch_config,
                path,
                5.0,
                on_change,
                watcher=watcher,
                env=env,
                hub=hub,
                on_refused=on_refused,
            )
        )
        await anyio.sleep(12)
        assert applied == []
        assert watcher.statistics().checks == 2
        path.write_text(BASE.replace("size = 100", "size = 50"))
        await anyio.sleep(5)
        ((t, change),) = applied
        assert t == 15.0
        assert change.diff == ConfigDiff(queue=True)
        assert watcher.config.queue.size == 50
        path.write_text("[queue\n")
        await anyio.sleep(20)
        assert len(refusals) == 1
        assert watcher.config.queue.size == 50
        env["LMGATE_QUEUE__SIZE"] = "9"
        path.write_text(BASE)
        await anyio.sleep(5)
        assert applied[-1][1].config.queue.size == 9
        assert watcher.config.queue.size == 9
        fail_next = True
        path.write_text(BASE.replace("limit = 4", "limit = 5"))
        await anyio.sleep(5)
        assert watcher.config.limit_policy() == Fixed(4)  # refused whole: old config kept
        assert "drain" in refusals[-1].reason
        tg.cancel_scope.cancel()
    kinds = [type(e) for e in iter(events.get_nowait, None)]
    assert kinds == [ConfigApplied, ConfigRefused, ConfigApplied, ConfigRefused]


def test_no_sources_give_the_defaults() -> None:
    """With no file, env or arguments the config is all defaults and names no endpoint."""
    config = parse_config(None, {"PATH": "/bin"})
    assert config == Config()
    assert config.endpoints() == []
    assert config.limit_policy() is None
    assert config.scheduler_kwargs()["queue_size"] == 1024
