"""The embedded backend: the state in memory, made durable by a write-ahead journal
and snapshots in files next to the state file. ``JournalStore`` is the memory
backend's ``Store``; ``open_journal`` is how everything else opens it."""

import time

from dispatch.service.ports import Clock
from dispatch.storage.journal.store import JournalStore
from dispatch.storage.journal.wal import FileIO, SyncObserver
from dispatch.storage.memory import MemoryBackend

__all__ = ["FileIO", "JournalStore", "SyncObserver", "open_journal"]


def open_journal(path: str, clock: Clock = time.time,
                 observer: SyncObserver | None = None) -> MemoryBackend:
    """The state of state file ``path``, locked for this process and loaded; raises
    StateError when it is damaged or owned by another process."""
    return MemoryBackend(JournalStore(path, observer=observer), clock)
