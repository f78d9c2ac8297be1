"""``JournalStore``: the embedded backend's ``Store``, composed of the lock file, the
snapshot, the write-ahead log and recovery (see those modules for each rule).

Recovery loads the snapshot and replays every journal record newer than it. Records
hold whole objects, so a record replayed twice does no harm; a crash anywhere in the
snapshot sequence (rotate the journal, write the snapshot, delete the segments it
covers) therefore loses nothing and duplicates nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dispatch.domain.errors import PersistenceError
from dispatch.storage.journal import recovery
from dispatch.storage.journal.files import StateFiles, fsync_dir
from dispatch.storage.journal.lockfile import take_lock
from dispatch.storage.journal.snapshot import read_snapshot, write_snapshot_file
from dispatch.storage.journal.wal import FileIO, SyncObserver, WriteAheadLog
from dispatch.storage.memory.store import Op, RecoveredState, SnapshotData


class JournalStore:
    def __init__(self, path: str, *, io: FileIO | None = None,
                 observer: SyncObserver | None = None) -> None:
        self.files = StateFiles.of(path)
        self.path = self.files.path
        self._wal = WriteAheadLog(self.files, io or FileIO(), observer)
        self._snapshot_lock = threading.Lock()
        self._snap_seq = 0  # last change covered by the snapshot on disk
        self._lock_fd: int | None = take_lock(self.files)

    def _segments(self) -> list[tuple[int, str]]:
        # A method of its own so that a test can "crash" before segments are deleted.
        return self.files.segments()

    # ------------------------------------------------------------- recovery

    def recover(self) -> RecoveredState:
        snapshot = read_snapshot(self.path)
        files = recovery.journal_files(self._segments(), self.files.wal)
        replay = recovery.read_replay(files, snapshot.seq)
        recovery.apply_records(replay.records, snapshot)

        wal_length, last_seq, snap_seq = replay.wal_length, replay.last_seq, snapshot.seq

        def open_journal() -> None:
            self._wal.open(wal_length, last_seq)
            self._snap_seq = snap_seq  # the replayed changes are not in it yet

        engines = list(snapshot.engines.values())
        if snapshot.jobs_offset is None:
            open_journal()
            return RecoveredState(jobs=list(snapshot.jobs.values()), engines=engines,
                                  tables=snapshot.tables)
        jobs = recovery.jobs_in_creation_order(self.path, snapshot.jobs_offset,
                                               snapshot.jobs)
        return RecoveredState(jobs=_then(jobs, open_journal), engines=engines,
                              tables=snapshot.tables, ordered=True)

    # --------------------------------------------------------------- writing

    def append(self, ops: Sequence[Op]) -> int:
        return self._wal.append(ops)

    def wait_durable(self, seq: int) -> None:
        self._wal.wait_durable(seq)

    @property
    def durable_seq(self) -> int:
        return self._wal.durable_seq

    @property
    def failure(self) -> str | None:
        return self._wal.failure

    def check(self) -> str | None:
        return self._wal.check()

    # ------------------------------------------------------------- snapshots

    def begin_snapshot(self) -> int | None:
        # Everything in the journal closed now is covered by the snapshot about to be
        # written; the segment stays until that snapshot is on disk.
        return self._wal.rotate(self._snap_seq)

    def write_snapshot(self, data: SnapshotData) -> None:
        with self._snapshot_lock:
            try:
                write_snapshot_file(self.files, data)
            except OSError as exc:
                if self._wal.observer is not None:
                    self._wal.observer.observe_failure()
                raise PersistenceError(f"cannot write snapshot {self.path}: {exc}") from None
            self._snap_seq = max(self._snap_seq, data.seq)
            for seq, path in self._segments():
                if seq <= data.seq:
                    os.unlink(path)
            fsync_dir(self.files.directory)

    def close(self) -> None:
        self._wal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _then(items: Iterator[Any], done: Callable[[], None]) -> Iterator[Any]:
    """``items``, then ``done()`` once every one was taken: the journal is opened for
    appending only after every job was read without error, so a damaged state file
    leaves every file as it was."""
    yield from items
    done()
