"""A simulated endpoint on loopback that records how many calls it serves at once.

Each call is one TCP connection: the client sends ``<seconds>\\n``, the
server holds the call that long and answers ``ok\\n``.  Concurrency is
counted at the server, so it is the endpoint's true load whatever the
clients believe -- including clients that were killed mid-call.
"""

from __future__ import annotations

import contextlib
import socketserver
import threading
import time
from typing import Any


class ConcurrencyServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.window_peak = 0
        self.calls = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    hold = float(line)
                except ValueError:
                    return
                outer._enter()
                try:
                    time.sleep(hold)
                finally:
                    # Done before the answer leaves: a client cannot hear
                    # it (and pass its slot on) while it is still counted.
                    outer._leave()
                with contextlib.suppress(OSError):
                    self.wfile.write(b"ok\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _enter(self) -> None:
        with self.lock:
            self.current += 1
            self.calls += 1
            self.peak = max(self.peak, self.current)
            self.window_peak = max(self.window_peak, self.current)

    def _leave(self) -> None:
        with self.lock:
            self.current -= 1

    def mark(self) -> int:
        """Start a new observation window; return the peak of the last one."""
        with self.lock:
            peak, self.window_peak = self.window_peak, self.current
            return peak

    def __enter__(self) -> ConcurrencyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
