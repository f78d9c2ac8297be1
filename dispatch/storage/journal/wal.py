"""The write-ahead log ``P.wal``: the record format (writer and reader), appends, group
commit, failure and repair, and rotation into segments when a snapshot starts.

A record is one line, ``"<crc32 as 8 hex digits> <json>\\n"``, the JSON being
``{"seq": n, "ops": [[kind, key, record-or-null], ...]}``. A change is appended under the
service lock and made durable by ``wait_durable`` outside it: the first waiter fsyncs
for everyone whose change is already written (group commit). Every write to the journal
is made here, and none is acknowledged once the state folder or the journal was removed
or replaced under the server (``folder_watch``): the log fails until it is back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from dispatch.domain.errors import PersistenceError, StateError
from dispatch.storage.journal import folder_watch
from dispatch.storage.journal.files import WHAT_TO_DO, StateFiles, fsync_dir
from dispatch.storage.memory.store import Op

log = logging.getLogger("dispatch.journal")


class SyncObserver(Protocol):
    """Told how long each fsync took and of each failure to persist (the metrics)."""

    def observe_sync(self, seconds: float) -> None: ...

    def observe_failure(self) -> None: ...


class FileIO:
    """The system calls the journal writes with; tests pass a failing one."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def sync(self, fd: int) -> None:
        os.fdatasync(fd)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)


# ------------------------------------------------------------ the record format


