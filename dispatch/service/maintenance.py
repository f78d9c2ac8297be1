"""The service's maintenance, run by the background threads: liveness (silent
engines, stalled jobs), retention (finished jobs, idempotency keys), webhook delivery
bookkeeping and snapshots."""

from __future__ import annotations

import logging
from dataclasses import replace

from dispatch.config.settings import Settings
from dispatch.domain import callbacks, history, rules
from dispatch.domain.models import ACTIVE_STATUSES, FINISHED_STATUSES, Delivery, Engine, Job
from dispatch.service import chunked
from dispatch.service.files import Files
from dispatch.service.ports import Clock, ServicePart, UnitOfWork

log = logging.getLogger("dispatch.service")
events = logging.getLogger("dispatch.events")


class Maintenance(ServicePart):
    def __init__(self, settings: Settings, uow: UnitOfWork, clock: Clock,
                 files: Files) -> None:
        super().__init__(settings, uow, clock)
        self.files = files

    # -------------------------------------------------------------- webhooks

    def due_deliveries(self) -> list[Delivery]:
        """Pending deliveries whose time has come, soonest first."""
        with self.uow.read() as tx:
            return tx.deliveries.due(self.now())

    def record_delivery(self, job_id: str, generation: int, error: str | None) -> None:
        """Note the outcome of one delivery attempt (durably)."""
        with self.uow.transaction() as tx:
            delivery = tx.deliveries.get_for_update(job_id)
            if delivery is None or delivery.generation != generation \
                    or delivery.state != "pending":
                return  # replaced or purged while it was being sent
            updated = callbacks.after_attempt(delivery, error, self.now(),
                                              self.settings.webhook_retry_for)
            tx.deliveries.put(updated)
        if error is None:
            events.info("webhook delivered", extra={"job_id": job_id})
        else:
            events.warning("webhook attempt %d failed (%s)%s", updated.attempts, error,
                           "; giving up" if updated.state == "failed" else "",
                           extra={"job_id": job_id})

    # -------------------------------------------------------------- liveness

    def sweep(self) -> int:
        """Mark silent engines offline and fail the jobs they held; return how many."""
        timeout = self.settings.engine_heartbeat_timeout
        stall_limit = self.settings.job_stall_timeout
        # Engines silent since before the state was opened get a full timeout from then.
        grace_start = self.uow.grace_start
        with self.uow.transaction() as tx:
            now = self.now()

            def silent(engine: Engine | None) -> bool:
                return engine is not None and not engine.offline \
                    and max(engine.last_heartbeat, grace_start) + timeout < now

            # Found without locks, then locked and checked again: a heartbeat or a
            # report from another process may have come in between.
            lost = [engine for engine in (tx.engines.get_for_update(e.engine_id)
                                          for e in tx.engines.all() if silent(e))
                    if engine is not None and silent(engine)]
            failed: list[tuple[Job, history.FailureKind]] = []
            for engine in lost:
                reason = f"engine {engine.engine_id} lost (no heartbeat for {timeout:g} s)"
                for job_id in tx.jobs.held_by(engine.engine_id):
                    job = tx.jobs.get_for_update(job_id)
                    if job is not None and job.status in ACTIVE_STATUSES \
                            and job.assigned_engine == engine.engine_id:
                        failed.append((rules.failed_attempt(job, reason, now, self.settings),
                                       history.ENGINE_LOST))
            lost_ids = {engine.engine_id for engine in lost}
            stalled = [] if stall_limit <= 0 else [
                job for job in (tx.jobs.get_for_update(j.job_id) for j in tx.jobs.held()
                                if j.assigned_engine not in lost_ids
                                and rules.stalled(j, now, stall_limit))
                if job is not None and job.status in ACTIVE_STATUSES
                and rules.stalled(job, now, stall_limit)
            ]
            for job in stalled:
                reason = (f"stalled: no progress for {stall_limit:g} s "
                          f"on engine {job.assigned_engine}")
                failed.append((rules.failed_attempt(job, reason, now, self.settings),
                               history.STALLED))
            if not failed and not lost:
                return 0
            for job, kind in failed:
                current = tx.jobs.get_for_update(job.job_id)
                if current is not None and current.status in FINISHED_STATUSES:
                    continue  # a task cancelled with its chunked job by an earlier one
                tx.jobs.put(job, kind)
                chunked.follow(tx, job, now)
            for engine in lost:
                tx.engines.put(replace(engine, offline=True))
        for engine in lost:
            events.warning("engine offline", extra={"engine_id": engine.engine_id})
        for job, _ in failed:
            events.warning("job %s after a failed attempt: %s",
                           "re-queued" if job.status == "pending" else "failed",
                           job.error_message, extra={"job_id": job.job_id})
        return len(lost) + len(stalled)

    # ------------------------------------------------------------- retention

    def expire_idempotency_keys(self, batch: int = 1000) -> int:
        """Forget idempotency keys older than ``idempotency_ttl``."""
        with self.uow.transaction() as tx:
            expired = tx.idempotency.expired(self.now() - self.settings.idempotency_ttl,
                                             batch)
            for key in expired:
                tx.idempotency.delete(key)
        return len(expired)

    def purge(self, batch: int = 1000) -> int:
        """Delete finished jobs older than the retention; return how many."""
        retention = self.settings.finished_job_retention
        if retention <= 0:
            return 0
        purged = 0
        while True:
            with self.uow.transaction() as tx:
                old = tx.jobs.finished_before(self.now() - retention, batch)
                tasks = []
                for job in old:
                    tx.jobs.delete(job.job_id)
                    tasks.extend(chunked.remove_tasks(tx, job))
            self.files.remove_outputs([*old, *tasks])
            if not old:
                return purged
            purged += len(old)
            log.info("purged %d finished jobs older than %g s", len(old), retention)

    def sweep_files(self) -> int:
        """Abandoned uploads, and stored files past ``output_retention_days``."""
        return self.files.sweep()

    def snapshot(self) -> bool:
        return self.uow.snapshot()
