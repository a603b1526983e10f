"""The scheduler: facade, admission, queue, leases, and the controller actor.

``Scheduler`` is what users hold.  Inside, ``Admission`` (``_admission.py``)
decides which endpoint a request goes to and when, the queue
(``_queue.py``) orders waiters, ``Lease`` (``_lease.py``) is the granted
slot that every exit path releases, and the ``AdmissionController`` actor
(``_controller.py``) applies the endpoint actors' news.  It imports every
layer below it (actors, transports, detect, config, context, policies) and
nothing above it (coordination, sim, bench, cli).
"""

from lmgate.scheduler._hooks import RequestHook
from lmgate.scheduler._lease import Lease
from lmgate.scheduler._options import QueueOptions, ResourceOptions
from lmgate.scheduler._scheduler import Scheduler
from lmgate.scheduler._stats import EndpointStats, Stats

__all__ = [
    "EndpointStats",
    "Lease",
    "QueueOptions",
    "RequestHook",
    "ResourceOptions",
    "Scheduler",
    "Stats",
]
