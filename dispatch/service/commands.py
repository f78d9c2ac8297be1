"""The service's commands: every request that changes jobs or engines. Each is one
unit of work (``ports.UnitOfWork.transaction``): its checks and its changes commit
together, durably, or not at all."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from dispatch.config.settings import Settings
from dispatch.domain import errors, rules
from dispatch.domain.callbacks import callback_problem
from dispatch.domain.models import FINISHED_STATUSES, PROGRESS_FIGURES, Engine, Job
from dispatch.domain.scheduler import Policy
from dispatch.service import chunked, reports
from dispatch.service.ports import (
    Clock,
    ServicePart,
    Transaction,
    UnitOfWork,
    engine_for_update,
    job_for_update,
)
from dispatch.service.reports import Beat, EngineState

events = logging.getLogger("dispatch.events")


@dataclass(frozen=True)
class AssignResult:
    job: Job | None
    redelivered: bool = False


class Commands(ServicePart):
    def __init__(self, settings: Settings, uow: UnitOfWork, clock: Clock,
                 remove_outputs: Callable[[Iterable[Job]], None] = lambda jobs: None) -> None:
        """``remove_outputs``: deletes the stored outputs of jobs deleted (the tasks
        of a chunked job that runs again)."""
        super().__init__(settings, uow, clock)
        self.remove_outputs = remove_outputs
        self.policy = Policy(settings.priority_aging_seconds, settings.large_job_threshold_mb)

    # ------------------------------------------------------------------ jobs

    def submit_job(self, data: Mapping[str, Any]) -> Job:
        return self.submit_once(data, None)[0]

    def submit_once(self, data: Mapping[str, Any],
                    idempotency_key: str | None) -> tuple[Job, bool]:
        """Create a job; return it and whether it was created (False when the
        idempotency key repeats an earlier submission of the same body)."""
        problem = self._callback_problem(data)
        if problem:
            raise errors.Invalid({"callback_url": [problem]})
        fingerprint = rules.fingerprint(data) if idempotency_key is not None else ""
        with self.uow.transaction() as tx:
            now = self.now()
            if idempotency_key is not None:
                earlier = self._idempotent(tx, idempotency_key, fingerprint, now)
                if earlier is not None:
                    return earlier, False
            self._reserve(tx, 1)
            job = rules.new_job(data, tx.jobs.allocate_seq(), now, self.settings)
            tx.jobs.put(job)
            chunked.started(tx, job, now)
            if idempotency_key is not None:
                tx.idempotency.record(idempotency_key, fingerprint, job.job_id, now)
        events.info("job submitted", extra={"job_id": job.job_id})
        return job, True

    def submit_batch(self, items: list[Mapping[str, Any]]) -> list[Job]:
        """Create every job or none (one durable change)."""
        problems = {
            index: {"callback_url": [problem]}
            for index, item in enumerate(items)
            if (problem := self._callback_problem(item))
        }
        if problems:
            raise errors.Invalid({"jobs": problems})
        with self.uow.transaction() as tx:
            self._reserve(tx, len(items))
            now = self.now()
            created = [rules.new_job(item, tx.jobs.allocate_seq(), now, self.settings)
                       for item in items]
            for job in created:
                tx.jobs.put(job)
                chunked.started(tx, job, now)
        events.info("batch of %d jobs submitted", len(created))
        return created

    def _reserve(self, tx: Transaction, count: int) -> None:
        limit = self.settings.job_queue_max_size
        pending = tx.jobs.reserve_room(count, limit)
        if pending is not None:
            raise rules.queue_full(pending, limit)

    def _callback_problem(self, data: Mapping[str, Any]) -> str | None:
        url = data.get("callback_url")
        return None if url is None else callback_problem(url,
                                                         self.settings.webhook_allowed_hosts)

    def _idempotent(self, tx: Transaction, key: str, fingerprint: str,
                    now: float) -> Job | None:
        entry = tx.idempotency.claim(key, now, self.settings.idempotency_ttl)
        if entry is None:
            return None
        if entry.fingerprint != fingerprint:
            raise errors.Conflict(
                "this Idempotency-Key was used with a different request body; "
                "use a new key for a new job"
            )
        # None when purged since: the key has nothing left to protect.
        return tx.jobs.get(entry.job_id)

    def _held(self, tx: Transaction, job_id: str, engine_id: str | None,
              attempt: int | None, action: str) -> Job:
        job = job_for_update(tx, job_id)
        rules.check_holder(job, engine_id, attempt, action)
        return job

    def report_progress(self, job_id: str, progress: float, engine_id: str | None = None,
                        attempt: int | None = None,
                        figures: Mapping[str, float] | None = None) -> Job:
        """``figures``: the engine's fps, speed and eta_seconds, when it sent any; a
        report without them keeps the last ones."""
        with self.uow.transaction() as tx:
            job = self._held(tx, job_id, engine_id, attempt, "report progress on")
            now = self.now()
            detail = job.progress_detail
            if figures:
                detail = {key: figures.get(key) for key in PROGRESS_FIGURES}
                detail["updated_at"] = now
            new = replace(job, status="processing", progress=progress, updated_at=now,
                          progress_detail=detail,
                          progress_at=job.progress_at if progress == job.progress else now)
            tx.jobs.put(new)
            chunked.follow(tx, new, now)
        return new

    def _attempt_over(self, tx: Transaction, engine_id: str | None, job: Job) -> None:
        """Store a job whose attempt on ``engine_id`` ended; count it on the engine."""
        tx.jobs.put(job)
        engine = tx.engines.get_for_update(engine_id or "")
        if engine is None:
            return
        if job.status == "completed":
            tx.engines.put(replace(engine, jobs_completed=engine.jobs_completed + 1))
        else:
            tx.engines.put(replace(engine, jobs_failed=engine.jobs_failed + 1))

    def complete_job(self, job_id: str, output_url: str, engine_id: str | None = None,
                     attempt: int | None = None, output: dict[str, Any] | None = None,
                     probe: Mapping[str, Any] | None = None) -> Job:
        """``output``: the stored output ({size, sha256, content_type}), checked in
        the store by ``files.Files.finish_output``; None for one kept elsewhere.
        ``probe``: the source as a chunked job's plan task found it."""
        with self.uow.transaction() as tx:
            job = self._held(tx, job_id, engine_id, attempt, "complete")
            chunked.check_completion(job, probe)
            now = self.now()
            new = replace(job, status="completed", output_url=output_url, progress=100.0,
                          completed_at=now, updated_at=now, retry_at=None, output=output)
            self._attempt_over(tx, job.assigned_engine, new)
            chunked.follow(tx, new, now, probe)
        events.info("job completed", extra={"job_id": job_id, "engine_id": job.assigned_engine})
        return new

    def fail_job(self, job_id: str, error_message: str, engine_id: str | None = None,
                 attempt: int | None = None) -> Job:
        with self.uow.transaction() as tx:
            job = self._held(tx, job_id, engine_id, attempt, "fail")
            new = rules.failed_attempt(job, error_message, self.now(), self.settings)
            # A plain failed attempt, whatever the engine's text says.
            self._attempt_over(tx, job.assigned_engine, new)
            chunked.follow(tx, new, new.updated_at)
        events.info("job %s", "re-queued" if new.status == "pending" else "failed",
                    extra={"job_id": job_id, "engine_id": job.assigned_engine})
        return new

    def cancel_job(self, job_id: str) -> Job:
        with self.uow.transaction() as tx:
            job = job_for_update(tx, job_id)
            chunked.refuse_task(job, "cancel")
            if not rules.can_cancel(job):
                raise errors.InvalidTransition(
                    f"cannot cancel job {job_id!r}: it is already {job.status}"
                )
            now = self.now()
            new = replace(job, status="cancelled", completed_at=now, updated_at=now,
                          retry_at=None, progress_detail=None)
            tx.jobs.put(new)
            chunked.cancelled(tx, new, now)
        events.info("job cancelled", extra={"job_id": job_id})
        return new

    def retry_job(self, job_id: str) -> Job:
        with self.uow.transaction() as tx:
            job = job_for_update(tx, job_id)
            chunked.refuse_task(job, "retry")
            if not rules.can_retry(job):
                raise errors.InvalidTransition(
                    f"cannot retry job {job_id!r}: it is {job.status}, not failed or cancelled"
                )
            self._reserve(tx, 1)
            new = replace(job, status="pending", retries=0, retry_at=None,
                          assigned_engine=None, progress=None, progress_detail=None,
                          output_url=None, output=None, completed_at=None,
                          updated_at=self.now())
            tx.jobs.put(new)
            removed = chunked.retried(tx, new, new.updated_at)
            new = tx.jobs.get(job_id) or new
        self.remove_outputs(removed)
        return new

    def set_priority(self, job_id: str, priority: int) -> Job:
        """Change the priority of a job that has not finished; it takes effect at its
        next assignment (its place in the queue, if pending)."""
        with self.uow.transaction() as tx:
            job = job_for_update(tx, job_id)
            chunked.refuse_task(job, "change the priority of")
            if job.status in FINISHED_STATUSES:
                raise errors.InvalidTransition(
                    f"cannot change the priority of job {job_id!r}: it is already {job.status}"
                )
            if priority == job.priority:
                return job
            new = replace(job, priority=priority, updated_at=self.now())
            tx.jobs.put(new)
            chunked.reprioritised(tx, new, new.updated_at)
        events.info("job priority %d -> %d", job.priority, priority, extra={"job_id": job_id})
        return new

    def assign_job(self, engine_id: str, capabilities: list[str] | None) -> AssignResult:
        with self.uow.transaction() as tx:
            engine = engine_for_update(tx, engine_id)
            held = tx.jobs.held_by(engine_id)
            if held:
                # A restarted engine asks again for the job it already holds.
                return AssignResult(tx.jobs.get(held[0]), redelivered=True)
            if engine.offline or engine.drain is not None:
                return AssignResult(None)
            now = self.now()
            job = tx.jobs.claim_next(engine, capabilities, now, self.policy,
                                     self.settings.max_concurrent_jobs)
            if job is None:
                return AssignResult(None)
            new = replace(job, status="assigned", assigned_engine=engine_id, assigned_at=now,
                          updated_at=now, progress=None, progress_detail=None,
                          progress_at=now, retry_at=None,
                          attempt=job.attempt + 1)
            tx.jobs.put(new)
            chunked.follow(tx, new, now)
        events.info("job assigned", extra={"job_id": new.job_id, "engine_id": engine_id})
        return AssignResult(new)

    # --------------------------------------------------------------- engines

    def heartbeat(self, data: Mapping[str, Any]) -> Beat:
        engine_id = data["engine_id"]
        with self.uow.transaction() as tx:
            now = self.now()
            old = tx.engines.get_for_update(engine_id)
            engine = old or Engine(engine_id=engine_id, registered_at=now, last_heartbeat=now)
            changes: dict[str, Any] = {"last_heartbeat": now, "offline": False}
            reported = data.get("status")
            if reported == "draining" and engine.drain is None:
                changes["drain"] = "engine"
            elif reported in ("idle", "busy") and engine.drain == "engine":
                changes["drain"] = None  # the engine ends a drain it announced itself
            for key in ("engine_type", "hostname", "storage_capacity_gb",
                        "streaming_support", "telemetry"):
                if key in data:
                    changes[key] = data[key]
            for key in ("supported_codecs", "local_job_queue", "task_kinds"):
                if key in data:
                    changes[key] = tuple(data[key])
            if "benchmark_time" in data:
                changes["benchmark_time"] = data["benchmark_time"]
                if engine.avg_benchmark_time is None:
                    changes["avg_benchmark_time"] = data["benchmark_time"]
                    changes["benchmark_count"] = 1
            new = replace(engine, **changes)
            tx.engines.put(new)
            answer = Beat(reports.engine_state(tx, new),
                          [job_id for job_id in new.local_job_queue
                           if rules.withdrawn(tx.jobs.get(job_id), new)])
        if old is None:
            events.info("engine registered", extra={"engine_id": engine_id})
        elif old.offline:
            events.info("engine back online", extra={"engine_id": engine_id})
        return answer

    def set_drain(self, engine_id: str, draining: bool) -> EngineState:
        """Start or end an operator's drain: no new jobs until it is ended."""
        with self.uow.transaction() as tx:
            engine = engine_for_update(tx, engine_id)
            new = replace(engine, drain="api" if draining else None)
            tx.engines.put(new)
            state = reports.engine_state(tx, new)
        events.info("engine %s", "draining" if draining else "undrained",
                    extra={"engine_id": engine_id})
        return state

    def benchmark_result(self, engine_id: str, benchmark_time: float) -> EngineState:
        with self.uow.transaction() as tx:
            engine = engine_for_update(tx, engine_id)
            count = engine.benchmark_count + 1
            previous = engine.avg_benchmark_time or 0.0
            average = previous + (benchmark_time - previous) / count
            new = replace(engine, benchmark_time=benchmark_time,
                          avg_benchmark_time=average, benchmark_count=count)
            tx.engines.put(new)
            return reports.engine_state(tx, new)

    def delete_engine(self, engine_id: str) -> EngineState:
        with self.uow.transaction() as tx:
            engine = engine_for_update(tx, engine_id)
            state = reports.engine_state(tx, engine)
            now = self.now()
            for job_id in tx.jobs.held_by(engine_id):
                job = job_for_update(tx, job_id)
                released = replace(job, status="pending", assigned_engine=None,
                                   progress=None, progress_detail=None, updated_at=now)
                tx.jobs.put(released)
                chunked.follow(tx, released, now)
            tx.engines.delete(engine_id)
        events.info("engine removed", extra={"engine_id": engine_id})
        return state
