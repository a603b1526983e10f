"""Configuration: ``lmgate.toml``, then ``LMGATE_*`` env vars, then arguments.

One import for everything configuration, kept in modules of one idea each:

- ``_schema.py``: the sections, frozen msgspec Structs that refuse
  unknown keys and bad values with the key's path;
- ``_load.py``: reading and merging the sources, in that precedence,
  and writing a config back atomically;
- ``_watch.py``: drift -- the file or env changed under a running
  scheduler -- detected by hash and applied whole or refused whole;
- ``_toml.py``: TOML writing (``tomli-w``) and the atomic file write.

API keys are never configuration: an endpoint names the env var that
holds its key (``api_key_env``).  Imports ``Endpoint``, policies, context,
security and observability; the scheduler applies a config, never the
reverse.
"""

from lmgate.config._load import (
    ENV_PREFIX,
    ENV_RESERVED,
    MAX_FILE,
    load_config,
    parse_config,
    read_source,
    resolve_path,
    write_config,
)
from lmgate.config._schema import (
    Config,
    ContextConfig,
    EndpointConfig,
    LimitConfig,
    QueueConfig,
    SchedulerConfig,
    WatchConfig,
)
from lmgate.config._toml import dumps_toml
from lmgate.config._watch import (
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

__all__ = [
    "Changed",
    "Config",
    "ConfigApplied",
    "ConfigDiff",
    "ConfigRefused",
    "ConfigWatcher",
    "ContextConfig",
    "ENV_PREFIX",
    "ENV_RESERVED",
    "EndpointConfig",
    "LimitConfig",
    "MAX_FILE",
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
