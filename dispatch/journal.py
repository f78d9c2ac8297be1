"""Durable state: a write-ahead journal with group commit, plus atomic snapshots.

Files, for a state file ``P`` (``server_state.json`` by default)::

    P                 the snapshot: the original server's layout plus "version" and
                      "journal_seq" (the last change it contains)
    P.wal             the journal: one line per change, "<crc32> <json>\\n"
    P.wal.<seq>       journal segments closed by a snapshot, until that snapshot
                      is safely on disk (then deleted)
    P.lock            the owner's lock (flock) and pid

A change is appended under the service lock and made durable by ``wait_durable``
outside it: the first waiter fsyncs for everyone whose change is already written
(group commit). Recovery loads the snapshot and replays every journal record newer
than it. Records hold whole objects, so a record replayed twice does no harm; a crash
anywhere in the snapshot sequence therefore loses nothing and duplicates nothing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import orjson

from dispatch import cpp_layout, folder_watch
from dispatch.errors import PersistenceError, StateError
from dispatch.persistence import Op, RecoveredState, SnapshotData

TABLES = ("events", "idempotency", "delivery")

log = logging.getLogger("dispatch.journal")

STATE_VERSION = 2
_WHAT_TO_DO = (
    "the server did not start and changed no file; restore the file from a backup, "
    "or move it aside to inspect it (moving the journal aside loses the changes it holds)"
)


class SyncObserver(Protocol):
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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encoded(value: Any) -> Any:
    """Tables may hold values already encoded as JSON bytes: write them as they are."""
    if isinstance(value, bytes):
        return orjson.Fragment(value)
    raise TypeError(f"cannot write {type(value).__name__} to the state file")


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


class _Snapshot:
    def __init__(self, jobs: dict[str, Any], engines: dict[str, Any],
                 tables: dict[str, dict[str, Any]], seq: int) -> None:
        self.jobs, self.engines, self.tables, self.seq = jobs, engines, tables, seq
        self.jobs_offset: int | None = None  # set when the jobs are streamed


def _parse_line(line: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """One line of the snapshot's layout: a section opening (``,"name":{``) gives its
    name, an entry (``"key":value``, after the first with a leading comma) gives
    ``{key: value}``, a closing brace gives neither."""
    text = line.strip()
    if text.startswith(b","):
        text = text[1:]
    if text == b"}" or not text:
        return None, None
    if text.endswith(b":{"):
        name = orjson.loads(text[:-2])
        if isinstance(name, str):
            return name, None
    entry = orjson.loads(b"{" + text + b"}")
    return None, entry


def write_lines(handle: Any, data: SnapshotData) -> None:
    """The snapshot as valid JSON in the original layout, one entry a line, jobs last:
    written and read a line at a time, never built whole in memory."""
    header = {"version": STATE_VERSION, "journal_seq": data.seq,
              "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "layout": "lines"}
    handle.write(orjson.dumps(header)[:-1])
    sections: list[tuple[str, Iterable[tuple[str, Any]]]] = [
        ("engines", ((e.engine_id, e.to_record()) for e in data.engines)),
        *((name, table.items()) for name, table in data.tables.items()),
        ("jobs", ((job.job_id, job.to_record()) for job in data.jobs)),
    ]
    for name, entries in sections:
        handle.write(b"\n," + orjson.dumps(name) + b":{")
        separator = b"\n"
        for key, value in entries:
            handle.write(separator + orjson.dumps(key) + b":"
                         + orjson.dumps(value, default=_encoded))
            separator = b"\n,"
        handle.write(b"\n}")
    handle.write(b"\n}\n")


class JournalStore:
    def __init__(self, path: str, *, io: FileIO | None = None,
                 observer: SyncObserver | None = None) -> None:
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.wal_path = self.path + ".wal"
        self.io = io or FileIO()
        self.observer = observer
        self._cond = threading.Condition()
        self._snapshot_lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0  # last change appended
        self._durable = 0  # last change known to be on disk
        self._offset = 0  # bytes appended to the journal
        self._durable_offset = 0
        self._syncing = False
        self._failure: str | None = None
        self._snap_seq = 0  # last change covered by the snapshot on disk
        self._lock_fd = self._take_lock()
        self._folder = os.stat(self.directory)  # to notice it replaced under us

    # ------------------------------------------------------------ ownership

    def _take_lock(self) -> int:
        if not os.path.isdir(self.directory):
            raise StateError(f"the folder of state file {self.path} does not exist")
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open lock file {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"state file {self.path} is in use by another dispatch-server "
                f"(pid {holder}, lock {lock_path}); stop that one first - one process "
                "owns a state file, and the server runs one worker"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    # ------------------------------------------------------------- recovery

    def _segments(self) -> list[tuple[int, str]]:
        prefix = os.path.basename(self.wal_path) + "."
        found = []
        for name in os.listdir(self.directory):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                found.append((int(name[len(prefix):]), os.path.join(self.directory, name)))
        return sorted(found)

    def _read_snapshot(self) -> _Snapshot:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return _Snapshot({}, {}, {}, 0)
        except OSError as exc:
            raise StateError(f"cannot read state file {self.path}: {exc.strerror}") from None
        with handle:
            first = handle.readline()
            if first.startswith(b'{"version":') and b'"layout":"lines"' in first:
                return self._read_lines(handle, first)
            raw = first + handle.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateError(
                f"state file {self.path} is not valid JSON ({exc}); {_WHAT_TO_DO}"
            ) from None
        if not isinstance(data, dict):
            raise StateError(f"state file {self.path} is not a JSON object; {_WHAT_TO_DO}")
        tables = data.get("tables") or {name: data[name] for name in TABLES if name in data}
        return self._checked(data, data.get("jobs", {}), data.get("engines", {}), tables)

    def _read_lines(self, handle: Any, first: bytes) -> _Snapshot:
        """Our own layout: one entry a line, jobs last. Everything but the jobs is read
        now; the jobs are read one line at a time while they are loaded, so a large
        queue is never held twice in memory."""
        try:
            header = orjson.loads(first.rstrip(b"\n") + b"}")
            sections: dict[str, dict[str, Any]] = {}
            current: dict[str, Any] | None = None
            for line in handle:
                name, entry = _parse_line(line)
                if name is not None:
                    if name == "jobs":
                        header["engines"] = sections.pop("engines", {})
                        snapshot = self._checked(header, {}, header["engines"], sections)
                        snapshot.jobs_offset = handle.tell()
                        return snapshot
                    current = sections.setdefault(name, {})
                elif entry is not None and current is not None:
                    current.update(entry)
                elif line.strip() == b"}" and current is not None:
                    current = None
                else:
                    raise ValueError("unexpected line")
            raise ValueError("no jobs section")
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise StateError(f"state file {self.path} is damaged ({exc}); {_WHAT_TO_DO}"
                             ) from None

    def _stream_jobs(self, offset: int) -> Iterator[tuple[str, dict[str, Any]]]:
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            for number, line in enumerate(handle, start=1):
                try:
                    name, entry = _parse_line(line)
                    if entry is None:
                        if name is None and line.strip() == b"}" and handle.read(4).strip() \
                                == b"}":
                            return
                        raise ValueError("unexpected line")
                except (orjson.JSONDecodeError, ValueError) as exc:
                    raise StateError(f"state file {self.path} is damaged at job line "
                                     f"{number} ({exc}); {_WHAT_TO_DO}") from None
                ((key, record),) = entry.items()
                if not isinstance(record, dict):
                    raise StateError(f"state file {self.path}: job {key!r} is not an "
                                     f"object; {_WHAT_TO_DO}")
                yield key, record
        raise StateError(f"state file {self.path} ends inside its jobs; {_WHAT_TO_DO}")

    def _checked(self, data: dict[str, Any], jobs: Any, engines: Any,
                 tables: Any) -> _Snapshot:
        if not isinstance(jobs, dict) or not isinstance(engines, dict):
            raise StateError(
                f"state file {self.path} has no 'jobs' and 'engines' objects; {_WHAT_TO_DO}"
            )
        if cpp_layout.is_original(data):
            try:
                jobs, engines = cpp_layout.convert(jobs, engines)
            except cpp_layout.RecordError as exc:
                raise StateError(f"state file {self.path}, written by the C++ server: "
                                 f"{exc}; {_WHAT_TO_DO}") from None
        version = data.get("version", 1)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise StateError(
                f"state file {self.path} has version {version!r}, newer than this server "
                f"understands ({STATE_VERSION}); run the newer server"
            )
        seq = data.get("journal_seq", 0)
        if not isinstance(seq, int) or not isinstance(tables, dict) or not all(
            isinstance(table, dict) for table in tables.values()
        ):
            raise StateError(f"state file {self.path} has a damaged header; {_WHAT_TO_DO}")
        for kind, table in (("job", jobs), ("engine", engines)):
            for key, record in table.items():
                if not isinstance(record, dict):
                    raise StateError(f"state file {self.path}: {kind} {key!r} is not an "
                                     f"object; {_WHAT_TO_DO}")
                record.setdefault(f"{kind}_id", key)
        return _Snapshot(jobs, engines, tables, seq)

    def _read_journal(self, path: str, last_file: bool) -> tuple[list[dict[str, Any]], int]:
        """Records of one journal file, and the length of its intact part."""
        with open(path, "rb") as handle:
            lines = handle.readlines()
        records: list[dict[str, Any]] = []
        good = 0
        for number, line in enumerate(lines, start=1):
            try:
                records.append(decode_record(line))
            except ValueError as exc:
                if last_file and number == len(lines):
                    # A crash mid-write: this change was never acknowledged.
                    log.warning("dropping a torn last record in %s (%s)", path, exc)
                    break
                raise StateError(
                    f"journal {path} is damaged at record {number} ({exc}); {_WHAT_TO_DO}"
                ) from None
            good += len(line)
        return records, good

    def recover(self) -> RecoveredState:
        snapshot = self._read_snapshot()
        jobs, engines, tables, snap_seq = (snapshot.jobs, snapshot.engines, snapshot.tables,
                                           snapshot.seq)
        files = [path for _, path in self._segments()]
        files.append(self.wal_path)
        last_seq = snap_seq
        wal_length = 0
        replay: list[dict[str, Any]] = []
        for path in files:
            if not os.path.exists(path):
                continue
            records, good = self._read_journal(path, last_file=path == self.wal_path)
            if path == self.wal_path:
                wal_length = good
            for record in records:
                if record["seq"] <= snap_seq:
                    continue
                if record["seq"] != last_seq + 1:
                    # A gap means changes are missing (e.g. a backup that copied a
                    # journal newer than its snapshot): refuse rather than lose them.
                    raise StateError(
                        f"journal {path} continues at change {record['seq']} but the "
                        f"state so far ends at change {last_seq}: changes in between are "
                        f"missing; {_WHAT_TO_DO}"
                    )
                last_seq = record["seq"]
                replay.append(record)
        # With a streamed snapshot, jobs the journal changed are kept aside and take
        # the place of their snapshot line as the jobs stream by.
        for record in replay:
            for kind, key, value in record["ops"]:
                if kind == "job":
                    table = jobs
                elif kind == "engine":
                    table = engines
                else:
                    table = tables.setdefault(kind, {})
                if value is None:
                    if kind == "job" and snapshot.jobs_offset is not None:
                        table[key] = None
                    else:
                        table.pop(key, None)
                else:
                    table[key] = value

        def opened() -> None:
            self._open_journal(wal_length)
            self._seq = self._durable = self._snap_seq = last_seq
            if replay:
                # The snapshot does not cover the replayed changes yet.
                self._snap_seq = snap_seq

        if snapshot.jobs_offset is None:
            opened()
            return RecoveredState(jobs=list(jobs.values()), engines=list(engines.values()),
                                  tables=tables)
        return RecoveredState(jobs=self._merged_jobs(snapshot.jobs_offset, jobs, opened),
                              engines=list(engines.values()), tables=tables, ordered=True)

    def _merged_jobs(self, offset: int, changed: dict[str, Any],
                     done: Callable[[], None]) -> Iterator[dict[str, Any]]:
        """The snapshot's jobs in file (creation) order, each replaced by its journal
        version if it has one, then the jobs the journal created. The journal is opened
        for appending only once every job has been read without error, so a damaged
        state file leaves every file as it was."""
        for key, record in self._stream_jobs(offset):
            if key in changed:
                record = changed.pop(key)
                if record is None:
                    continue
            else:
                record.setdefault("job_id", key)
            yield record
        yield from (record for record in changed.values() if record is not None)
        done()

    def _open_journal(self, length: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        existed = os.path.exists(self.wal_path)
        fd = os.open(self.wal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if existed and os.fstat(fd).st_size != length:
            os.ftruncate(fd, length)  # cut the torn tail before appending after it
            os.fsync(fd)
        if not existed:
            _fsync_dir(self.directory)
        self._fd = fd
        self._offset = self._durable_offset = length

    # --------------------------------------------------------------- writing

    def append(self, ops: Sequence[Op]) -> int:
        with self._cond:
            if self._failure is not None and self._repair() is not None:
                raise PersistenceError(self._failure)
            assert self._fd is not None, "recover() opens the journal"
            if self._lost():
                raise PersistenceError(self._failure)
            seq = self._seq + 1
            line = encode_record(seq, ops)
            try:
                written = 0
                while written < len(line):
                    written += self.io.write(self._fd, line[written:])
            except OSError as exc:
                self._fail(exc)
                raise PersistenceError(self._failure) from None
            self._seq = seq
            self._offset += len(line)
            return seq

    def wait_durable(self, seq: int) -> None:
        with self._cond:
            while self._durable < seq:
                if self._failure is not None:
                    raise PersistenceError(self._failure)
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
                    raise PersistenceError(self._failure)
                if error is not None:
                    self._fail(error)
                    raise PersistenceError(self._failure)
                if target > self._durable:
                    self._durable, self._durable_offset = target, target_offset
                if self.observer is not None:
                    self.observer.observe_sync(time.perf_counter() - started)

    def _fail(self, exc: OSError) -> None:
        # Clients see this reason (in 503 bodies and /health): no path in it.
        self._failure = f"cannot write the journal: {exc.strerror or exc.__class__.__name__}"
        log.error("cannot write the journal %s: %s; refusing changes until it can be "
                  "written again", self.wal_path, exc)
        if self.observer is not None:
            self.observer.observe_failure()

    def _lost(self) -> bool:
        """Whether the open journal is no longer the file at its path (the state
        folder, or the journal, was removed or replaced under the server); if so, the
        store fails. Caller holds the condition."""
        assert self._fd is not None
        problem = folder_watch.lost(self.directory, self._folder, self.wal_path, self._fd)
        if problem is None:
            return False
        # Clients see this reason (in 503 bodies and /health): no path in it.
        failure = (f"the state folder or its journal was {problem} under the running "
                   "server; put it back or restart the server")
        if failure != self._failure:
            self._failure = failure
            log.error("the journal %s was %s under the running server; refusing changes "
                      "until it is back", self.wal_path, problem)
            if self.observer is not None:
                self.observer.observe_failure()
        return True

    def _repair(self) -> str | None:
        """Cut the journal back to its last durable change and check that it takes
        writes again. Caller holds the condition."""
        if self._syncing or self._fd is None or self._lost():
            return self._failure
        try:
            self.io.truncate(self._fd, self._durable_offset)
            self.io.sync(self._fd)
        except OSError:
            return self._failure
        self._offset = self._durable_offset
        self._seq = self._durable
        log.warning("the journal %s is writable again", self.wal_path)
        self._failure = None
        return None

    @property
    def durable_seq(self) -> int:
        return self._durable

    @property
    def failure(self) -> str | None:
        return self._failure

    def check(self) -> str | None:
        with self._cond:
            if self._failure is None:
                if self._fd is None or self._syncing or not self._lost():
                    return None
            return self._repair()

    # ------------------------------------------------------------- snapshots

    def begin_snapshot(self) -> int | None:
        with self._cond:
            if self._failure is not None or self._seq == self._snap_seq:
                return None
            while self._syncing:
                self._cond.wait()
            seq, fd = self._seq, self._fd
            assert fd is not None
            # Close the current journal as a segment: everything in it is covered by
            # the snapshot about to be written, and it stays until that is on disk.
            try:
                self.io.sync(fd)
                segment = f"{self.wal_path}.{seq:020d}"
                os.rename(self.wal_path, segment)
                new_fd = os.open(self.wal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                 0o600)
                _fsync_dir(self.directory)
            except OSError as exc:
                log.error("cannot start a snapshot: %s", exc)
                return None
            os.close(fd)
            self._fd = new_fd
            self._durable, self._offset, self._durable_offset = seq, 0, 0
            self._cond.notify_all()
            return seq

    def write_snapshot(self, data: SnapshotData) -> None:
        with self._snapshot_lock:
            temp = f"{self.path}.tmp-{os.getpid()}"
            try:
                with open(temp, "wb", buffering=1 << 20) as handle:
                    write_lines(handle, data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
                _fsync_dir(self.directory)
            except OSError as exc:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
                if self.observer is not None:
                    self.observer.observe_failure()
                raise PersistenceError(f"cannot write snapshot {self.path}: {exc}") from None
            self._snap_seq = max(self._snap_seq, data.seq)
            for seq, path in self._segments():
                if seq <= data.seq:
                    os.unlink(path)
            _fsync_dir(self.directory)

    def close(self) -> None:
        with self._cond:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None  # type: ignore[assignment]
