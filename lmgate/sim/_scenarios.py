"""Scenario files: servers, the load on them, and what goes wrong when.

A scenario is a TOML file so that the situations an adaptive limit must
survive ("capacity halves at t=300 s", "a spike to 3x", "a black hole") are
written down once, diffable, and replayed identically by tests, benchmarks
and the committed simulation report.  Files are validated whole on load: a
bad key fails with :class:`~lmgate.InvalidParameter` naming its path
(``servers[0].knee``), before anything runs.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.sim._config import SimConfig
from lmgate.sim._dist import Dist
from lmgate.sim._faults import FaultSchedule, FaultStep
from lmgate.sim._model import SimServer
from lmgate.sim._stepped import EngineConfig, SteppedServer

__all__ = ["ClientSpec", "Phase", "Scenario", "list_scenarios", "load_scenario"]

_MAX_FILE = 1 << 20


@final
class Phase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """From ``at`` seconds on, an open client's ``rate`` or a closed one's ``clients``."""

    at: float
    rate: float | None = None
    clients: int | None = None

    def __post_init__(self) -> None:
        check_float("at", self.at)
        if self.rate is not None:
            check_float("rate", self.rate)
        if self.clients is not None:
            check_int("clients", self.clients, low=0, high=100_000)


@final
class ClientSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One source of load.

    ``open`` clients arrive as a Poisson process of ``rate`` per second;
    ``closed`` ones are ``clients`` workers that each wait for an answer and
    ``think`` before the next request.  ``phases`` change the rate or the
    number of workers over time.  Sizes left unset fall back to the server's
    distributions; ``timeout``, ``priority`` and ``max_tokens`` (the output
    cap each request states, which also caps its sampled output) are what
    the client asks the scheduler for.
    """

    name: str
    mode: Literal["open", "closed"] = "open"
    server: str | None = None
    rate: float = 0.0
    clients: int = 0
    phases: tuple[Phase, ...] = ()
    think: Dist = Dist.fixed(0)
    prompt_tokens: Dist | None = None
    output_tokens: Dist | None = None
    max_tokens: int | None = None
    timeout: float | None = None
    priority: int = 0
    start: float = 0.0
    stop: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 256:
            raise InvalidParameter("name must be a short non-empty string", field="name")
        if self.mode not in ("open", "closed"):
            raise InvalidParameter("mode must be 'open' or 'closed'", field="mode")
        check_float("rate", self.rate)
        check_int("clients", self.clients, low=0, high=100_000)
        check_int("priority", self.priority, low=-1_000_000, high=1_000_000)
        if self.max_tokens is not None:
            check_int("max_tokens", self.max_tokens, low=1, high=1_000_000)
        check_float("start", self.start)
        if self.timeout is not None:
            check_float("timeout", self.timeout, low=0.0, low_open=True)
        if self.stop is not None and check_float("stop", self.stop) <= self.start:
            raise InvalidParameter("stop must be after start", field="stop")
        key = "rate" if self.mode == "open" else "clients"
        for i, phase in enumerate(self.phases):
            if getattr(phase, key) is None:
                raise InvalidParameter(
                    f"every phase of a {self.mode}-loop client must set {key}",
                    field=f"phases[{i}].{key}",
                )
        msgspec.structs.force_setattr(
            self, "phases", tuple(sorted(self.phases, key=lambda p: p.at))
        )


