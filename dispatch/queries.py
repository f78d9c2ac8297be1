"""The service's queries: the API forms of jobs and engines, job history, counts and
statistics. They change nothing; each reads one consistent state (``ports.UnitOfWork
.read``), or a single job without a unit at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatch import errors, history, reports
from dispatch.models import Job
from dispatch.ports import UnitOfWork
from dispatch.service_base import Clock, ServicePart
from dispatch.settings import Settings


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    total: int


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

    def describe(self, job: Job) -> dict[str, Any]:
        """A job's API form: its fields, why it waits (pending jobs) and the state of
        its webhook (jobs with a callback URL)."""
        body = job.to_dict()
        body["waiting_reason"] = None
        body["webhook"] = None
        if job.status == "pending" or job.callback_url:
            with self.uow.read() as tx:
                if job.status == "pending":
                    body["waiting_reason"] = reports.waiting_reason(
                        tx, self.settings, job, self.now())
                delivery = tx.deliveries.get(job.job_id)
            if delivery is not None:
                body["webhook"] = reports.delivery_view(delivery)
        return body

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        self.get_job(job_id)
        with self.uow.read() as tx:
            events = tx.jobs.history(job_id)
        return history.view(events)

    def list_jobs(self, status: str | None, limit: int, offset: int) -> Page:
        with self.uow.read() as tx:
            jobs, total = tx.jobs.page(status, offset, limit)
        return Page(jobs, total)

    # --------------------------------------------------------------- engines

    def list_engines(self) -> list[dict[str, Any]]:
        with self.uow.read() as tx:
            return [reports.engine_view(tx, engine) for engine in tx.engines.all()]

    def get_engine(self, engine_id: str) -> dict[str, Any]:
        with self.uow.read() as tx:
            engine = tx.engines.get(engine_id)
            if engine is None:
                raise errors.EngineNotFound(engine_id)
            return reports.engine_view(tx, engine)

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
        with self.uow.read() as tx:
            counts = reports.engine_counts(tx)
            queued = tx.jobs.counts()["pending"]
        return {
            "uptime_seconds": round(self.now() - self.started_at, 3),
            "jobs_queued": queued,
            "engines_active": counts["idle"] + counts["busy"] + counts["draining"],
            "failure": self.uow.check(),
        }

    def stats(self) -> dict[str, Any]:
        with self.uow.read() as tx:
            return reports.stats(tx, self.now())
