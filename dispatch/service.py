"""The service layer: every job and engine, and every rule, under one lock.

No Flask and no file format here. Each public method takes the lock, checks the
rules, applies the change to the in-memory tables, hands the change to the store, and
after releasing the lock waits until the store says it is durable. If the store fails
the change (and every later change that was not yet durable) is undone, so memory
never runs ahead of disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import islice
from sys import intern
from typing import Any

import orjson

from dispatch import errors, history, reports
from dispatch.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    Engine,
    Job,
    to_micros,
)
from dispatch.persistence import MemoryStore, Op, SnapshotData, Store
from dispatch.scheduler import Policy, can_run, choose_job, engine_speed
from dispatch.settings import Settings
from dispatch.state import State
from dispatch.webhooks import backoff, callback_problem

log = logging.getLogger("dispatch.service")
events = logging.getLogger("dispatch.events")

Clock = Callable[[], float]
QUEUE_FULL_RETRY_AFTER = 5  # seconds; a hint, the queue drains at the farm's pace


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    total: int


@dataclass(frozen=True)
class AssignResult:
    job: Job | None
    redelivered: bool = False


class DispatchService:
    def __init__(self, settings: Settings, store: Store | None = None,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.store: Store = store if store is not None else MemoryStore()
        self.clock: Clock = clock or time.time
        self._lock = threading.Lock()
        self._policy = Policy(settings.priority_aging_seconds, settings.large_job_threshold_mb)
        self._undo: deque[tuple[int, list[tuple[str, str, Any]]]] = deque()
        self._state = State(self._now)
        self.started_at = self._now()
        self._grace_start = self.started_at
        recovered = self.store.recover()
        self._state.load(recovered)
        del recovered
        if self._state.jobs or self._state.engines:
            log.info("loaded %d jobs and %d engines", len(self._state.jobs),
                     len(self._state.engines))
            release_free_memory()

    def _now(self) -> float:
        return to_micros(self.clock())

    # ------------------------------------------------------------- commits

    def _commit(self, jobs: Iterable[Job | tuple[str, None]] = (),
                engines: Iterable[Engine | tuple[str, None]] = (),
                tables: Iterable[tuple[str, str, Any]] = ()) -> int:
        """Apply a change and hand it to the store. Caller holds the lock.

        Each job change also records its history events and, when the job has just
        finished and has a callback URL, its webhook delivery: derived by the state
        from the transition itself, so no rule can forget them."""
        changes: list[tuple[str, str, Any]] = []
        for job in jobs:
            changes.append(("job", job.job_id, job) if isinstance(job, Job)
                           else ("job", job[0], None))
        for engine in engines:
            changes.append(("engine", engine.engine_id, engine) if isinstance(engine, Engine)
                           else ("engine", engine[0], None))
        undo: list[tuple[str, str, Any]] = []
        ops: list[Op] = []
        derived: list[tuple[str, str, Any]] = []
        for kind, key, value in changes:
            old = self._state.put(kind, key, value)
            undo.append((kind, key, old))
            ops.append((kind, key, None if value is None else value.to_record()))
            if kind == "job":
                derived.extend(self._state.derived(key, old, value))
        for kind, key, value in [*derived, *tables]:
            undo.append((kind, key, self._state.put(kind, key, value)))
            ops.append((kind, key, value))
        durable = self.store.durable_seq
        while self._undo and self._undo[0][0] <= durable:
            self._undo.popleft()
        try:
            seq = self.store.append(ops)
        except errors.PersistenceError as exc:
            self._revert(undo)
            raise errors.Unavailable(f"the change could not be saved: {exc}") from None
        self._undo.append((seq, undo))
        return seq

    def _revert(self, undo: list[tuple[str, str, Any]]) -> None:
        for kind, key, old in reversed(undo):
            self._state.restore(kind, key, old)

    def _durable(self, seq: int) -> None:
        """Wait outside the lock until change ``seq`` is on disk, or undo it."""
        try:
            self.store.wait_durable(seq)
        except errors.PersistenceError as exc:
            with self._lock:
                durable = self.store.durable_seq
                while self._undo and self._undo[-1][0] > durable:
                    self._revert(self._undo.pop()[1])
            raise errors.Unavailable(f"the change could not be saved: {exc}") from None

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
        fingerprint = _fingerprint(data) if idempotency_key is not None else ""
        with self._lock:
            now = self._now()
            if idempotency_key is not None:
                earlier = self._idempotent(idempotency_key, fingerprint, now)
                if earlier is not None:
                    return earlier, False
            self._check_room(1)
            job = self._new_job(data, now)
            tables = []
            if idempotency_key is not None:
                tables.append(("idempotency", idempotency_key,
                               {"hash": fingerprint, "job_id": job.job_id, "at": now}))
            commit = self._commit(jobs=[job], tables=tables)
        self._durable(commit)
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
        with self._lock:
            self._check_room(len(items))
            now = self._now()
            created = [self._new_job(item, now) for item in items]
            commit = self._commit(jobs=created)
        self._durable(commit)
        events.info("batch of %d jobs submitted", len(created))
        return created

    def _check_room(self, count: int) -> None:
        pending = len(self._state.by_status["pending"])
        if pending + count > self.settings.job_queue_max_size:
            raise errors.QueueFull(
                f"the queue holds {pending} pending jobs and takes at most "
                f"{self.settings.job_queue_max_size}; retry later",
                QUEUE_FULL_RETRY_AFTER,
            )

    def _new_job(self, data: Mapping[str, Any], now: float) -> Job:
        seq = self._state.next_seq
        self._state.next_seq = seq + 1  # an id is never reused, even if the change is undone
        return Job(
            job_id=f"{int(now * 1_000_000)}_{seq}",
            seq=seq,
            source_url=data["source_url"],
            target_codec=intern(data["target_codec"]),
            job_size=float(data["job_size"]),
            priority=data.get("priority", 0),
            max_retries=data.get("max_retries", self.settings.max_job_retries),
            created_at=now,
            updated_at=now,
            callback_url=data.get("callback_url"),
        )

    def _callback_problem(self, data: Mapping[str, Any]) -> str | None:
        url = data.get("callback_url")
        return None if url is None else callback_problem(url,
                                                         self.settings.webhook_allowed_hosts)

    def _idempotent(self, key: str, fingerprint: str, now: float) -> Job | None:
        entry = self._state.idempotency.get(key)
        if entry is None or now - entry["at"] >= self.settings.idempotency_ttl:
            return None
        if entry["hash"] != fingerprint:
            raise errors.Conflict(
                "this Idempotency-Key was used with a different request body; "
                "use a new key for a new job"
            )
        job = self._state.jobs.get(entry["job_id"])
        if job is None:  # purged since: the key has nothing left to protect
            return None
        return job

    def get_job(self, job_id: str) -> Job:
        job = self._state.jobs.get(job_id)
        if job is None:
            raise errors.JobNotFound(job_id)
        return job

    def describe(self, job: Job) -> dict[str, Any]:
        """A job's API form: its fields, why it waits (pending jobs) and the state of
        its webhook (jobs with a callback URL)."""
        body = job.to_dict()
        body["waiting_reason"] = None
        body["webhook"] = None
        if job.status == "pending" or job.callback_url:
            with self._lock:
                if job.status == "pending":
                    body["waiting_reason"] = reports.waiting_reason(
                        self._state, self.settings, job, self._now())
                delivery = self._state.deliveries.get(job.job_id)
            if delivery is not None:
                body["webhook"] = reports.delivery_view(delivery)
        return body

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        self.get_job(job_id)
        return history.view(self._state.history.get(job_id))

    def list_jobs(self, status: str | None, limit: int, offset: int) -> Page:
        with self._lock:
            table = self._state.ordered if status is None else self._state.by_status[status]
            total = len(table)
            return Page(list(islice(table.islice(offset), limit)), total)

    def _active_job(self, job_id: str, engine_id: str | None, attempt: int | None,
                    action: str) -> Job:
        job = self.get_job(job_id)
        if attempt is not None and attempt != job.attempt:
            raise errors.StaleAttempt(
                f"report for attempt {attempt} of job {job_id!r}, which is on attempt "
                f"{job.attempt}: the job was given to another engine since"
            )
        if job.status not in ACTIVE_STATUSES:
            raise errors.InvalidTransition(
                f"cannot {action} job {job_id!r}: it is {job.status}, not assigned or processing"
            )
        if engine_id is not None and engine_id != job.assigned_engine:
            raise errors.NotJobHolder(
                f"engine {engine_id!r} does not hold job {job_id!r}"
            )
        return job

    def report_progress(self, job_id: str, progress: float, engine_id: str | None = None,
                        attempt: int | None = None) -> Job:
        with self._lock:
            job = self._active_job(job_id, engine_id, attempt, "report progress on")
            now = self._now()
            moved = progress != job.progress
            new = replace(job, status="processing", progress=progress, updated_at=now,
                          progress_at=now if moved else job.progress_at)
            commit = self._commit(jobs=[new])
        self._durable(commit)
        return new

    def complete_job(self, job_id: str, output_url: str, engine_id: str | None = None,
                     attempt: int | None = None) -> Job:
        with self._lock:
            job = self._active_job(job_id, engine_id, attempt, "complete")
            now = self._now()
            new = replace(job, status="completed", output_url=output_url, progress=100.0,
                          completed_at=now, updated_at=now, retry_at=None)
            changed_engines = []
            engine = self._state.engines.get(job.assigned_engine or "")
            if engine is not None:
                changed_engines.append(replace(engine, jobs_completed=engine.jobs_completed + 1))
            commit = self._commit(jobs=[new], engines=changed_engines)
        self._durable(commit)
        events.info("job completed", extra={"job_id": job_id, "engine_id": job.assigned_engine})
        return new

    def _failed_attempt(self, job: Job, reason: str, now: float) -> Job:
        """The job after a failed attempt: re-queued with backoff, or failed for good."""
        retries = job.retries + 1
        attempt_over = replace(job, retries=retries, error_message=reason,
                               assigned_engine=None, progress=None, progress_at=None,
                               updated_at=now)
        if self.settings.auto_retry_failed_jobs and retries <= job.max_retries:
            delay = min(self.settings.retry_backoff_seconds * 2 ** (retries - 1),
                        self.settings.retry_backoff_max_seconds)
            return replace(attempt_over, status="pending", retry_at=now + delay)
        return replace(attempt_over, status="failed", retry_at=None, completed_at=now)

    def fail_job(self, job_id: str, error_message: str, engine_id: str | None = None,
                 attempt: int | None = None) -> Job:
        with self._lock:
            job = self._active_job(job_id, engine_id, attempt, "fail")
            new = self._failed_attempt(job, error_message, self._now())
            changed_engines = []
            engine = self._state.engines.get(job.assigned_engine or "")
            if engine is not None:
                changed_engines.append(replace(engine, jobs_failed=engine.jobs_failed + 1))
            commit = self._commit(jobs=[new], engines=changed_engines)
        self._durable(commit)
        events.info("job %s", "re-queued" if new.status == "pending" else "failed",
                    extra={"job_id": job_id, "engine_id": job.assigned_engine})
        return new

    def cancel_job(self, job_id: str) -> Job:
        with self._lock:
            job = self.get_job(job_id)
            if job.status in FINISHED_STATUSES:
                raise errors.InvalidTransition(
                    f"cannot cancel job {job_id!r}: it is already {job.status}"
                )
            now = self._now()
            new = replace(job, status="cancelled", completed_at=now, updated_at=now,
                          retry_at=None)
            commit = self._commit(jobs=[new])
        self._durable(commit)
        events.info("job cancelled", extra={"job_id": job_id})
        return new

    def retry_job(self, job_id: str) -> Job:
        with self._lock:
            job = self.get_job(job_id)
            if job.status not in ("failed", "cancelled"):
                raise errors.InvalidTransition(
                    f"cannot retry job {job_id!r}: it is {job.status}, not failed or cancelled"
                )
            self._check_room(1)
            new = replace(job, status="pending", retries=0, retry_at=None,
                          assigned_engine=None, progress=None, output_url=None,
                          completed_at=None, updated_at=self._now())
            commit = self._commit(jobs=[new])
        self._durable(commit)
        return new

    # --------------------------------------------------------------- engines

    def heartbeat(self, data: Mapping[str, Any]) -> dict[str, Any]:
        engine_id = data["engine_id"]
        with self._lock:
            now = self._now()
            old = self._state.engines.get(engine_id)
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
            for key in ("supported_codecs", "local_job_queue"):
                if key in data:
                    changes[key] = tuple(data[key])
            if "benchmark_time" in data:
                changes["benchmark_time"] = data["benchmark_time"]
                if engine.avg_benchmark_time is None:
                    changes["avg_benchmark_time"] = data["benchmark_time"]
                    changes["benchmark_count"] = 1
            new = replace(engine, **changes)
            commit = self._commit(engines=[new])
            view = reports.engine_view(self._state, new)
            view["cancelled_jobs"] = self._withdrawn(new)
            view["draining"] = new.drain is not None
        self._durable(commit)
        if old is None:
            events.info("engine registered", extra={"engine_id": engine_id})
        elif old.offline:
            events.info("engine back online", extra={"engine_id": engine_id})
        return view

    def _engine(self, engine_id: str) -> Engine:
        engine = self._state.engines.get(engine_id)
        if engine is None:
            raise errors.EngineNotFound(engine_id)
        return engine

    def _withdrawn(self, engine: Engine) -> list[str]:
        """Jobs the engine may still be working on that are no longer its own:
        cancelled, or given back to the queue or to another engine."""
        withdrawn = []
        for job_id in engine.local_job_queue:
            job = self._state.jobs.get(job_id)
            if job is None:
                continue
            if job.status == "cancelled" or (
                job.status not in FINISHED_STATUSES and job.assigned_engine != engine.engine_id
            ):
                withdrawn.append(job_id)
        return withdrawn

    def set_drain(self, engine_id: str, draining: bool) -> dict[str, Any]:
        """Start or end an operator's drain: no new jobs until it is ended."""
        with self._lock:
            engine = self._engine(engine_id)
            new = replace(engine, drain="api" if draining else None)
            commit = self._commit(engines=[new])
            view = reports.engine_view(self._state, new)
        self._durable(commit)
        events.info("engine %s", "draining" if draining else "undrained",
                    extra={"engine_id": engine_id})
        return view

    def benchmark_result(self, engine_id: str, benchmark_time: float) -> dict[str, Any]:
        with self._lock:
            engine = self._engine(engine_id)
            count = engine.benchmark_count + 1
            previous = engine.avg_benchmark_time or 0.0
            average = previous + (benchmark_time - previous) / count
            new = replace(engine, benchmark_time=benchmark_time,
                          avg_benchmark_time=average, benchmark_count=count)
            commit = self._commit(engines=[new])
            view = reports.engine_view(self._state, new)
        self._durable(commit)
        return view

    def list_engines(self) -> list[dict[str, Any]]:
        with self._lock:
            return [reports.engine_view(self._state, engine)
                    for engine in self._state.engines.values()]

    def get_engine(self, engine_id: str) -> dict[str, Any]:
        with self._lock:
            engine = self._engine(engine_id)
            return reports.engine_view(self._state, engine)

    def delete_engine(self, engine_id: str) -> dict[str, Any]:
        with self._lock:
            engine = self._engine(engine_id)
            view = reports.engine_view(self._state, engine)
            now = self._now()
            released = [
                replace(self._state.jobs[job_id], status="pending", assigned_engine=None,
                        progress=None, updated_at=now)
                for job_id in self._state.held.get(engine_id, ())
            ]
            commit = self._commit(jobs=released, engines=[(engine_id, None)])
        self._durable(commit)
        events.info("engine removed", extra={"engine_id": engine_id})
        return view

    def assign_job(self, engine_id: str, capabilities: list[str] | None) -> AssignResult:
        with self._lock:
            engine = self._engine(engine_id)
            held = self._state.held.get(engine_id)
            if held:
                # A restarted engine asks again for the job it already holds.
                return AssignResult(self._state.jobs[next(iter(held))], redelivered=True)
            if engine.offline or engine.drain is not None:
                return AssignResult(None)
            active = self._state.active_count()
            if active >= self.settings.max_concurrent_jobs:
                return AssignResult(None)
            now = self._now()
            live = [e for e in self._state.engines.values() if not e.offline and e.drain is None]
            speed = engine_speed(engine, live)
            fast = [e for e in live if e is not engine and engine_speed(e, live) == "fast"] \
                if speed == "slow" else []

            def fast_can_take(job: Job) -> bool:
                return any(can_run(job, e) for e in fast)

            job = choose_job(self._state.pending, engine, capabilities, now, self._policy,
                             speed, fast_can_take)
            if job is None:
                return AssignResult(None)
            new = replace(job, status="assigned", assigned_engine=engine_id, assigned_at=now,
                          updated_at=now, progress=None, progress_at=now, retry_at=None,
                          attempt=job.attempt + 1)
            commit = self._commit(jobs=[new])
        self._durable(commit)
        events.info("job assigned", extra={"job_id": new.job_id, "engine_id": engine_id})
        return AssignResult(new)

    # -------------------------------------------------------------- webhooks

    def due_deliveries(self) -> list[dict[str, Any]]:
        """Pending deliveries whose time has come, with the body to send."""
        with self._lock:
            now = self._now()
            due = []
            for job_id in self._state.due_deliveries:
                delivery = self._state.deliveries[job_id]
                if delivery["next_at"] <= now:
                    due.append({**delivery, "body": orjson.dumps(delivery["payload"])})
            return due

    def record_delivery(self, job_id: str, generation: int, error: str | None) -> None:
        """Note the outcome of one delivery attempt (durably)."""
        with self._lock:
            delivery = self._state.deliveries.get(job_id)
            if delivery is None or delivery["generation"] != generation \
                    or delivery["state"] != "pending":
                return  # replaced or purged while it was being sent
            now = self._now()
            attempts = delivery["attempts"] + 1
            updated = {**delivery, "attempts": attempts, "last_error": error}
            if error is None:
                updated.update(state="delivered", delivered_at=now)
            elif now - delivery["first_at"] >= self.settings.webhook_retry_for:
                updated.update(state="failed")
            else:
                updated.update(next_at=now + backoff(attempts))
            commit = self._commit(tables=[("delivery", job_id, updated)])
        self._durable(commit)
        if error is None:
            events.info("webhook delivered", extra={"job_id": job_id})
        else:
            events.warning("webhook attempt %d failed (%s)%s", attempts, error,
                           "; giving up" if updated["state"] == "failed" else "",
                           extra={"job_id": job_id})

    # -------------------------------------------------------------- liveness

    def sweep(self) -> int:
        """Mark silent engines offline and fail the jobs they held; return how many."""
        timeout = self.settings.engine_heartbeat_timeout
        with self._lock:
            now = self._now()
            lost = [
                engine for engine in self._state.engines.values()
                if not engine.offline
                and max(engine.last_heartbeat, self._grace_start) + timeout < now
            ]
            changed_jobs = []
            for engine in lost:
                for job_id in self._state.held.get(engine.engine_id, ()):
                    reason = f"engine {engine.engine_id} lost (no heartbeat for {timeout:g} s)"
                    changed_jobs.append(self._failed_attempt(self._state.jobs[job_id], reason, now))
            stalled = self._stalled(now, {e.engine_id for e in lost})
            for job in stalled:
                reason = (f"stalled: no progress for {self.settings.job_stall_timeout:g} s "
                          f"on engine {job.assigned_engine}")
                changed_jobs.append(self._failed_attempt(job, reason, now))
            if not changed_jobs and not lost:
                return 0
            commit = self._commit(
                jobs=changed_jobs, engines=[replace(e, offline=True) for e in lost]
            )
        self._durable(commit)
        for engine in lost:
            events.warning("engine offline", extra={"engine_id": engine.engine_id})
        for job in changed_jobs:
            events.warning("job %s after a failed attempt: %s",
                           "re-queued" if job.status == "pending" else "failed",
                           job.error_message, extra={"job_id": job.job_id})
        return len(lost) + len(stalled)

    def _stalled(self, now: float, lost: set[str]) -> list[Job]:
        limit = self.settings.job_stall_timeout
        if limit <= 0:
            return []
        stalled = []
        for engine_id, held in self._state.held.items():
            if engine_id in lost:
                continue
            for job_id in held:
                job = self._state.jobs[job_id]
                since = job.progress_at if job.progress_at is not None else job.assigned_at
                if since is not None and now - since > limit:
                    stalled.append(job)
        return stalled

    def expire_idempotency_keys(self, batch: int = 1000) -> int:
        """Forget idempotency keys older than ``idempotency_ttl``."""
        with self._lock:
            cutoff = self._now() - self.settings.idempotency_ttl
            expired: list[str] = []
            for key, entry in self._state.idempotency.items():
                if entry["at"] > cutoff or len(expired) >= batch:
                    break
                expired.append(key)
            if not expired:
                return 0
            commit = self._commit(tables=[("idempotency", key, None) for key in expired])
        self._durable(commit)
        return len(expired)

    def purge(self, batch: int = 1000) -> int:
        """Delete finished jobs older than the retention; return how many."""
        retention = self.settings.finished_job_retention
        if retention <= 0:
            return 0
        purged = 0
        while True:
            with self._lock:
                cutoff = self._now() - retention
                old = list(islice(self._state.finished.irange_key(max_key=(cutoff, -1)), batch))
                old = [job for job in old if (job.completed_at or 0.0) < cutoff]
                if not old:
                    return purged
                commit = self._commit(jobs=[(job.job_id, None) for job in old])
            self._durable(commit)
            purged += len(old)
            log.info("purged %d finished jobs older than %g s", len(old), retention)

    # ---------------------------------------------------------------- system

    def counts(self) -> dict[str, int]:
        with self._lock:
            return reports.job_counts(self._state)

    def engine_counts(self) -> dict[str, int]:
        with self._lock:
            return reports.engine_counts(self._state)

    def oldest_pending_age(self) -> float:
        with self._lock:
            pending = self._state.by_status["pending"]
            return max(0.0, self._now() - pending[0].created_at) if pending else 0.0

    def health(self) -> dict[str, Any]:
        counts = self.engine_counts()
        return {
            "uptime_seconds": round(self._now() - self.started_at, 3),
            "jobs_queued": len(self._state.by_status["pending"]),
            "engines_active": counts["idle"] + counts["busy"] + counts["draining"],
            "failure": self.store.check(),
        }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return reports.stats(self._state, self._now())

    # ------------------------------------------------------------- snapshots

    def _tables_snapshot(self) -> dict[str, dict[str, Any]]:
        # Copies of references only (entries are never mutated in place); history
        # stays encoded and is written as it is.
        return {
            "events": dict(self._state.history),
            "idempotency": dict(self._state.idempotency),
            "delivery": dict(self._state.deliveries),
        }

    def snapshot(self) -> bool:
        """Write a full snapshot if anything changed; the tables are copied under the
        lock (references only: objects are immutable) and serialised outside it."""
        with self._lock:
            seq = self.store.begin_snapshot()
            if seq is None:
                return False
            data = SnapshotData(
                seq=seq,
                jobs=list(self._state.ordered),
                engines=list(self._state.engines.values()),
                tables=self._tables_snapshot(),
            )
        self.store.write_snapshot(data)
        return True


def release_free_memory() -> None:
    """Give the memory the parsed state file used back to the system. The parse
    briefly needs several times the size of the loaded state; glibc keeps freed pages
    unless asked, so a large queue would otherwise stay at that peak."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


def _fingerprint(data: Mapping[str, Any]) -> str:
    """What an idempotent retry must repeat: the request body, key order aside."""
    return hashlib.sha256(orjson.dumps(dict(data), option=orjson.OPT_SORT_KEYS)).hexdigest()