def encode_record(seq: int, ops: Sequence[Op]) -> bytes:
    payload = orjson.dumps({"seq": seq, "ops": ops})
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_record(line: bytes) -> dict[str, Any]:
    """Parse one journal line; raise ValueError when it is damaged."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        raise ValueError("malformed record")
    payload = line[9:-1]
    if int(line[:8], 16) != zlib.crc32(payload):
        raise ValueError("checksum mismatch")
    record = orjson.loads(payload)
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        raise ValueError("record without a sequence number")
    return record


def read_records(path: str, last_file: bool) -> tuple[list[dict[str, Any]], int]:
    """The records of one journal file, and the length of its intact part. A damaged
    last record of the last file is a crash mid-write (never acknowledged) and is
    dropped; a damaged record anywhere else raises StateError."""
    with open(path, "rb") as handle:
        lines = handle.readlines()
    records: list[dict[str, Any]] = []
    good = 0
    for number, line in enumerate(lines, start=1):
        try:
            records.append(decode_record(line))
        except ValueError as exc:
            if last_file and number == len(lines):
                log.warning("dropping a torn last record in %s (%s)", path, exc)
                break
            raise StateError(
                f"journal {path} is damaged at record {number} ({exc}); {WHAT_TO_DO}"
            ) from None
        good += len(line)
    return records, good


# ------------------------------------------------------------------ the log


class WriteAheadLog:
    def __init__(self, files: StateFiles, io: FileIO, observer: SyncObserver | None) -> None:
        self.files = files
        self.io = io
        self.observer = observer
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._seq = 0  # last change appended
        self.durable_seq = 0  # last change known to be on disk
        self._offset = 0  # bytes appended to the journal
        self._durable_offset = 0
        self._syncing = False
        # Why changes cannot be written now (None while they can); read without the lock.
        self.failure: str | None = None
        self._folder = os.stat(files.directory)  # to notice it replaced under us

    def open(self, length: int, seq: int) -> None:
        """Start appending after recovery: the journal's first ``length`` bytes are
        intact and end with change ``seq``."""
        if self._fd is not None:
            os.close(self._fd)
        path = self.files.wal
        existed = os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if existed and os.fstat(fd).st_size != length:
            os.ftruncate(fd, length)  # cut the torn tail before appending after it
            os.fsync(fd)
        if not existed:
            fsync_dir(self.files.directory)
        self._fd = fd
        self._offset = self._durable_offset = length
        self._seq = self.durable_seq = seq

    def append(self, ops: Sequence[Op]) -> int:
        with self._cond:
            if self.failure is not None and self._repair() is not None:
                raise PersistenceError(self.failure)
            assert self._fd is not None, "recover() opens the journal"
            if self._lost():
                raise PersistenceError(self.failure)
            seq = self._seq + 1
            line = encode_record(seq, ops)
            try:
                written = 0
                while written < len(line):
                    written += self.io.write(self._fd, line[written:])
            except OSError as exc:
                self._fail(exc)
                raise PersistenceError(self.failure) from None
            self._seq = seq
            self._offset += len(line)
            return seq

    def wait_durable(self, seq: int) -> None:
        with self._cond:
            while self.durable_seq < seq:
                if self.failure is not None:
                    raise PersistenceError(self.failure)
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target, target_offset, fd = self._seq, self._offset, self._fd
                self._cond.release()
                started = time.perf_counter()
                try:
                    self.io.sync(fd)  # type: ignore[arg-type]
                    error = None
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                self._syncing = False
                self._cond.notify_all()
                if error is None and self._lost():
                    # Synced into a file that no longer has a name: not durable.
                    raise PersistenceError(self.failure)
                if error is not None:
                    self._fail(error)
                    raise PersistenceError(self.failure)
                if target > self.durable_seq:
                    self.durable_seq, self._durable_offset = target, target_offset
                if self.observer is not None:
                    self.observer.observe_sync(time.perf_counter() - started)

    def _fail(self, exc: OSError) -> None:
        # Clients see this reason (in 503 bodies and /health): no path in it.
        self.failure = f"cannot write the journal: {exc.strerror or exc.__class__.__name__}"
        log.error("cannot write the journal %s: %s; refusing changes until it can be "
                  "written again", self.files.wal, exc)
        if self.observer is not None:
            self.observer.observe_failure()

    def _lost(self) -> bool:
        """Whether the open journal is no longer the file at its path (the state
        folder, or the journal, was removed or replaced under the server); if so, the
        log fails. Caller holds the condition."""
        assert self._fd is not None
        problem = folder_watch.lost(self.files.directory, self._folder, self.files.wal,
                                    self._fd)
        if problem is None:
            return False
        # Clients see this reason (in 503 bodies and /health): no path in it.
        failure = (f"the state folder or its journal was {problem} under the running "
                   "server; put it back or restart the server")
        if failure != self.failure:
            self.failure = failure
            log.error("the journal %s was %s under the running server; refusing changes "
                      "until it is back", self.files.wal, problem)
            if self.observer is not None:
                self.observer.observe_failure()
        return True

    def _repair(self) -> str | None:
        """Cut the journal back to its last durable change and check that it takes
        writes again. Caller holds the condition."""
        if self._syncing or self._fd is None or self._lost():
            return self.failure
        try:
            self.io.truncate(self._fd, self._durable_offset)
            self.io.sync(self._fd)
        except OSError:
            return self.failure
        self._offset = self._durable_offset
        self._seq = self.durable_seq
        log.warning("the journal %s is writable again", self.files.wal)
        self.failure = None
        return None

    def check(self) -> str | None:
        with self._cond:
            if self.failure is None:
                if self._fd is None or self._syncing or not self._lost():
                    return None
            return self._repair()

    def rotate(self, covered: int) -> int | None:
        """Close the journal as segment ``P.wal.<seq>`` and start an empty one; return
        ``seq``, the last change in the closed segment. None when nothing was appended
        after change ``covered``, or while the journal has failed."""
        with self._cond:
            if self.failure is not None or self._seq == covered:
                return None
            while self._syncing:
                self._cond.wait()
            seq, fd = self._seq, self._fd
            assert fd is not None
            try:
                self.io.sync(fd)
                os.rename(self.files.wal, self.files.segment(seq))
                new_fd = os.open(self.files.wal, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                 0o600)
                fsync_dir(self.files.directory)
            except OSError as exc:
                log.error("cannot start a snapshot: %s", exc)
                return None
            os.close(fd)
            self._fd = new_fd
            self.durable_seq, self._offset, self._durable_offset = seq, 0, 0
            self._cond.notify_all()
            return seq

    def close(self) -> None:
        with self._cond:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
                os.close(self._fd)
                self._fd = None
