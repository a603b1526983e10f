"""Configuration: ``lmgate.toml``, then ``LMGATE_*`` env vars, then arguments.

One import for everything configuration, kept in modules of one idea each:

- ``_config_schema.py``: the sections, frozen msgspec Structs that refuse
  unknown keys and bad values with the key's path;
- ``_config_load.py``: reading and merging the sources, in that precedence,
  and writing a config back atomically;
- ``_config_watch.py``: drift -- the file or env changed under a running
  scheduler -- detected by hash and applied whole or refused whole;
- ``_toml.py``: the TOML writer and the atomic file write.

API keys are never configuration: an endpoint names the env var that
holds its key (``api_key_env``).
"""

from __future__ import annotations

from lmgate._config_load import (
    ENV_PREFIX,
    ENV_RESERVED,
    MAX_FILE,
    load_config,
    parse_config,
    read_source,
    resolve_path,
    write_config,
)
from lmgate._config_schema import (
    Config,
    ContextConfig,
    EndpointConfig,
    LimitConfig,
    QueueConfig,
    SchedulerConfig,
    WatchConfig,
)
from lmgate._config_watch import (
    Changed,
    ConfigApplied,
    ConfigDiff,
    ConfigRefused,
    ConfigWatcher,
    Refused,
    Unchanged,
    WatcherStatistics,
    diff_configs,
    watch_config,
)
from lmgate._toml import dumps_toml

__all__ = [
    "ENV_PREFIX",
    "ENV_RESERVED",
    "MAX_FILE",
    "Changed",
    "Config",
    "ConfigApplied",
    "ConfigDiff",
    "ConfigRefused",
    "ConfigWatcher",
    "ContextConfig",
    "EndpointConfig",
    "LimitConfig",
    "QueueConfig",
    "Refused",
    "SchedulerConfig",
    "Unchanged",
    "WatchConfig",
    "WatcherStatistics",
    "diff_configs",
    "dumps_toml",
    "load_config",
    "parse_config",
    "read_source",
    "resolve_path",
    "watch_config",
    "write_config",
]
