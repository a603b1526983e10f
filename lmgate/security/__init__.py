"""Secrets, exposure checks and temp files: what must never leak or linger.

``Secret``/``SecretStr`` hold API keys (and URL credentials) so that no
``repr``, log line, event or error shows them; ``RedactingFilter`` scrubs
log records.  The exposure check (a local model server listening on every
interface, or running as root) and the stale temp-file cleanup touch the
machine, so the scheduler runs them only when asked.  Imports only lmgate's
errors, validation helpers and observability.
"""

from lmgate.security._exposure import ListenerReport, ServerExposed, ServerRunsAsRoot
from lmgate.security._secrets import RedactingFilter, Secret, SecretStr, redact
from lmgate.security._tempfiles import TempCleanup, clean_stale_temp_files

__all__ = [
    "ListenerReport",
    "RedactingFilter",
    "Secret",
    "SecretStr",
    "ServerExposed",
    "ServerRunsAsRoot",
    "TempCleanup",
    "clean_stale_temp_files",
    "redact",
]
