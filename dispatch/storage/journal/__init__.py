"""The embedded backend: the state in memory, made durable by a write-ahead journal
and snapshots in files next to the state file. ``JournalStore`` is its ``Store``."""

from dispatch.storage.journal.store import JournalStore
from dispatch.storage.journal.wal import FileIO, SyncObserver

__all__ = ["FileIO", "JournalStore", "SyncObserver"]
