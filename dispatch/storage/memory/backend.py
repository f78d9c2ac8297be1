"""The memory backend: the ports over in-memory tables (``tables``), made durable by
a ``Store`` (the journal, or nothing at all).

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
import time
from collections import deque
from types import TracebackType
from typing import Any

from dispatch.domain import errors
from dispatch.domain.models import Job, to_micros
from dispatch.runtime.process_memory import collector_paused, release_free_memory
from dispatch.service.ports import Clock, Transaction
from dispatch.storage.memory.load import load
from dispatch.storage.memory.repositories import (
    MemoryDeliveries,
    MemoryEngines,
    MemoryIdempotency,
    MemoryJobs,
)
from dispatch.storage.memory.store import MemoryStore, Op, SnapshotData, Store
from dispatch.storage.memory.tables import (
    Deliveries,
    Engines,
    Histories,
    IdempotencyKeys,
    Jobs,
    Table,
)

log = logging.getLogger("dispatch.service")

Change = tuple[Table[Any], str, Any]  # (table, key, the value it replaced)


class MemoryBackend:
    """The unit of work of the memory backend (``ports.UnitOfWork``)."""

    def __init__(self, store: Store | None = None, clock: Clock = time.time) -> None:
        """The state ``store`` recovers (nothing kept at all without one), moved by
        ``clock``."""
        self._store: Store = store if store is not None else MemoryStore()

        def now() -> float:
            return to_micros(clock())

        self.jobs_table = Jobs(now)
        self.engines_table = Engines()
        self.histories = Histories()
        self.idempotency_keys = IdempotencyKeys()
        self.deliveries_table = Deliveries()
        self._undo: deque[tuple[int, list[Change]]] = deque()  # not yet durable
        self._ops: list[Op] = []  # the open unit's operations
        self._changes: list[Change] = []  # and what they replaced
        # One of each for every unit: what a unit holds is above. The repositories
        # are reached through a unit only, so never outside the lock.
        self.lock = threading.Lock()
        self._unit = _Unit(self)
        self._reading = _Reading(self)
        # The collector would walk the growing tables again and again while they fill
        # (about 1 s of a 100,000-job start); release_free_memory collects once after.
        with collector_paused():
            recovered = self._store.recover()
            load(self, recovered)
            del recovered
        if self.jobs_table.rows or self.engines_table.rows:
            log.info("loaded %d jobs and %d engines", len(self.jobs_table.rows),
                     len(self.engines_table.rows))
            release_free_memory()
        self._grace_start = now()

    # ------------------------------------------------------------- units

    def transaction(self) -> _Unit:
        return self._unit

    def read(self) -> _Reading:
        return self._reading

    def peek_job(self, job_id: str) -> Job | None:
        return self.jobs_table.rows.get(job_id)

    def put(self, table: Table[Any], key: str, value: Any) -> Any:
        """Apply one change within the open unit; return what it replaced."""
        old = table.put(key, value)
        self._changes.append((table, key, old))
        self._ops.append((table.kind, key, table.record(value)))
        return old

    def begin(self) -> None:
        self.lock.acquire()

    def end(self, failed: bool) -> int | None:
        """Close the open unit (the lock is held, and released here): undo it when
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
            durable = self._store.durable_seq
            while self._undo and self._undo[0][0] <= durable:
                self._undo.popleft()
            try:
                seq = self._store.append(ops)
            except errors.PersistenceError as exc:
                self._revert(changes)
                raise errors.Unavailable(f"the change could not be saved: {exc}") from None
            self._undo.append((seq, changes))
            return seq
        finally:
            self.lock.release()

    def _revert(self, changes: list[Change]) -> None:
        for table, key, old in reversed(changes):
            table.restore(key, old)

    def wait_durable(self, seq: int) -> None:
        """Wait outside the lock until unit ``seq`` is on disk, or undo it and every
        later unit."""
        try:
            self._store.wait_durable(seq)
        except errors.PersistenceError as exc:
            with self.lock:
                durable = self._store.durable_seq
                while self._undo and self._undo[-1][0] > durable:
                    self._revert(self._undo.pop()[1])
            raise errors.Unavailable(f"the change could not be saved: {exc}") from None

    # ------------------------------------------------------------ store

    def snapshot(self) -> bool:
        """Write a full snapshot if anything changed; the tables are copied under the
        lock (references only: entries are immutable, histories stay encoded) and
        serialised outside it."""
        with self.lock:
            seq = self._store.begin_snapshot()
            if seq is None:
                return False
            jobs = self.jobs_table.in_creation_order()
            engines = list(self.engines_table.rows.values())
            events = dict(self.histories.rows)
            keys = list(self.idempotency_keys.rows.items())
            deliveries = list(self.deliveries_table.rows.items())
        data = SnapshotData(seq=seq, jobs=jobs, engines=engines, tables={
            "events": events,
            "idempotency": {key: entry.to_record() for key, entry in keys},
            "delivery": {key: delivery.to_record() for key, delivery in deliveries},
        })
        self._store.write_snapshot(data)
        return True

    @property
    def grace_start(self) -> float:
        return self._grace_start

    def leads(self) -> bool:
        return True  # the state lives in this process alone

    def start(self) -> None:
        return None

    def session_secret(self) -> str | None:
        return None

    @property
    def failure(self) -> str | None:
        return self._store.failure

    def check(self) -> str | None:
        return self._store.check()

    def close(self) -> None:
        self._store.close()


class _Repositories:
    """The transaction a unit gives: the repositories over the backend's tables."""

    __slots__ = ("jobs", "engines", "idempotency", "deliveries")

    def __init__(self, backend: MemoryBackend) -> None:
        self.jobs = MemoryJobs(backend)
        self.engines = MemoryEngines(backend)
        self.idempotency = MemoryIdempotency(backend)
        self.deliveries = MemoryDeliveries(backend)


class _Unit:
    """A unit that changes state: the lock, then the store (``MemoryBackend.end``)."""

    __slots__ = ("backend", "repositories")

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.repositories = _Repositories(backend)

    def __enter__(self) -> Transaction:
        self.backend.begin()
        return self.repositories

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seq = self.backend.end(exc_type is not None)
        if seq is not None:
            self.backend.wait_durable(seq)


class _Reading:
    """A unit that only reads: the lock, and the repositories."""

    __slots__ = ("lock", "repositories")

    def __init__(self, backend: MemoryBackend) -> None:
        self.lock = backend.lock
        self.repositories = backend.transaction().repositories

    def __enter__(self) -> Transaction:
        self.lock.acquire()
        return self.repositories

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
