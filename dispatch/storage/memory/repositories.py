"""The memory backend's repositories (``ports``): views of its tables for the open
unit, which holds the backend's lock. A change goes through ``MemoryBackend.put``,
which records it for the store and for undo."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import orjson

from dispatch.domain.changes import derive
from dispatch.domain.history import Event, FailureKind
from dispatch.domain.job_search import JobFilter, matcher
from dispatch.domain.models import Delivery, Engine, IdempotencyEntry, Job
from dispatch.domain.scheduler import Policy, pick_job

if TYPE_CHECKING:
    from dispatch.storage.memory.backend import MemoryBackend


def _seq(job: Job) -> int:
    return job.seq


class _Repository:
    # The tables, held directly: these methods run on every request.
    __slots__ = ("backend", "jobs", "engines", "histories", "keys", "deliveries")

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.jobs = backend.jobs_table
        self.engines = backend.engines_table
        self.histories = backend.histories
        self.keys = backend.idempotency_keys
        self.deliveries = backend.deliveries_table


class MemoryJobs(_Repository):
    __slots__ = ()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.rows.get(job_id)

    get_for_update = get  # the unit's lock is the row lock

    def put(self, job: Job, failure: FailureKind | None = None) -> None:
        put, job_id = self.backend.put, job.job_id
        old = put(self.jobs, job_id, job)
        derived = derive(old, job, failure, self.histories.rows.get(job_id),
                         self.deliveries.rows.get)
        if derived.history is not None:
            put(self.histories, job_id, derived.history)
        if derived.delivery is not None:
            put(self.deliveries, job_id, derived.delivery)

    def delete(self, job_id: str) -> None:
        put = self.backend.put
        put(self.jobs, job_id, None)
        # ``changes.derive`` of a delete: the job's history and delivery go with it.
        for table in (self.histories, self.deliveries):
            if job_id in table.rows:
                put(table, job_id, None)

    def load(self, job: Job, events: list[Event]) -> None:
        self.backend.put(self.jobs, job.job_id, job)
        self.jobs.next_seq = max(self.jobs.next_seq, job.seq + 1)
        if events:
            self.backend.put(self.histories, job.job_id, events)

    def dump(self) -> Iterator[tuple[Job, list[Event]]]:
        events = self.histories.events
        for job in self.jobs.in_creation_order():
            yield job, events(job.job_id)

    def allocate_seq(self) -> int:
        table = self.jobs
        seq = table.next_seq
        table.next_seq = seq + 1
        return seq

    def reserve_room(self, count: int, limit: int) -> int | None:
        pending = len(self.jobs.by_status["pending"])
        return None if pending + count <= limit else pending

    def claim_next(self, engine: Engine, capabilities: Iterable[str] | None, now: float,
                   policy: Policy, max_active: int) -> Job | None:
        table = self.jobs
        if table.active_count() >= max_active:
            return None
        return pick_job(table.pending, engine, self.engines.rows.values(),
                        capabilities, now, policy)

    def tasks_of(self, parent_id: str) -> list[Job]:
        ids = self.jobs.children.get(parent_id)
        rows = self.jobs.rows
        return sorted((rows[job_id] for job_id in ids), key=_seq) if ids else []

    def held_by(self, engine_id: str) -> Sequence[str]:
        held = self.jobs.held.get(engine_id)
        return tuple(held) if held else ()

    def holds_any(self, engine_id: str) -> bool:
        return engine_id in self.jobs.held

    def held(self) -> list[Job]:
        table = self.jobs
        return [table.rows[job_id] for held in table.held.values() for job_id in held]

    def active_count(self) -> int:
        return self.jobs.active_count()

    def page(self, status: str | None, offset: int, limit: int) -> tuple[list[Job], int]:
        table = self.jobs
        index = table.ordered if status is None else table.by_status[status]
        return list(islice(index.islice(offset), limit)), len(index)

    def counts(self) -> dict[str, int]:
        return {status: len(index)
                for status, index in self.jobs.by_status.items()}

    def total(self) -> int:
        return len(self.jobs.ordered)  # jobs, not the tasks of chunked ones

    def oldest_pending(self) -> Job | None:
        pending = self.jobs.by_status["pending"]
        return pending[0] if pending else None

    def queue_position(self, job: Job, now: float) -> int:
        pending = self.jobs.pending
        pending.promote(now)  # jobs whose backoff ended are in line again
        return pending.position(job)

    def finished_before(self, cutoff: float, limit: int) -> list[Job]:
        finished = self.jobs.finished
        old = islice(finished.irange_key(max_key=(cutoff, -1)), limit)
        return [job for job in old if (job.completed_at or 0.0) < cutoff]

    def completion_stats(self, since: float) -> tuple[int, float]:
        table = self.jobs
        completions = table.completions
        recent = len(completions) - completions.bisect_left(since)
        count = table.job_time_count
        return recent, table.job_time_sum / count if count else 0.0

    def history(self, job_id: str) -> list[Event]:
        return self.histories.events(job_id)

    def search(self, where: JobFilter, offset: int, limit: int) -> tuple[list[Job], int]:
        table = self.jobs
        index = table.by_status[where.status] if where.status else table.ordered
        if where.indexed:
            # Newest first: count back from the end of the creation-ordered index, so
            # the cost does not grow with the number of jobs.
            total = len(index)
            stop = max(0, total - offset)
            start = max(0, stop - limit)
            return list(index.islice(start, stop, reverse=True)), total
        ran_on = self._ran_on(where.engine) if where.engine else None
        matches = matcher(where, ran_on)
        found = [job for job in reversed(index) if matches(job)]
        return found[offset:offset + limit], len(found)

    def _ran_on(self, engine_id: str) -> Callable[[Job], bool]:
        """Jobs the engine holds or held: a failed or released job no longer names its
        engine, its history does (searched as bytes, without decoding it)."""
        quoted = orjson.dumps(engine_id)
        recorded = self.histories.rows

        def ran_on(job: Job) -> bool:
            return job.assigned_engine == engine_id or quoted in recorded.get(job.job_id, b"")

        return ran_on

    def pending_counts(self) -> dict[tuple[str, int], int]:
        return self.jobs.pending.counts()

    def finished_since(self, since: float) -> list[tuple[str, float]]:
        finished = self.jobs.finished.irange_key(min_key=(since, -1))
        return [(job.status, job.completed_at or since) for job in finished]

    def recent_on(self, engine_id: str, limit: int) -> list[Job]:
        ran_on = self._ran_on(engine_id)
        ordered = self.jobs.ordered
        return list(islice((job for job in reversed(ordered) if ran_on(job)), limit))


class MemoryEngines(_Repository):
    __slots__ = ()

    def get(self, engine_id: str) -> Engine | None:
        return self.engines.rows.get(engine_id)

    get_for_update = get

    def put(self, engine: Engine) -> None:
        self.backend.put(self.engines, engine.engine_id, engine)

    def delete(self, engine_id: str) -> None:
        self.backend.put(self.engines, engine_id, None)

    def all(self) -> Collection[Engine]:
        return self.engines.rows.values()


class MemoryIdempotency(_Repository):
    __slots__ = ()

    def claim(self, key: str, now: float, ttl: float) -> IdempotencyEntry | None:
        entry = self.keys.rows.get(key)
        return None if entry is None or now - entry.at >= ttl else entry

    def record(self, key: str, fingerprint: str, job_id: str, now: float) -> None:
        self.backend.put(self.keys, key,
                         IdempotencyEntry(fingerprint, job_id, now))

    def expired(self, cutoff: float, limit: int) -> list[str]:
        # Oldest first: stop at the first key still young.
        keys: list[str] = []
        for key, entry in self.keys.rows.items():
            if entry.at > cutoff or len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def delete(self, key: str) -> None:
        self.backend.put(self.keys, key, None)

    def all(self) -> list[tuple[str, IdempotencyEntry]]:
        return list(self.keys.rows.items())


class MemoryDeliveries(_Repository):
    __slots__ = ()

    def get(self, job_id: str) -> Delivery | None:
        return self.deliveries.rows.get(job_id)

    get_for_update = get

    def put(self, delivery: Delivery) -> None:
        self.backend.put(self.deliveries, delivery.job_id, delivery)

    def due(self, now: float) -> list[Delivery]:
        table = self.deliveries
        due = [table.rows[job_id] for job_id in table.pending
               if table.rows[job_id].next_at <= now]
        return sorted(due, key=lambda delivery: delivery.next_at)

    def all(self) -> list[Delivery]:
        return sorted(self.deliveries.rows.values(),
                      key=lambda delivery: delivery.job_id)
