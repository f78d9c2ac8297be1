"""What every part of the service shares: the settings, the unit of work it reads
and changes state through, and the clock."""

from __future__ import annotations

from collections.abc import Callable

from dispatch import errors
from dispatch.models import Engine, Job, to_micros
from dispatch.ports import Transaction, UnitOfWork
from dispatch.settings import Settings

Clock = Callable[[], float]


class ServicePart:
    def __init__(self, settings: Settings, uow: UnitOfWork, clock: Clock) -> None:
        self.settings = settings
        self.uow = uow
        self.clock = clock

    def now(self) -> float:
        return to_micros(self.clock())


def job_for_update(tx: Transaction, job_id: str) -> Job:
    job = tx.jobs.get_for_update(job_id)
    if job is None:
        raise errors.JobNotFound(job_id)
    return job


def engine_for_update(tx: Transaction, engine_id: str) -> Engine:
    engine = tx.engines.get_for_update(engine_id)
    if engine is None:
        raise errors.EngineNotFound(engine_id)
    return engine
