"""The service: every job and engine, and every rule, behind one object the API, the
CLI and the background threads call.

It is a facade over three parts that change for different reasons, each written
against the ports (``dispatch.ports``) and nothing else:

- ``commands.Commands``: requests that change jobs and engines;
- ``queries.Queries``: the API forms of jobs and engines, counts, statistics;
- ``maintenance.Maintenance``: liveness sweeps, retention, webhook bookkeeping,
  snapshots.

The state lives in a backend (a ``ports.UnitOfWork``); without one given, the memory
backend over ``store`` (``memory_backend.MemoryBackend``).
"""

from __future__ import annotations

import time

from dispatch.commands import AssignResult, Commands
from dispatch.maintenance import Maintenance
from dispatch.memory_backend import MemoryBackend
from dispatch.models import to_micros
from dispatch.persistence import MemoryStore, Store
from dispatch.ports import UnitOfWork
from dispatch.queries import Page, Queries
from dispatch.service_base import Clock
from dispatch.settings import Settings

__all__ = ["AssignResult", "Clock", "DispatchService", "Page"]


class DispatchService:
    def __init__(self, settings: Settings, store: Store | None = None,
                 clock: Clock | None = None, backend: UnitOfWork | None = None) -> None:
        """``backend`` holds the state; without it, the memory backend over ``store``
        (a MemoryStore when none is given), loaded from what the store recovers."""
        self.settings = settings
        self.store: Store = store if store is not None else MemoryStore()
        self.clock: Clock = clock or time.time
        self.uow: UnitOfWork = backend if backend is not None else MemoryBackend(
            self.store, self._now)
        self.started_at = self._now()
        self.commands = commands = Commands(settings, self.uow, self.clock)
        self.queries = queries = Queries(settings, self.uow, self.clock, self.started_at)
        self.maintenance = upkeep = Maintenance(settings, self.uow, self.clock,
                                                self.started_at)
        # The public calls, by part (bound once: no extra call per request).
        self.submit_job = commands.submit_job
        self.submit_once = commands.submit_once
        self.submit_batch = commands.submit_batch
        self.report_progress = commands.report_progress
        self.complete_job = commands.complete_job
        self.fail_job = commands.fail_job
        self.cancel_job = commands.cancel_job
        self.retry_job = commands.retry_job
        self.assign_job = commands.assign_job
        self.set_priority = commands.set_priority
        self.heartbeat = commands.heartbeat
        self.set_drain = commands.set_drain
        self.benchmark_result = commands.benchmark_result
        self.delete_engine = commands.delete_engine
        self.get_job = queries.get_job
        self.describe = queries.describe
        self.job_events = queries.job_events
        self.list_jobs = queries.list_jobs
        self.list_engines = queries.list_engines
        self.get_engine = queries.get_engine
        self.counts = queries.counts
        self.engine_counts = queries.engine_counts
        self.oldest_pending_age = queries.oldest_pending_age
        self.health = queries.health
        self.stats = queries.stats
        self.search_jobs = queries.search_jobs  # the dashboard's reads
        self.overview = queries.overview
        self.engine_rows = queries.engine_rows
        self.engine_row = queries.engine_row
        self.recent_jobs = queries.recent_jobs
        self.due_deliveries = upkeep.due_deliveries
        self.record_delivery = upkeep.record_delivery
        self.sweep = upkeep.sweep
        self.expire_idempotency_keys = upkeep.expire_idempotency_keys
        self.purge = upkeep.purge
        self.snapshot = upkeep.snapshot

    def _now(self) -> float:
        return to_micros(self.clock())

    def close(self) -> None:
        """Release what the backend holds (files, locks, connections)."""
        self.uow.close()
