"""Background work in the serving process: snapshots and liveness sweeps.

Started by the app factory, which gunicorn calls in its worker after forking, so the
threads live in the process that owns the state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dispatch.service import DispatchService
from dispatch.webhooks import Sender

log = logging.getLogger("dispatch.background")


class Periodic(threading.Thread):
    """Runs ``action`` every ``interval`` seconds until stopped; errors are logged."""

    def __init__(self, name: str, interval: float, action: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.action = action
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.action()
            except Exception:  # a failed round must not end the thread
                log.exception("%s failed", self.name)

    def stop(self) -> None:
        self.stopped.set()


class Runtime:
    """Owns the background threads and the orderly shutdown of one app."""

    def __init__(self, service: DispatchService) -> None:
        self.service = service
        settings = service.settings
        # Liveness must be noticed well within one heartbeat timeout, even when the
        # purge interval (cleanup_interval) is long.
        sweep_every = min(settings.cleanup_interval,
                          max(0.1, settings.engine_heartbeat_timeout / 4))
        self.threads: list[Periodic | Sender] = [
            Periodic("snapshot", settings.auto_save_interval, service.snapshot),
            Periodic("sweeper", sweep_every, service.sweep),
            Periodic("purge", settings.cleanup_interval, self._purge),
        ]
        self.sender = Sender(service.maintenance, settings, service.clock)
        self.threads.append(self.sender)
        self._closed = False
        self._close_lock = threading.Lock()

    def _purge(self) -> None:
        self.service.purge()
        self.service.expire_idempotency_keys()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def shutdown(self) -> None:
        """Stop the threads, write the final snapshot, release the state file."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for thread in self.threads:
            thread.stop()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=30)
        try:
            self.service.snapshot()
        except Exception:
            log.exception("final snapshot failed; the journal still holds every change")
        self.service.close()
        log.info("state saved, shut down")
