"""Reading a configuration: the file, then ``LMGATE_*`` env vars, then arguments.

Each source overrides the one before, key by key.  Env var names map to key
paths with ``__`` between levels (``LMGATE_QUEUE__SIZE=512``,
``LMGATE_ENDPOINTS__GPU_BOX__URL=...``; ``_`` and ``-`` in endpoint names
match each other); their values are read as TOML values when they parse as
one (``8``, ``0.5``, ``true``, ``["a", "b"]``) and as plain strings
otherwise.  The merged result is validated whole: an unknown key or a bad
value is refused with its key path, its source and the reason, and nothing
of it is used.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from lmgate._errors import InvalidParameter
from lmgate.config._schema import Config, EndpointConfig, convert, shape_limits
from lmgate.config._toml import atomic_write, dumps_toml, toml_value

__all__ = [
    "ENV_PREFIX",
    "ENV_RESERVED",
    "MAX_FILE",
    "load_config",
    "parse_config",
    "read_source",
    "resolve_path",
    "write_config",
]

ENV_PREFIX = "LMGATE_"
#: LMGATE_* variables that are not config keys.
ENV_RESERVED = frozenset({"LMGATE_CONFIG"})
MAX_FILE = 1024 * 1024


def _tree(
    pairs: Mapping[str, Any], origin: str, out: dict[str, Any], origins: dict[str, str]
) -> None:
    for dotted, value in pairs.items():
        keys = dotted.split(".")
        node = out
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise InvalidParameter(f"{dotted}: conflicting keys ({origin})", field=dotted)
            node = nxt
        node[keys[-1]] = value
        origins[dotted] = origin


def _env_pairs(env: Mapping[str, str], endpoints: Any) -> dict[str, tuple[Any, str]]:
    names = (
        {n.lower().replace("-", "_"): n for n in endpoints} if isinstance(endpoints, dict) else {}
    )
    pairs: dict[str, tuple[Any, str]] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in ENV_RESERVED:
            continue
        keys = var[len(ENV_PREFIX) :].lower().split("__")
        if not all(keys):
            raise InvalidParameter(f"{var}: empty key in the name", field=var)
        if keys[0] == "endpoints" and len(keys) > 1:
            keys[1] = names.get(keys[1], keys[1])
        pairs[".".join(keys)] = (toml_value(env[var]), var)
    return pairs


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_config(
    file_bytes: bytes | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "lmgate.toml",
) -> Config:
    """The sans-IO core of :func:`load_config`: sources in, validated Config out."""
    raw: dict[str, Any] = {}
    if file_bytes is not None:
        if len(file_bytes) > MAX_FILE:
            raise InvalidParameter(f"{source}: larger than {MAX_FILE} bytes", field=source)
        try:
            raw = tomllib.loads(file_bytes.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidParameter(f"{source}: not valid TOML: {exc}", field=source) from None
    origins: dict[str, str] = {}
    env_tree: dict[str, Any] = {}
    env_pairs = _env_pairs(env, raw.get("endpoints"))
    _tree({k: v for k, (v, _) in env_pairs.items()}, "env", env_tree, origins)
    origins.update({k: var for k, (_, var) in env_pairs.items()})
    arg_tree: dict[str, Any] = {}
    _tree(dict(overrides or {}), "arguments", arg_tree, origins)
    merged = _merge(_merge(raw, env_tree), arg_tree)
    for name, ep in (merged.get("endpoints") or {}).items():
        if isinstance(ep, dict) and "api_key" in ep:
            raise InvalidParameter(
                f"endpoints.{name}.api_key: keys are not stored in config;"
                " set api_key_env to the name of the env var that holds it",
                field=f"endpoints.{name}.api_key",
            )
    shape_limits(merged)
    try:
        eps = merged.pop("endpoints", {})
        if not isinstance(eps, dict):
            raise InvalidParameter("endpoints: must be a table of endpoints", field="endpoints")
        config: Config = convert(merged, Config, "")
        converted = {n: convert(ep, EndpointConfig, f".endpoints.{n}") for n, ep in eps.items()}
        config = msgspec.structs.replace(config, endpoint_configs=converted)
        config.endpoints()
        config.limit_policy()
    except InvalidParameter as exc:
        field = (exc.field or "").lstrip(".")
        where = next((o for k, o in origins.items() if field.startswith(k)), source)
        raise InvalidParameter(f"{str(exc).lstrip('.')} (from {where})", field=field) from None
    return config


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` (default ``$LMGATE_CONFIG`` or ``./lmgate.toml`` if present),
    overlay ``LMGATE_*`` env vars and then ``overrides`` (dotted keys allowed)."""
    env = os.environ if env is None else env
    p = resolve_path(path, env)
    data = read_source(p)
    if p is not None and data is None and (path is not None or env.get("LMGATE_CONFIG")):
        raise InvalidParameter(f"config file {str(p)[:200]!r} not found", field="path")
    return parse_config(data, env, overrides, source=str(p) if p else "lmgate.toml")


def resolve_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """``path``, else ``$LMGATE_CONFIG``, else ``./lmgate.toml`` if it exists, else None."""
    if path is not None:
        return Path(path)
    if env.get("LMGATE_CONFIG"):
        return Path(env["LMGATE_CONFIG"])
    return Path("lmgate.toml") if Path("lmgate.toml").exists() else None


def read_source(path: Path | None) -> bytes | None:
    """The file's bytes (at most one past the size cap), or None if there is none."""
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None


def write_config(path: str | os.PathLike[str], config: Config) -> None:
    """Write ``config`` as TOML, atomically: a reader sees the old file or the new.

    Mode 0600 when the config names secrets (``api_key_env``), so even the
    names of credentials are not world-readable; 0644 otherwise.
    """
    if not isinstance(config, Config):
        raise InvalidParameter("config must be a Config", field="config")
    text = dumps_toml(config.to_dict())
    mode = 0o600 if config.holds_secret_refs() else 0o644
    atomic_write(path, text.encode("utf-8"), mode=mode)
