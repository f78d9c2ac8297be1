"""The backends the contract suite and the service's rule tests run against, each
behind a ``Harness`` that can open it, restart it (durable backends keep their state)
and make its commits fail (``faults``). Adding a backend means adding a harness here."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from dispatch.domain.errors import PersistenceError
from dispatch.domain.models import to_micros
from dispatch.service.ports import UnitOfWork
from dispatch.storage.journal import JournalStore
from dispatch.storage.memory import MemoryBackend
from dispatch.storage.memory.store import MemoryStore, Op, RecoveredState, SnapshotData, Store
from dispatch.storage.postgres.pool import Pool, conninfo
from tests.conftest import FakeClock
from tests.support.postgres import FlakyPostgresBackend, PostgresServer, RefusingCommits


class FlakyStore:
    """A store that refuses on demand: ``refuse_append`` fails the next appends;
    ``refuse_durable`` fails the waits for every change appended since it was set
    (after ``gate`` opens, when one is given, so that several units pile up)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.refuse_append = False
        self.appended = 0  # changes appended so far
        self._refused_after: int | None = None
        self.gate: threading.Event | None = None

    def refuse_durable(self, gate: threading.Event | None = None) -> None:
        self._refused_after = self.inner.durable_seq
        self.gate = gate

    def recover(self) -> RecoveredState:
        return self.inner.recover()

    def append(self, ops: Sequence[Op]) -> int:
        if self.refuse_append:
            raise PersistenceError("no space left on device (test)")
        seq = self.inner.append(ops)
        self.appended += 1
        return seq

    def wait_durable(self, seq: int) -> None:
        if self._refused_after is not None and seq > self._refused_after:
            if self.gate is not None:
                self.gate.wait(10)
            raise PersistenceError("input/output error (test)")
        self.inner.wait_durable(seq)

    @property
    def durable_seq(self) -> int:
        durable = self.inner.durable_seq
        return durable if self._refused_after is None else min(durable, self._refused_after)

    @property
    def failure(self) -> str | None:
        return self.inner.failure

    def check(self) -> str | None:
        return self.inner.check()

    def begin_snapshot(self) -> int | None:
        return self.inner.begin_snapshot()

    def write_snapshot(self, data: SnapshotData) -> None:
        self.inner.write_snapshot(data)

    def close(self) -> None:
        self.inner.close()


class Faults(Protocol):
    """How a harness makes its backend's commits fail, whatever the backend:
    ``refuse_append`` fails the next commits; ``refuse_durable`` fails every later one
    once ``gate`` opens; ``appended`` counts the commits that got through."""

    refuse_append: bool
    appended: int

    def refuse_durable(self, gate: threading.Event | None = None) -> None: ...


class Harness:
    """Opens one kind of backend; ``durable`` when a restart keeps its state."""

    name = ""
    durable = False

    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.faults: Faults | None = None
        self.backend: UnitOfWork | None = None

    def now(self) -> float:
        return to_micros(self.clock())

    def inner_store(self) -> Store:
        raise NotImplementedError

    def open(self) -> UnitOfWork:
        store = FlakyStore(self.inner_store())
        self.faults = store
        self.backend = MemoryBackend(store, self.clock)
        return self.backend

    def restart(self, snapshot: bool = False) -> UnitOfWork:
        """Stop the backend as a crash would (no snapshot unless asked) and open it
        again on what it persisted."""
        assert self.backend is not None
        if snapshot:
            self.backend.snapshot()
        self.backend.close()
        return self.open()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


class MemoryHarness(Harness):
    name = "memory"

    def inner_store(self) -> Store:
        return MemoryStore()


class JournalHarness(Harness):
    name = "journal"
    durable = True

    def inner_store(self) -> Store:
        return JournalStore(str(self.tmp_path / "server_state.json"))


class PostgresHarness(Harness):
    """PostgreSQL (``tests/support/postgres.py``): a backend over the session's server, its
    tables emptied when the test starts; a restart opens a new pool on the same
    database; the commits refuse as a lost database would (``RefusingCommits``)."""

    name = "postgres"
    durable = True
    server: PostgresServer | None = None  # the session's, set by the fixtures below

    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        super().__init__(tmp_path, clock)
        assert self.server is not None
        self.server.reset()
        self.refusing = RefusingCommits()
        self.faults = self.refusing

    def open(self) -> UnitOfWork:
        assert self.server is not None
        self.backend = FlakyPostgresBackend(Pool(conninfo(self.server.url), 10), self.now,
                                            self.refusing)
        return self.backend


HARNESSES = [MemoryHarness, JournalHarness, PostgresHarness]


@pytest.fixture(params=HARNESSES, ids=[h.name for h in HARNESSES])
def harness(request: Any, tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    yield from _opened(request, tmp_path, clock)


DURABLE = [h for h in HARNESSES if h.durable]


@pytest.fixture(params=DURABLE, ids=[h.name for h in DURABLE])
def durable_harness(request: Any, tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    """Only the backends that keep their state across a restart."""
    yield from _opened(request, tmp_path, clock)


def _opened(request: Any, tmp_path: Path, clock: FakeClock) -> Iterator[Harness]:
    if request.param is PostgresHarness:
        PostgresHarness.server = request.getfixturevalue("postgres")  # started once
    harness: Harness = request.param(tmp_path, clock)
    yield harness
    harness.close()
