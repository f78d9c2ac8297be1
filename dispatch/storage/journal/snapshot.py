"""The snapshot file: its layouts, the reader and the writer side by side.

Layouts the reader takes:

- ours (``"layout":"lines"`` in the first line): the original server's layout plus
  ``version`` and ``journal_seq`` (the last change it contains), valid JSON written one
  entry a line with the jobs last, so a large queue is read one job at a time and never
  held twice in memory. ``write_lines`` writes it.
- any single JSON object: the C++ server's file (no ``version``; jobs and engines keyed
  by id) or an older one of ours. Read whole.

Every job and engine read, in either layout, becomes ours in ``our_record``; the C++
server's records through ``dispatch.domain.cpp_layout`` (millisecond times, ``id``/``codec``,
``""`` as none, unknown fields kept).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from dispatch.domain import cpp_layout
from dispatch.domain.errors import StateError
from dispatch.storage.journal.files import WHAT_TO_DO, StateFiles, fsync_dir
from dispatch.storage.memory.store import SnapshotData

STATE_VERSION = 2
TABLES = ("events", "idempotency", "delivery")


@dataclass
class Snapshot:
    jobs: dict[str, Any]
    engines: dict[str, Any]
    tables: dict[str, dict[str, Any]]
    seq: int
    # Where the job lines start when the jobs are read as they stream by
    # (``stream_jobs``); then ``jobs`` is empty.
    jobs_offset: int | None = None


# ------------------------------------------------------------------ reading


def our_record(kind: str, key: str, record: Any, path: str,
               original: bool = False) -> dict[str, Any]:
    """A job or engine of the snapshot as this server's record: the one place where a
    record read from the file, in any layout, becomes ours (the key names it when the
    record does not). ``original``: the file is the C++ server's."""
    if not isinstance(record, dict):
        raise StateError(f"state file {path}: {kind} {key!r} is not an object; {WHAT_TO_DO}")
    if original:
        convert = cpp_layout.job_record if kind == "job" else cpp_layout.engine_record
        try:
            return convert(record, key)
        except cpp_layout.RecordError as exc:
            raise StateError(f"state file {path}, written by the C++ server: {exc}; "
                             f"{WHAT_TO_DO}") from None
    record.setdefault(f"{kind}_id", key)
    return record


def read_snapshot(path: str) -> Snapshot:
    """The snapshot at ``path`` (an empty one when there is none); with our layout, all
    but the jobs, which ``stream_jobs`` reads from ``jobs_offset``. Raises StateError."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return Snapshot({}, {}, {}, 0)
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
    with handle:
        first = handle.readline()
        if first.startswith(b'{"version":') and b'"layout":"lines"' in first:
            return _read_lines(handle, first, path)
        raw = first + handle.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"state file {path} is not valid JSON ({exc}); {WHAT_TO_DO}") from None
    if not isinstance(data, dict):
        raise StateError(f"state file {path} is not a JSON object; {WHAT_TO_DO}")
    tables = data.get("tables") or {name: data[name] for name in TABLES if name in data}
    return _checked(data, data.get("jobs", {}), data.get("engines", {}), tables, path)


def _parse_line(line: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """One line of our layout: a section opening (``,"name":{``) gives its name, an
    entry (``"key":value``, after the first with a leading comma) gives
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


def _read_lines(handle: Any, first: bytes, path: str) -> Snapshot:
    """Our layout: everything but the jobs is read now; the jobs are left for
    ``stream_jobs``, so a large queue is never held twice in memory."""
    try:
        header = orjson.loads(first.rstrip(b"\n") + b"}")
        sections: dict[str, dict[str, Any]] = {}
        current: dict[str, Any] | None = None
        for line in handle:
            name, entry = _parse_line(line)
            if name is not None:
                if name == "jobs":
                    header["engines"] = sections.pop("engines", {})
                    snapshot = _checked(header, {}, header["engines"], sections, path)
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
        raise StateError(f"state file {path} is damaged ({exc}); {WHAT_TO_DO}") from None


def stream_jobs(path: str, offset: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The jobs of our layout from ``offset``, one line at a time, in file (creation)
    order. Raises StateError at the first damaged line."""
    with open(path, "rb") as handle:
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
                raise StateError(f"state file {path} is damaged at job line {number} "
                                 f"({exc}); {WHAT_TO_DO}") from None
            ((key, record),) = entry.items()
            yield key, our_record("job", key, record, path)
    raise StateError(f"state file {path} ends inside its jobs; {WHAT_TO_DO}")


def _checked(data: dict[str, Any], jobs: Any, engines: Any, tables: Any,
             path: str) -> Snapshot:
    if not isinstance(jobs, dict) or not isinstance(engines, dict):
        raise StateError(f"state file {path} has no 'jobs' and 'engines' objects; {WHAT_TO_DO}")
    version = data.get("version", 1)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise StateError(
            f"state file {path} has version {version!r}, newer than this server "
            f"understands ({STATE_VERSION}); run the newer server"
        )
    seq = data.get("journal_seq", 0)
    if not isinstance(seq, int) or not isinstance(tables, dict) or not all(
        isinstance(table, dict) for table in tables.values()
    ):
        raise StateError(f"state file {path} has a damaged header; {WHAT_TO_DO}")
    original = cpp_layout.is_original(data)
    for kind, table in (("job", jobs), ("engine", engines)):
        for key, record in table.items():
            table[key] = our_record(kind, key, record, path, original)
        if original:
            # Keyed by the id the record names (the C++ layout's "id"), as ours are.
            records = list(table.values())
            table.clear()
            table.update((record[f"{kind}_id"], record) for record in records)
    return Snapshot(jobs, engines, tables, seq)


# ------------------------------------------------------------------ writing


def _encoded(value: Any) -> Any:
    """Tables may hold values already encoded as JSON bytes: write them as they are."""
    if isinstance(value, bytes):
        return orjson.Fragment(value)
    raise TypeError(f"cannot write {type(value).__name__} to the state file")


def write_lines(handle: Any, data: SnapshotData) -> None:
    """The snapshot as valid JSON in our layout, one entry a line, jobs last: written
    a line at a time, never built whole in memory."""
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


def write_snapshot_file(files: StateFiles, data: SnapshotData) -> None:
    """Replace the snapshot atomically: a temporary file in the same folder, fsync,
    rename over it, fsync of the folder. Raises OSError, leaving no temporary file."""
    temp = files.temporary()
    try:
        with open(temp, "wb", buffering=1 << 20) as handle:
            write_lines(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, files.path)
        fsync_dir(files.directory)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
