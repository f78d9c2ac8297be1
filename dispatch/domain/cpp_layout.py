"""The C++ server's records, read as this server's: one set of rules for its state
files (``server_state.json`` without ``"version"``) and its SQLite databases
(``dispatch-server import-cpp``).

What differs in the original's records, and what is made of it:

- times are epoch **milliseconds** when they are numbers (``created_at:
  1771301536301``); a number of 0 or less, or ``""``, is no time;
- its benchmark layout names a job's id and codec ``id`` and ``codec``: read as
  ``job_id`` and ``target_codec`` (when both names are present ours wins, and the
  other is kept as an unknown field);
- ``""`` in ``assigned_engine``, ``output_url`` and ``error_message`` means none;
- ``local_job_queue`` may be a string holding a JSON list;
- it kept no attempt count and no assignment time: a job it had given out
  (``assigned``, ``processing``) is on attempt 1, assigned at its last update; an
  engine's ``benchmark_time`` seeds its ``avg_benchmark_time``, as a first heartbeat
  with one does;
- fields this server does not know (``metadata``, an engine's ``encoders``) are kept:
  a job's in ``extra``, an engine's in ``telemetry``, and written back with the record.

A job that could never run here (no codec, or no source for a job that is not
completed or cancelled) is refused with ``RecordError`` naming the job and the field:
the caller stops rather than load a job that waits forever. Pure functions: no disk,
no server state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from dispatch.domain.models import ACTIVE_STATUSES, Engine, Job

_JOB_RENAMES = {"id": "job_id", "codec": "target_codec"}
_ENGINE_RENAMES = {"id": "engine_id"}
_EMPTY_IS_NULL = ("assigned_engine", "output_url", "error_message", "callback_url")
_JOB_TIMES = ("created_at", "updated_at", "assigned_at", "completed_at", "retry_at",
              "progress_at")
_ENGINE_TIMES = ("last_heartbeat", "registered_at")
_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(Job)) - {"seq", "extra"}
_ENGINE_FIELDS = (frozenset(f.name for f in dataclasses.fields(Engine))
                  - {"offline", "telemetry"}) | {"status", "current_jobs"}
_NEED_NO_SOURCE = frozenset({"completed", "cancelled"})


class RecordError(ValueError):
    """A record of the original's that this server cannot take."""

    def __init__(self, kind: str, key: str, field: str, problem: str) -> None:
        self.kind, self.key, self.field = kind, key, field
        self.problem = f"{field} {problem}"
        super().__init__(f"{kind} {key!r}: {self.problem}")


def is_original(document: Mapping[str, Any]) -> bool:
    """A state file without ``version`` was written by the C++ server."""
    return "version" not in document


def millis(value: Any) -> Any:
    """A time of the original's as this server reads it: numbers (and digit strings)
    are epoch milliseconds, returned as seconds; anything else is left for the
    model's own parsing (RFC 3339 strings)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value / 1000.0 if value > 0 else None
    return None if value == "" else value


def _split(raw: Mapping[str, Any], renames: Mapping[str, str],
           known: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    record: dict[str, Any] = {}
    unknown: dict[str, Any] = {}
    for name, value in raw.items():
        target = renames.get(name, name)
        if target not in known or (target != name and target in raw):
            unknown[name] = value
        else:
            record[target] = value
    return record, unknown


def job_record(raw: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
    """One job of the original's as this server's state record."""
    record, unknown = _split(raw, _JOB_RENAMES, _JOB_FIELDS)
    job_id = record.get("job_id") or key
    if not isinstance(job_id, str) or not job_id:
        raise RecordError("job", str(key or job_id), "job_id", "is missing or not a string")
    record["job_id"] = job_id
    for name in _EMPTY_IS_NULL:
        if record.get(name) == "":
            record[name] = None
    for name in _JOB_TIMES:
        if name in record:
            record[name] = millis(record[name])
    codec = record.get("target_codec")
    if not isinstance(codec, str) or not codec.strip():
        raise RecordError("job", job_id, "target_codec", "(the original's 'codec') is "
                          "missing or empty: no engine could ever take the job")
    source = record.get("source_url")
    if record.get("status") not in _NEED_NO_SOURCE and (
            not isinstance(source, str) or not source.strip()):
        raise RecordError("job", job_id, "source_url",
                          "is missing or empty: no engine could ever run the job")
    if record.get("status") in ACTIVE_STATUSES:
        # Its holder reports attempt 1, and stalls are timed from the assignment.
        if not record.get("attempt"):
            record["attempt"] = 1
        if record.get("assigned_at") is None:
            record["assigned_at"] = record.get("updated_at") or record.get("created_at")
    if unknown:
        record["extra"] = unknown
    return record


def engine_record(raw: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
    """One engine of the original's as this server's state record."""
    record, unknown = _split(raw, _ENGINE_RENAMES, _ENGINE_FIELDS)
    engine_id = record.get("engine_id") or key
    if not isinstance(engine_id, str) or not engine_id:
        raise RecordError("engine", str(key or engine_id), "engine_id",
                          "is missing or not a string")
    record["engine_id"] = engine_id
    for name in _ENGINE_TIMES:
        if name in record:
            record[name] = millis(record[name])
    queue = record.get("local_job_queue")
    if isinstance(queue, str):
        try:
            record["local_job_queue"] = orjson.loads(queue) if queue.strip() else []
        except orjson.JSONDecodeError:
            raise RecordError("engine", engine_id, "local_job_queue",
                              "is a string that holds no JSON list") from None
    if not isinstance(record.get("local_job_queue", []), list):
        raise RecordError("engine", engine_id, "local_job_queue", "is not a list")
    if record.get("avg_benchmark_time") is None and record.get("benchmark_time") is not None:
        record["avg_benchmark_time"] = record["benchmark_time"]
    if unknown:
        record["telemetry"] = unknown
    return record

