"""What the service needs from the state, whatever holds it: the ports a backend
implements. The service's rules are written against these and nothing else.

A backend offers a ``UnitOfWork``. ``transaction()`` opens a unit in which the
repositories read and change state; leaving the block without an exception commits
the unit and returns only once it is durable; an exception (or a failed commit,
raised as ``errors.Unavailable``) leaves no trace of it. ``read()`` opens a unit that
only reads, for reports that must see one consistent state.

Every rule that reads and then writes is one port operation a shared database can
make atomic; the memory backend gets that for free by running each unit under one
lock:

- ``get_for_update`` (holder checks, status transitions): a row lock, held until the
  unit ends, so two reports on the same job apply one after the other;
- ``JobRepository.reserve_room`` (queue room): a conditional update of a counter;
- ``JobRepository.claim_next`` (choosing a job, the concurrency limit): the chosen
  pending row locked so no other unit claims it (``FOR UPDATE SKIP LOCKED``), the
  count of active jobs checked in the same statement;
- ``IdempotencyRepository.claim`` (idempotent submission): a unique key;
- ``JobRepository.allocate_seq`` (job ids): a sequence, never handed out twice.

Derived records: putting a job stores what ``changes.derive`` says follows from it
(the history events of its transition, the webhook delivery a job that has just
finished with a callback URL owes, the cascade of a delete), in the same unit. Every
backend stores what that one pure function returns, so no rule is written twice.

Moving a farm (``import-cpp``, ``copy-state``) goes through the same ports:
``JobRepository.load`` stores a job with its history as given, and the other records
are put as they are.

``tests/contract/`` checks every behaviour described here against each backend.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from dispatch.domain import errors
from dispatch.domain.history import Event, FailureKind
from dispatch.domain.job_search import JobFilter
from dispatch.domain.models import Delivery, Engine, IdempotencyEntry, Job, to_micros
from dispatch.domain.scheduler import Policy

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from dispatch.config.settings import Settings

Clock = Callable[[], float]


class JobRepository(Protocol):
    def get(self, job_id: str) -> Job | None:
        """The job as it is now (no lock)."""

    def get_for_update(self, job_id: str) -> Job | None:
        """The job, locked against other units until this one ends."""

    def put(self, job: Job, failure: FailureKind | None = None) -> None:
        """Store ``job`` (new or changed), with the history and delivery it implies;
        ``failure`` says what kind of failed attempt the change records."""

    def delete(self, job_id: str) -> None:
        """Remove the job with its history and delivery."""

    def load(self, job: Job, events: list[Event]) -> None:
        """Store ``job`` (a new id, its ``seq`` kept) with ``events`` as its history,
        exactly as given: nothing is derived (a farm imported or moved)."""

    def dump(self) -> Iterable[tuple[Job, list[Event]]]:
        """Every job in creation order with its history (a farm moved elsewhere)."""

    def allocate_seq(self) -> int:
        """A new creation sequence number; never handed out again, even when the
        unit is undone."""

    def reserve_room(self, count: int, limit: int) -> int | None:
        """Make room for ``count`` more pending jobs if the queue then holds at most
        ``limit``: None when it does (the room is this unit's), else how many wait."""

    def claim_next(self, engine: Engine, capabilities: Iterable[str] | None, now: float,
                   policy: Policy, max_active: int) -> Job | None:
        """The pending job ``engine`` should get now (``scheduler.pick_job``), locked
        for this unit; None when nothing suits it or ``max_active`` jobs are active.
        Two units never claim the same job."""

    def tasks_of(self, parent_id: str) -> list[Job]:
        """The tasks of a chunked job (``parent_id``), in creation order."""

    def held_by(self, engine_id: str) -> Sequence[str]:
        """Ids of the active jobs the engine holds."""

    def holds_any(self, engine_id: str) -> bool:
        """Whether the engine holds an active job."""

    def held(self) -> Iterable[Job]:
        """Every active job that an engine holds."""

    def active_count(self) -> int:
        """How many jobs are assigned or processing."""

    def page(self, status: str | None, offset: int, limit: int) -> tuple[list[Job], int]:
        """Jobs (of one status, or all) in creation order, and how many there are."""

    def counts(self) -> dict[str, int]:
        """How many jobs there are of each status."""

    def total(self) -> int:
        """How many jobs there are."""

    def oldest_pending(self) -> Job | None:
        """The pending job created first."""

    def queue_position(self, job: Job, now: float) -> int:
        """1 + how many ready pending jobs of its codec are ahead of ``job``."""

    def finished_before(self, cutoff: float, limit: int) -> list[Job]:
        """Up to ``limit`` finished jobs that finished before ``cutoff``, oldest first."""

    def completion_stats(self, since: float) -> tuple[int, float]:
        """How many jobs completed at or after ``since``, and the mean time from
        assignment to completion over every completed job (0 when none)."""

    def history(self, job_id: str) -> list[Event]:
        """The job's history events, oldest first."""

    # What the dashboard reads (each one query in SQL).

    def search(self, where: JobFilter, offset: int, limit: int) -> tuple[list[Job], int]:
        """Jobs matching ``where`` (``job_search``), newest first: up to ``limit``
        from ``offset``, and how many match in all."""

    def pending_counts(self) -> dict[tuple[str, int], int]:
        """Pending jobs (those in backoff included) per (codec, priority)."""

    def finished_since(self, since: float) -> list[tuple[str, float]]:
        """The status and finishing time of every job that finished at or after
        ``since``, in no particular order."""

    def recent_on(self, engine_id: str, limit: int) -> list[Job]:
        """Up to ``limit`` of the jobs the engine holds or held, newest first."""


class EngineRepository(Protocol):
    def get(self, engine_id: str) -> Engine | None: ...

    def get_for_update(self, engine_id: str) -> Engine | None:
        """The engine, locked against other units until this one ends."""

    def put(self, engine: Engine) -> None: ...

    def delete(self, engine_id: str) -> None: ...

    def all(self) -> Collection[Engine]:
        """Every engine (not to be changed while iterating)."""


class IdempotencyRepository(Protocol):
    def claim(self, key: str, now: float, ttl: float) -> IdempotencyEntry | None:
        """The live entry (recorded less than ``ttl`` seconds ago) under ``key``, or
        None: then the key is this unit's until it ends, to ``record``."""

    def record(self, key: str, fingerprint: str, job_id: str, now: float) -> None: ...

    def expired(self, cutoff: float, limit: int) -> list[str]:
        """Up to ``limit`` keys recorded at or before ``cutoff``, oldest first."""

    def delete(self, key: str) -> None: ...

    def all(self) -> list[tuple[str, IdempotencyEntry]]:
        """Every key with its entry, oldest first."""


class DeliveryRepository(Protocol):
    def get(self, job_id: str) -> Delivery | None: ...

    def get_for_update(self, job_id: str) -> Delivery | None: ...

    def put(self, delivery: Delivery) -> None: ...

    def due(self, now: float) -> list[Delivery]:
        """Pending deliveries whose next attempt is due at ``now``, soonest first."""

    def all(self) -> list[Delivery]:
        """Every delivery, by job id."""


class Transaction(Protocol):
    @property
    def jobs(self) -> JobRepository: ...

    @property
    def engines(self) -> EngineRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def deliveries(self) -> DeliveryRepository: ...


class UnitOfWork(Protocol):
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A unit that commits (durably) on leaving the block, or leaves no trace."""

    def read(self) -> AbstractContextManager[Transaction]:
        """A unit that only reads one consistent state."""

    def peek_job(self, job_id: str) -> Job | None:
        """One job as it is now, outside any unit (the cheapest read)."""

    def snapshot(self) -> bool:
        """Compact what is persisted, if the backend keeps a log; whether it did."""

    @property
    def failure(self) -> str | None:
        """Why changes cannot be persisted right now, or None when they can."""

    def check(self) -> str | None:
        """Try to recover from a failure; return the failure that remains, if any."""

    @property
    def grace_start(self) -> float:
        """Since when an engine silent before it gets a full heartbeat timeout: when
        this state was opened, or on a shared database when the farm's first instance
        started after every one was down."""

    def leads(self) -> bool:
        """Whether this process runs the farm's background work (sweeps, purges,
        webhooks) now: always, unless several instances share the state."""

    def start(self) -> None:
        """Start what the backend runs beside its units (on PostgreSQL the lease
        that elects the instance leading the background work); ``close`` stops it."""

    def session_secret(self) -> str | None:
        """The dashboard's session-signing secret that every instance sharing this
        state must use, or None when the dashboard may keep its own."""

    def close(self) -> None:
        """Release files, locks and connections."""


class Observer(Protocol):
    """What a backend reports to the metrics as it works (``runtime.metrics``)."""

    registry: CollectorRegistry

    def observe_sync(self, seconds: float) -> None: ...

    def observe_failure(self) -> None: ...


class Backend(Protocol):
    """A kind of state storage, as the bootstrap opens it. ``check`` runs once in
    the serving process's master, before any worker (the schema brought up to date,
    the lock and files taken); ``open`` runs in each worker and returns the unit of
    work the service uses. Neither is followed by any patching of what it made."""

    name: str

    def workers(self, settings: Settings) -> int:
        """How many server processes may share the state: one where the state lives
        in the serving process (two would each hold their own copy of the queue)."""

    def describe(self, settings: Settings) -> str:
        """Where the state is, as the ready line names it."""

    def check(self, settings: Settings, clock: Clock, observer: Observer) -> UnitOfWork | None:
        """Raise StateError or Unavailable when the state cannot be used. A backend
        that loads its state to check it returns what it loaded: the first worker,
        forked with it, serves it instead of opening the state again."""

    def open(self, settings: Settings, clock: Clock, observer: Observer) -> UnitOfWork:
        """The state, ready for the service; raises as ``check`` does."""


class ServicePart:
    """What each part of the service (commands, queries, maintenance) is built on:
    the settings, the unit of work and the clock."""

    def __init__(self, settings: Settings, uow: UnitOfWork, clock: Clock) -> None:
        self.settings = settings
        self.uow = uow
        self.clock = clock

    def now(self) -> float:
        return to_micros(self.clock())


def job_for_update(tx: Transaction, job_id: str) -> Job:
    """The job, locked for this unit; JobNotFound when there is none."""
    job = tx.jobs.get_for_update(job_id)
    if job is None:
        raise errors.JobNotFound(job_id)
    return job


def engine_for_update(tx: Transaction, engine_id: str) -> Engine:
    """The engine, locked for this unit; EngineNotFound when there is none."""
    engine = tx.engines.get_for_update(engine_id)
    if engine is None:
        raise errors.EngineNotFound(engine_id)
    return engine
