"""The service's queries: the API forms of jobs and engines, job history, counts and
statistics. They change nothing; each reads one consistent state (``ports.UnitOfWork
.read``), or a single job without a unit at all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatch.config.settings import Settings
from dispatch.domain import errors
from dispatch.domain.history import Event
from dispatch.domain.job_search import JobFilter
from dispatch.domain.models import Engine, Job
from dispatch.service import chunked, reports
from dispatch.service.ports import Clock, ServicePart, Transaction, UnitOfWork
from dispatch.service.reports import EngineState, JobState


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    total: int


@dataclass(frozen=True)
class EngineRow:
    """An engine as the dashboard shows it."""

    engine: Engine
    status: str
    heartbeat_age: float
    current: list[Job]


class Queries(ServicePart):
    def __init__(self, settings: Settings, uow: UnitOfWork, clock: Clock,
                 started_at: float) -> None:
        super().__init__(settings, uow, clock)
        self.started_at = started_at

    # ------------------------------------------------------------------ jobs

    def get_job(self, job_id: str) -> Job:
        job = self.uow.peek_job(job_id)
        if job is None:
            raise errors.JobNotFound(job_id)
        return job

    def describe(self, job: Job) -> JobState:
        """The job with why it waits (pending jobs) and its webhook (jobs with a
        callback URL)."""
        if job.status != "pending" and not job.callback_url:
            return JobState(job)
        with self.uow.read() as tx:
            waiting = reports.waiting_reason(tx, self.settings, job, self.now()) \
                if job.status == "pending" else None
            return JobState(job, waiting, tx.deliveries.get(job.job_id))

    def job_events(self, job_id: str) -> list[Event]:
        self.get_job(job_id)
        with self.uow.read() as tx:
            return tx.jobs.history(job_id)

    def chunks(self, job_id: str) -> dict[str, Any]:
        """A chunked job's tasks (``GET /jobs/{id}/chunks``); Conflict for any other."""
        with self.uow.read() as tx:
            job = tx.jobs.get(job_id)
            if job is None:
                raise errors.JobNotFound(job_id)
            return chunked.chunk_rows(tx, job)

    def engine_task(self, job: Job, sign: Callable[[str], str]) -> dict[str, Any] | None:
        """What an assigned task carries for its engine (null for a whole job)."""
        if job.task is None:
            return None
        with self.uow.read() as tx:
            return chunked.engine_task(tx, job, sign)

    def list_jobs(self, status: str | None, limit: int, offset: int) -> Page:
        with self.uow.read() as tx:
            jobs, total = tx.jobs.page(status, offset, limit)
        return Page(jobs, total)

    def search_jobs(self, where: JobFilter, offset: int, limit: int) -> Page:
        """The jobs matching the dashboard's filter, newest first."""
        with self.uow.read() as tx:
            jobs, total = tx.jobs.search(where, offset, limit)
        return Page(jobs, total)

    # --------------------------------------------------------------- engines

    def list_engines(self) -> list[EngineState]:
        with self.uow.read() as tx:
            return [reports.engine_state(tx, engine) for engine in tx.engines.all()]

    def get_engine(self, engine_id: str) -> EngineState:
        with self.uow.read() as tx:
            engine = tx.engines.get(engine_id)
            if engine is None:
                raise errors.EngineNotFound(engine_id)
            return reports.engine_state(tx, engine)

    def engine_rows(self) -> list[EngineRow]:
        with self.uow.read() as tx:
            now = self.now()
            return [_engine_row(tx, engine, now)
                    for engine in sorted(tx.engines.all(), key=lambda e: e.engine_id)]

    def engine_row(self, engine_id: str) -> EngineRow | None:
        with self.uow.read() as tx:
            found = tx.engines.get(engine_id)
            return None if found is None else _engine_row(tx, found, self.now())

    def recent_jobs(self, engine_id: str, limit: int) -> list[Job]:
        """The latest jobs the engine holds or held, newest first."""
        with self.uow.read() as tx:
            return tx.jobs.recent_on(engine_id, limit)

    # ---------------------------------------------------------------- system

    def counts(self) -> dict[str, int]:
        with self.uow.read() as tx:
            return tx.jobs.counts()

    def engine_counts(self) -> dict[str, int]:
        with self.uow.read() as tx:
            return reports.engine_counts(tx)

    def oldest_pending_age(self) -> float:
        with self.uow.read() as tx:
            oldest = tx.jobs.oldest_pending()
            return max(0.0, self.now() - oldest.created_at) if oldest is not None else 0.0

    def health(self) -> dict[str, Any]:
        try:
            with self.uow.read() as tx:
                counts = reports.engine_counts(tx)
                queued = tx.jobs.counts()["pending"]
        except errors.Unavailable as exc:  # a database backend that cannot be reached
            return {"uptime_seconds": round(self.now() - self.started_at, 3),
                    "jobs_queued": 0, "engines_active": 0, "failure": exc.message}
        return {
            "uptime_seconds": round(self.now() - self.started_at, 3),
            "jobs_queued": queued,
            "engines_active": counts["idle"] + counts["busy"] + counts["draining"],
            "failure": self.uow.check(),
        }

    def stats(self) -> dict[str, Any]:
        with self.uow.read() as tx:
            return reports.stats(tx, self.now())

    def overview(self, minutes: int) -> dict[str, Any]:
        """The dashboard's overview: jobs by status, the pending queue by codec and
        priority, the oldest pending job's age, engines by status, and completions
        and final failures per minute over the last ``minutes``."""
        with self.uow.read() as tx:
            now = self.now()
            oldest = tx.jobs.oldest_pending()
            return {
                "jobs": tx.jobs.counts(),
                "total": tx.jobs.total(),
                "pending_by": sorted(tx.jobs.pending_counts().items(),
                                     key=lambda item: (item[0][0], -item[0][1])),
                "oldest_pending_age": None if oldest is None
                else max(0.0, now - oldest.created_at),
                "engines": reports.engine_counts(tx),
                "per_minute": reports.per_minute(
                    tx.jobs.finished_since(now - minutes * 60), now, minutes),
                "now": now,
            }


def _engine_row(tx: Transaction, engine: Engine, now: float) -> EngineRow:
    held = tx.jobs.held_by(engine.engine_id)
    current = [job for job in map(tx.jobs.get, held) if job is not None]
    return EngineRow(engine, reports.engine_status(engine, bool(held)),
                     max(0.0, now - engine.last_heartbeat), current)
