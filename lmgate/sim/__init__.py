"""Simulated model servers for tests, benchmarks and demos.

``SimServer`` is an in-process continuous-batching server that plugs in as
the ``call`` of ``Scheduler.run()``; faults can be injected by method or by a
``FaultSchedule``; scenario files describe whole situations (servers, load,
timed events) and ``run_load`` generates their traffic; ``lmgate.sim.http``
serves the same engine over HTTP in each server's dialect.  Everything
reads time through anyio only, so it all runs in virtual time.  Imports
``Endpoint``, policies and below; never actors, transports or the
scheduler (the benchmark harness that drives a scheduler over these is
:mod:`lmgate.bench`).
"""

from lmgate.sim._config import SimConfig, SimKVOverflow, SimResult, SimStatistics
from lmgate.sim._dist import Dist
from lmgate.sim._faults import FaultAction, FaultSchedule, FaultStep, run_schedule
from lmgate.sim._health import sim_health
from lmgate.sim._load import ClientLoad, LoadReport, LoadRequest, Submit, run_load
from lmgate.sim._model import SimLease, SimServer
from lmgate.sim._scenarios import (
    ClientSpec,
    Phase,
    Scenario,
    list_scenarios,
    load_scenario,
    parse_scenario,
)
from lmgate.sim.http._app import (
    HTTP_DIALECTS,
    SimHTTPConfig,
    SimHTTPServer,
    SimHTTPServerStatistics,
    sim_transport,
)

__all__ = [
    "ClientLoad",
    "ClientSpec",
    "Dist",
    "FaultAction",
    "FaultSchedule",
    "FaultStep",
    "HTTP_DIALECTS",
    "LoadReport",
    "LoadRequest",
    "Phase",
    "Scenario",
    "SimConfig",
    "SimHTTPConfig",
    "SimHTTPServer",
    "SimHTTPServerStatistics",
    "SimKVOverflow",
    "SimLease",
    "SimResult",
    "SimServer",
    "SimStatistics",
    "Submit",
    "list_scenarios",
    "load_scenario",
    "parse_scenario",
    "run_load",
    "run_schedule",
    "sim_health",
    "sim_transport",
]
