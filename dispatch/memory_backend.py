"""The memory backend: the ports over the in-memory tables (``state.State``), made
durable by a ``persistence.Store`` (the journal, or nothing at all).

Every unit runs under one lock, which makes each port operation atomic. A change is
applied to the tables as it is made, so the unit reads its own writes; on leaving
the unit its operations go to the store under the lock, in the order they were
applied, and the unit waits outside the lock until the store says they are durable
(group commit: one fsync serves every unit waiting at that moment). If the store
fails, the unit and every later unit not yet durable are undone, the latest first,
so memory never runs ahead of disk.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import islice
from types import TracebackType
from typing import Any

import orjson

from dispatch import errors, history
from dispatch.history import Event, FailureKind
from dispatch.job_search import JobFilter, matcher
from dispatch.models import Engine, Job
from dispatch.persistence import Op, SnapshotData, Store
from dispatch.process_memory import collector_paused, release_free_memory
from dispatch.scheduler import Policy, pick_job
from dispatch.state import State

log = logging.getLogger("dispatch.service")

Change = tuple[str, str, Any]  # (kind, key, the value it replaced)


class MemoryBackend:
    """The unit of work of the memory backend (``ports.UnitOfWork``)."""

    def __init__(self, store: Store, now: Callable[[], float]) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.state = State(now)
        self._undo: deque[tuple[int, list[Change]]] = deque()  # not yet durable
        self._ops: list[Op] = []  # the open unit's operations
        self._changes: list[Change] = []  # and what they replaced
        self._unit = _Unit(self)  # one for every unit: what a unit holds is above
        self._reading = _Reading(self.lock, self)
        self.jobs = MemoryJobs(self)
        self.engines = MemoryEngines(self)
        self.idempotency = MemoryIdempotency(self)
        self.deliveries = MemoryDeliveries(self)
        with collector_paused():
            recovered = store.recover()
            self.state.load(recovered)
            del recovered
        if self.state.jobs or self.state.engines:
            log.info("loaded %d jobs and %d engines", len(self.state.jobs),
                     len(self.state.engines))
            release_free_memory()

    # ------------------------------------------------------------- units

    def transaction(self) -> _Unit:
        return self._unit

    def read(self) -> _Reading:
        return self._reading

    def peek_job(self, job_id: str) -> Job | None:
        return self.state.jobs.get(job_id)

    def put(self, kind: str, key: str, value: Any, record: Any) -> Any:
        """Apply one change within the open unit; return what it replaced."""
        old = self.state.put(kind, key, value)
        self._changes.append((kind, key, old))
        self._ops.append((kind, key, record))
        return old

    def put_job(self, job_id: str, job: Job | None, failure: FailureKind | None) -> None:
        old = self.put("job", job_id, job, None if job is None else job.to_record())
        for kind, key, value in self.state.derived(job_id, old, job, failure):
            self.put(kind, key, value, value)

    def begin(self) -> None:
        self.lock.acquire()

    def end(self, failed: bool) -> int | None:
        """Close the open unit (caller holds the lock, released here): undo it when
        ``failed``, else hand it to the store; the sequence to wait for, if any."""
        ops, changes = self._ops, self._changes
        try:
            if failed or not ops:
                if changes:
                    try:
                        self._revert(changes)
                    finally:  # the next unit starts empty whatever happened
                        changes.clear()
                        ops.clear()
                return None
            self._ops, self._changes = [], []  # these two go to the store and undo log
            durable = self.store.durable_seq
            while self._undo and self._undo[0][0] <= durable:
                self._undo.popleft()
            try:
                seq = self.store.append(ops)
            except errors.PersistenceError as exc:
                self._revert(changes)
                raise errors.Unavailable(f"the change could not be saved: {exc}") from None
            self._undo.append((seq, changes))
            return seq
        finally:
            self.lock.release()

    def _revert(self, changes: list[Change]) -> None:
        for kind, key, old in reversed(changes):
            self.state.restore(kind, key, old)

    def wait_durable(self, seq: int) -> None:
        """Wait outside the lock until unit ``seq`` is on disk, or undo it and every
        later unit."""
        try:
            self.store.wait_durable(seq)
        except errors.PersistenceError as exc:
            with self.lock:
                durable = self.store.durable_seq
                while self._undo and self._undo[-1][0] > durable:
                    self._revert(self._undo.pop()[1])
            raise errors.Unavailable(f"the change could not be saved: {exc}") from None

    # ------------------------------------------------------------ store

    def snapshot(self) -> bool:
        """Write a full snapshot if anything changed; the tables are copied under the
        lock (references only: entries are immutable, history stays encoded) and
        serialised outside it."""
        with self.lock:
            seq = self.store.begin_snapshot()
            if seq is None:
                return False
            state = self.state
            data = SnapshotData(
                seq=seq,
                jobs=list(state.ordered),
                engines=list(state.engines.values()),
                tables={"events": dict(state.history),
                        "idempotency": dict(state.idempotency),
                        "delivery": dict(state.deliveries)},
            )
        self.store.write_snapshot(data)
        return True

    @property
    def failure(self) -> str | None:
        return self.store.failure

    def check(self) -> str | None:
        return self.store.check()

    def close(self) -> None:
        self.store.close()


class _Unit:
    """A unit of work: the backend is the transaction (its repositories work on the
    tables the unit's lock guards). Holds nothing of its own, so one serves all."""

    __slots__ = ("backend",)

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def __enter__(self) -> MemoryBackend:
        self.backend.begin()
        return self.backend

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seq = self.backend.end(exc_type is not None)
        if seq is not None:
            self.backend.wait_durable(seq)


class _Tables:
    """A repository: a view of the backend's tables for the open unit."""

    __slots__ = ("backend", "state")

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.state = backend.state


class _Reading:
    """A unit that only reads: the lock, and the backend's repositories."""

    __slots__ = ("lock", "backend")

    def __init__(self, lock: threading.Lock, backend: MemoryBackend) -> None:
        self.lock = lock
        self.backend = backend

    def __enter__(self) -> MemoryBackend:
        self.lock.acquire()
        return self.backend

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class MemoryJobs(_Tables):
    __slots__ = ()

    def get(self, job_id: str) -> Job | None:
        return self.state.jobs.get(job_id)

    get_for_update = get  # the unit's lock is the row lock

    def put(self, job: Job, failure: FailureKind | None = None) -> None:
        self.backend.put_job(job.job_id, job, failure)

    def delete(self, job_id: str) -> None:
        self.backend.put_job(job_id, None, None)

    def allocate_seq(self) -> int:
        seq = self.state.next_seq
        self.state.next_seq = seq + 1
        return seq

    def reserve_room(self, count: int, limit: int) -> int | None:
        pending = len(self.state.by_status["pending"])
        return None if pending + count <= limit else pending

    def claim_next(self, engine: Engine, capabilities: Iterable[str] | None, now: float,
                   policy: Policy, max_active: int) -> Job | None:
        if self.state.active_count() >= max_active:
            return None
        return pick_job(self.state.pending, engine, self.state.engines.values(),
                        capabilities, now, policy)

    def held_by(self, engine_id: str) -> Sequence[str]:
        held = self.state.held.get(engine_id)
        return tuple(held) if held else ()

    def holds_any(self, engine_id: str) -> bool:
        return engine_id in self.state.held

    def held(self) -> list[Job]:
        jobs = self.state.jobs
        return [jobs[job_id] for held in self.state.held.values() for job_id in held]

    def active_count(self) -> int:
        return self.state.active_count()

    def page(self, status: str | None, offset: int, limit: int) -> tuple[list[Job], int]:
        table = self.state.ordered if status is None else self.state.by_status[status]
        return list(islice(table.islice(offset), limit)), len(table)

    def counts(self) -> dict[str, int]:
        return {status: len(table) for status, table in self.state.by_status.items()}

    def total(self) -> int:
        return len(self.state.jobs)

    def oldest_pending(self) -> Job | None:
        pending = self.state.by_status["pending"]
        return pending[0] if pending else None

    def queue_position(self, job: Job, now: float) -> int:
        self.state.pending.promote(now)  # jobs whose backoff ended are in line again
        return self.state.pending.position(job)

    def finished_before(self, cutoff: float, limit: int) -> list[Job]:
        old = islice(self.state.finished.irange_key(max_key=(cutoff, -1)), limit)
        return [job for job in old if (job.completed_at or 0.0) < cutoff]

    def completion_stats(self, since: float) -> tuple[int, float]:
        state = self.state
        completions = state.completions
        recent = len(completions) - completions.bisect_left(since)
        count = state.job_time_count
        return recent, state.job_time_sum / count if count else 0.0

    def history(self, job_id: str) -> list[Event]:
        return history.decode(self.state.history.get(job_id))

    def search(self, where: JobFilter, offset: int, limit: int) -> tuple[list[Job], int]:
        table = self.state.by_status[where.status] if where.status else self.state.ordered
        if where.indexed:
            # Newest first: count back from the end of the creation-ordered index, so
            # the cost does not grow with the number of jobs.
            total = len(table)
            stop = max(0, total - offset)
            start = max(0, stop - limit)
            return list(table.islice(start, stop, reverse=True)), total
        ran_on = self._ran_on(where.engine) if where.engine else None
        matches = matcher(where, ran_on)
        found = [job for job in reversed(table) if matches(job)]
        return found[offset:offset + limit], len(found)

    def _ran_on(self, engine_id: str) -> Callable[[Job], bool]:
        """Jobs the engine holds or held: a failed or released job no longer names its
        engine, its history does (searched as bytes, without decoding it)."""
        quoted = orjson.dumps(engine_id)
        recorded = self.state.history

        def ran_on(job: Job) -> bool:
            return job.assigned_engine == engine_id or quoted in recorded.get(job.job_id, b"")

        return ran_on

    def pending_counts(self) -> dict[tuple[str, int], int]:
        return self.state.pending.counts()

    def finished_per_minute(self, now: float, minutes: int) -> dict[str, list[int]]:
        counts = {"completed": [0] * minutes, "failed": [0] * minutes}
        for job in self.state.finished.irange_key(min_key=(now - minutes * 60, -1)):
            # Minute 0 is the oldest, the last one the current minute.
            minute = minutes - 1 - int((now - (job.completed_at or now)) // 60)
            if 0 <= minute < minutes and job.status in counts:
                counts[job.status][minute] += 1
        return counts

    def recent_on(self, engine_id: str, limit: int) -> list[Job]:
        ran_on = self._ran_on(engine_id)
        return list(islice((job for job in reversed(self.state.ordered) if ran_on(job)),
                           limit))


class MemoryEngines(_Tables):
    __slots__ = ()

    def get(self, engine_id: str) -> Engine | None:
        return self.state.engines.get(engine_id)

    get_for_update = get

    def put(self, engine: Engine) -> None:
        self.backend.put("engine", engine.engine_id, engine, engine.to_record())

    def delete(self, engine_id: str) -> None:
        self.backend.put("engine", engine_id, None, None)

    def all(self) -> Collection[Engine]:
        return self.state.engines.values()


class MemoryIdempotency(_Tables):
    __slots__ = ()

    def claim(self, key: str, now: float, ttl: float) -> dict[str, Any] | None:
        entry = self.state.idempotency.get(key)
        return None if entry is None or now - entry["at"] >= ttl else entry

    def record(self, key: str, fingerprint: str, job_id: str, now: float) -> None:
        entry = {"hash": fingerprint, "job_id": job_id, "at": now}
        self.backend.put("idempotency", key, entry, entry)

    def expired(self, cutoff: float, limit: int) -> list[str]:
        # Oldest first: stop at the first key still young.
        keys: list[str] = []
        for key, entry in self.state.idempotency.items():
            if entry["at"] > cutoff or len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def delete(self, key: str) -> None:
        self.backend.put("idempotency", key, None, None)


class MemoryDeliveries(_Tables):
    __slots__ = ()

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.state.deliveries.get(job_id)

    get_for_update = get

    def put(self, job_id: str, delivery: dict[str, Any]) -> None:
        self.backend.put("delivery", job_id, delivery, delivery)

    def due(self, now: float) -> list[dict[str, Any]]:
        deliveries = self.state.deliveries
        return [deliveries[job_id] for job_id in self.state.due_deliveries
                if deliveries[job_id]["next_at"] <= now]