@final
class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Servers, clients and timed events for ``duration`` seconds of simulated time."""

    name: str
    duration: float
    servers: tuple[SimConfig, ...] = ()
    clients: tuple[ClientSpec, ...] = ()
    #: Servers that step like vLLM, llama.cpp or Ollama (``lmgate.sim._stepped``).
    engines: tuple[EngineConfig, ...] = ()
    events: tuple[FaultStep, ...] = ()
    description: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        check_float("duration", self.duration, low=0.0, low_open=True)
        check_int("seed", self.seed, low=0)
        if not self.servers and not self.engines:
            raise InvalidParameter("a scenario needs at least one server", field="servers")
        names = [s.name for s in (*self.servers, *self.engines)]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidParameter(f"server name {name!r} repeats", field=f"servers[{i}].name")
        if not self.clients:
            raise InvalidParameter("a scenario needs at least one client", field="clients")
        clients = [c.name for c in self.clients]
        for i, client in enumerate(self.clients):
            if client.name in clients[:i]:
                raise InvalidParameter(
                    f"client name {client.name!r} repeats", field=f"clients[{i}].name"
                )
            self._check_target(client.server, f"clients[{i}].server", names)
        for i, event in enumerate(self.events):
            self._check_target(event.server, f"events[{i}].server", names)
            if event.at > self.duration:
                raise InvalidParameter(
                    "event after the end of the scenario", field=f"events[{i}].at"
                )

    @staticmethod
    def _check_target(target: str | None, field: str, names: list[str]) -> None:
        if target is None:
            if len(names) > 1:
                raise InvalidParameter("with several servers, name one", field=field)
        elif target not in names:
            raise InvalidParameter(f"no server named {target!r}", field=field)

    def server(self, name: str | None = None) -> SimConfig | EngineConfig:
        """The config of server ``name`` (of the only one when None)."""
        every = (*self.servers, *self.engines)
        if name is None:
            return every[0]
        for config in every:
            if config.name == name:
                return config
        raise InvalidParameter(f"no server named {name!r}", field="name")

    def build_servers(self) -> dict[str, SimServer | SteppedServer]:
        """A fresh simulated server for each configured one, by name."""
        out: dict[str, SimServer | SteppedServer] = {c.name: SimServer(c) for c in self.servers}
        out.update({c.name: SteppedServer(c) for c in self.engines})
        return out

    def schedule(self, server: str | None = None) -> FaultSchedule:
        """The fault schedule for server ``server`` (the only one when None)."""
        name = self.server(server).name
        steps = tuple(e for e in self.events if e.server in (None, name))
        return FaultSchedule(steps=steps)


def list_scenarios() -> list[str]:
    """The names of the scenarios shipped with lmgate, sorted."""
    folder = resources.files("lmgate.sim") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``"steady"``) or any scenario file by path."""
    if isinstance(name_or_path, Path) or (
        isinstance(name_or_path, str) and (name_or_path.endswith(".toml") or "/" in name_or_path)
    ):
        path = Path(name_or_path)
        try:
            with path.open("rb") as f:
                raw = f.read(_MAX_FILE + 1)
        except OSError as exc:
            raise InvalidParameter(f"cannot read scenario {str(path)[:200]!r}: {exc}") from exc
        stem = path.stem
    elif isinstance(name_or_path, str):
        if name_or_path not in list_scenarios():
            known = ", ".join(list_scenarios())
            raise InvalidParameter(
                f"no scenario named {name_or_path[:80]!r}; shipped: {known}", field="name"
            )
        stem = name_or_path
        raw = (resources.files("lmgate.sim") / "scenarios" / f"{stem}.toml").read_bytes()
    else:
        raise InvalidParameter("give a scenario name or a path", field="name_or_path")
    if len(raw) > _MAX_FILE:
        raise InvalidParameter("scenario file is larger than 1 MiB", field="name_or_path")
    return parse_scenario(raw, name=stem)


def parse_scenario(text: str | bytes, *, name: str = "scenario") -> Scenario:
    """Validate TOML text into a :class:`Scenario`; ``name`` unless it sets one."""
    try:
        data: dict[str, Any] = tomllib.loads(
            text.decode("utf-8") if isinstance(text, bytes) else text
        )
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidParameter(f"scenario {name!r} is not valid TOML: {exc}") from exc
    data.setdefault("name", name)
    try:
        return msgspec.convert(data, Scenario)
    except msgspec.ValidationError as exc:
        message, field = _locate(exc)
        raise InvalidParameter(f"scenario {name!r}: {message} (at {field})", field=field) from exc


def _locate(exc: msgspec.ValidationError) -> tuple[str, str]:
    """The message and the dotted key path of a validation error."""
    message, _, where = str(exc).rpartition(" - at `")
    if not message:
        message, where = str(exc), "$`"
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    cause = exc.__cause__
    inner = cause.field if isinstance(cause, InvalidParameter) else None
    if inner is None and message.startswith("Object contains unknown field `"):
        inner = message.split("`")[1]
    if inner is None and message.startswith("Object missing required field `"):
        inner = message.split("`")[1]
    if inner:
        path = f"{path}.{inner}" if path else inner
    return message, path or "$"
