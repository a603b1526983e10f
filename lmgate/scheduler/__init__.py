"""The scheduler facade, the admission controller and their messages."""

from lmgate.scheduler._lease import Lease
from lmgate.scheduler._scheduler import Scheduler
from lmgate.scheduler._stats import EndpointStats, Stats

__all__ = ["EndpointStats", "Lease", "Scheduler", "Stats"]
