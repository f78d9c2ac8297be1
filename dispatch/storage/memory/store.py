"""What makes the memory backend durable: every change it commits passes through a
``Store`` (the journal, ``storage.journal``, or ``MemoryStore``, which keeps nothing).
Only the memory backend sees it.

A change is a list of operations ``(kind, key, record)``: ``kind`` names one of the
backend's tables (``tables.Table.kind``), ``record`` the entry's full new JSON form,
or ``None`` when it is deleted. Full post-images make replay idempotent: applying a
change twice leaves the same state as applying it once.

The memory backend calls ``append`` under its lock (so changes reach the store in the order
they were applied) and ``wait_durable`` after releasing it, so that one fsync can serve
every request waiting at that moment (group commit).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Op = tuple[str, str, Any]


@dataclass
class RecoveredState:
    """What a store found on disk: records in the state file's layout."""

    # Job records; an iterator (``ordered``: in creation order) when the store
    # streams them, so that a large queue is never held twice in memory.
    jobs: Iterable[dict[str, Any]] = field(default_factory=list)
    ordered: bool = False
    engines: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SnapshotData:
    seq: int
    jobs: list[Any]  # model objects with to_record()
    engines: list[Any]  # model objects with to_record()
    tables: dict[str, dict[str, Any]]


class Store(Protocol):
    """The small interface between the service and the disk."""

    def recover(self) -> RecoveredState:
        """Load the persisted state (called once, before serving)."""

    def append(self, ops: Sequence[Op]) -> int:
        """Record one change; return its sequence number. Raises PersistenceError."""

    def wait_durable(self, seq: int) -> None:
        """Return once change ``seq`` is on disk. Raises PersistenceError."""

    @property
    def durable_seq(self) -> int:
        """The newest change known to be on disk."""

    @property
    def failure(self) -> str | None:
        """Why changes cannot be persisted right now, or None when they can."""

    def check(self) -> str | None:
        """Try to recover from a failure; return the failure that remains, if any."""

    def begin_snapshot(self) -> int | None:
        """Called under the service lock: the sequence a snapshot taken now covers,
        or None when nothing changed since the last snapshot."""

    def write_snapshot(self, data: SnapshotData) -> None:
        """Write a snapshot taken after ``begin_snapshot``. Raises PersistenceError."""

    def close(self) -> None:
        """Release files and locks."""


class MemoryStore:
    """Keeps nothing: state lives and dies with the process (tests, throw-away runs)."""

    def __init__(self) -> None:
        self._seq = 0
        self._lock = threading.Lock()

    def recover(self) -> RecoveredState:
        return RecoveredState()

    def append(self, ops: Sequence[Op]) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def wait_durable(self, seq: int) -> None:
        return None

    @property
    def durable_seq(self) -> int:
        return self._seq

    @property
    def failure(self) -> str | None:
        return None

    def check(self) -> str | None:
        return None

    def begin_snapshot(self) -> int | None:
        return None

    def write_snapshot(self, data: SnapshotData) -> None:
        return None

    def close(self) -> None:
        return None
