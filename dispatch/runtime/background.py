"""Background work in the serving process: snapshots and liveness sweeps.

Started by the app factory, which gunicorn calls in its worker after forking, so the
threads live in the process that owns the state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dispatch.domain.models import Delivery
from dispatch.runtime.webhooks import Outbox, Sender
from dispatch.service import DispatchService

log = logging.getLogger("dispatch.background")
FILES_SWEEP_EVERY = 3600.0


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


def _led(lead: Callable[[], bool], action: Callable[[], object]) -> Callable[[], object]:
    return lambda: action() if lead() else None


class _LedOutbox:
    """The service's outbox, empty while another instance leads."""

    def __init__(self, outbox: Outbox, lead: Callable[[], bool]) -> None:
        self.outbox = outbox
        self.lead = lead

    def due_deliveries(self) -> list[Delivery]:
        return self.outbox.due_deliveries() if self.lead() else []

    def record_delivery(self, job_id: str, generation: int, error: str | None) -> None:
        self.outbox.record_delivery(job_id, generation, error)


class Runtime:
    """Owns the background threads and the orderly shutdown of one app.

    With a backend shared by several instances, the background work runs only while
    this instance leads it (``UnitOfWork.leads``)."""

    def __init__(self, service: DispatchService) -> None:
        self.service = service
        settings = service.settings
        lead = service.uow.leads
        # Liveness must be noticed well within one heartbeat timeout, even when the
        # purge interval (cleanup_interval) is long.
        sweep_every = min(settings.cleanup_interval,
                          max(0.1, settings.engine_heartbeat_timeout / 4))
        self.threads: list[Any] = [
            Periodic("snapshot", settings.auto_save_interval,
                     _led(lead, service.maintenance.snapshot)),
            Periodic("sweeper", sweep_every, _led(lead, service.maintenance.sweep)),
            Periodic("purge", settings.cleanup_interval, _led(lead, self._purge)),
            # Hourly is enough for what is kept a day or more.
            Periodic("files", FILES_SWEEP_EVERY, _led(lead, service.maintenance.sweep_files)),
        ]
        self.sender = Sender(_LedOutbox(service.maintenance, lead), settings, service.clock)
        self.threads.append(self.sender)
        self._closed = False
        self._close_lock = threading.Lock()

    def _purge(self) -> None:
        self.service.maintenance.purge()
        self.service.maintenance.expire_idempotency_keys()

    def start(self) -> None:
        self.service.uow.start()
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
            self.service.maintenance.snapshot()
        except Exception:
            log.exception("final snapshot failed; the journal still holds every change")
        self.service.close()
        log.info("state saved, shut down")
