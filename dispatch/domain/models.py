"""Plain data: jobs, engines, and their JSON form (the contract's and the state file's).

Objects are never mutated once they are in the service's tables: a change builds a new
object (``dataclasses.replace``), so a snapshot can copy the tables' references under
the lock and serialise them afterwards, and an undone change restores the old object.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from sys import intern
from typing import Any

JOB_STATUSES = ("pending", "assigned", "processing", "completed", "failed", "cancelled")
ACTIVE_STATUSES = frozenset({"assigned", "processing"})
FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})
ENGINE_STATUSES = ("idle", "busy", "draining", "offline")
# Engine ids: what the API, the key file and the engine_keys setting accept. The
# names of the fixed routes beside /engines/{engine_id} are not engine ids, so that
# those routes and an engine's own never answer for each other.
RESERVED_ENGINE_IDS = ("heartbeat", "benchmark_result")
ENGINE_ID = re.compile(
    rf"^(?!(?:{'|'.join(RESERVED_ENGINE_IDS)})$)[A-Za-z0-9._:-]{{1,128}}$")
ENGINE_ID_RULE = "1-128 letters, digits or ._:-, and not heartbeat or benchmark_result"
# Job ids are any text, but /jobs/batch is its own route.
RESERVED_JOB_IDS = ("batch",)
_STATUSES = {status: status for status in JOB_STATUSES}
_TIME_KEYS = ("retry_at", "created_at", "updated_at", "assigned_at", "completed_at")


def format_time(timestamp: float | None) -> str | None:
    """RFC 3339 UTC with microseconds and a ``Z``."""
    if timestamp is None:
        return None
    seconds, micros = divmod(round(timestamp * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def to_micros(timestamp: float) -> float:
    """The same instant at microsecond precision, as the JSON form keeps it, so an
    object read back from disk equals the one that was written."""
    return round(timestamp * 1_000_000) / 1_000_000


def parse_time(value: Any) -> float | None:
    """Read a time written by us or by the C++ server (RFC 3339 or epoch seconds)."""
    if value is None or value == "":
        return None
    if type(value) is str and len(value) == 27 and value[26] == "Z":
        return datetime.fromisoformat(value).timestamp()  # our own format: the fast path
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=datetime.now().astimezone().tzinfo).timestamp()
        return parsed.timestamp()
    raise ValueError(f"not a time: {value!r}")


def _time(value: Any) -> float | None:
    """A time from our own records: usually already a float."""
    return value if value is None or type(value) is float else parse_time(value)


def _detail(value: Any) -> dict[str, float | None] | None:
    """A stored ``progress_detail``, its time as Unix seconds whatever form it was
    written in; anything but an object is none."""
    if not isinstance(value, Mapping):
        return None
    detail = {key: value.get(key) for key in PROGRESS_FIGURES}
    detail["updated_at"] = parse_time(value.get("updated_at"))
    return detail


# The figures of a progress report beside its percentage (``Job.progress_detail``).
PROGRESS_FIGURES = ("fps", "speed", "eta_seconds")


@dataclass(slots=True)
class Job:
    job_id: str
    seq: int  # creation order; the counter part of the id for jobs we create
    source_url: str
    target_codec: str
    job_size: float
    priority: int
    max_retries: int
    created_at: float
    updated_at: float
    status: str = "pending"
    assigned_engine: str | None = None
    output_url: str | None = None
    progress: float | None = None
    retries: int = 0
    error_message: str | None = None
    retry_at: float | None = None
    assigned_at: float | None = None
    completed_at: float | None = None
    attempt: int = 0
    progress_at: float | None = None  # when progress last changed (stall detection)
    callback_url: str | None = None
    # The engine's latest figures while it encodes: fps, speed (x real time),
    # eta_seconds (each a number or None) and updated_at (Unix seconds); None until an
    # engine reports one, and again when the job goes back to the queue.
    progress_detail: dict[str, float | None] | None = None
    # Fields of a record written by the C++ server that this server does not use
    # (``metadata``...), written back as they were; None for every other job.
    extra: dict[str, Any] | None = None
    # The output kept in the object store ({size, sha256, content_type}), or None.
    output: dict[str, Any] | None = None
    # Chunked encoding (``dispatch.domain.chunking``): a parent has ``chunk_seconds``
    # and the counts of its chunk tasks (``chunks``); a task names its parent
    # (``parent_id``) and what it does (``task``). None on every other job.
    chunk_seconds: int | None = None
    parent_id: str | None = None
    task: dict[str, Any] | None = None
    chunks: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The API form: the record's keys with RFC 3339 times."""
        body = self.to_record()
        del body["progress_at"]
        body.pop("extra", None)
        for key in _TIME_KEYS:
            body[key] = format_time(body[key])
        if self.progress_detail is not None:
            body["progress_detail"] = {**self.progress_detail, "updated_at": format_time(
                self.progress_detail.get("updated_at"))}
        return body

    def to_record(self) -> dict[str, Any]:
        """The state-file form: the API's keys plus what only the server needs, with
        times as Unix seconds (microsecond precision). Numbers load several times
        faster than RFC 3339 strings and leave no temporary strings behind, which
        keeps a large queue's resident memory close to its live size; the C++
        server's string times load as well."""
        record = {
            "job_id": self.job_id,
            "source_url": self.source_url,
            "target_codec": self.target_codec,
            "job_size": self.job_size,
            "priority": self.priority,
            "status": self.status,
            "assigned_engine": self.assigned_engine,
            "output_url": self.output_url,
            "progress": self.progress,
            "retries": self.retries,
            "max_retries": self.max_retries,
            "error_message": self.error_message,
            "retry_at": self.retry_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "assigned_at": self.assigned_at,
            "completed_at": self.completed_at,
            "attempt": self.attempt,
            "callback_url": self.callback_url,
            "progress_at": self.progress_at,
            "progress_detail": self.progress_detail,
            "output": self.output,
            "chunk_seconds": self.chunk_seconds,
            "parent_id": self.parent_id,
            "task": self.task,
            "chunks": self.chunks,
        }
        if self.extra is not None:
            record["extra"] = self.extra
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], seq: int) -> Job:
        """Load a job from the state file; tolerant of sparser records (the C++
        server's, once ``dispatch.domain.cpp_layout`` has read them as ours).

        Strings repeated across jobs (status, codec, engine) are shared, not copied
        per job: a queue of 100,000 jobs holds a handful of them."""
        status = _STATUSES.get(data.get("status") or "pending")
        if status is None:
            raise ValueError(f"job {data.get('job_id')!r} has unknown status "
                             f"{data.get('status')!r}")
        if "attempt" in data and "progress_at" in data:
            # Written by this server: every key is there, in its type.
            created = _time(data["created_at"]) or 0.0
            engine = data["assigned_engine"]
            return cls(
                data["job_id"], seq, data["source_url"], intern(data["target_codec"]),
                float(data["job_size"]), data["priority"], data["max_retries"], created,
                _time(data["updated_at"]) or created, status,
                None if engine is None else intern(engine), data["output_url"],
                data["progress"], data["retries"], data["error_message"],
                _time(data["retry_at"]), _time(data["assigned_at"]),
                _time(data["completed_at"]), data["attempt"],
                _time(data["progress_at"]), data.get("callback_url"),
                data.get("progress_detail"), data.get("extra"), data.get("output"),
                data.get("chunk_seconds"), data.get("parent_id"), data.get("task"),
                data.get("chunks"),
            )
        created = parse_time(data.get("created_at")) or 0.0
        return cls(
            job_id=str(data["job_id"]),
            seq=seq,
            source_url=str(data.get("source_url", "")),
            target_codec=intern(str(data.get("target_codec", ""))),
            job_size=float(data.get("job_size") or 0.0),
            priority=int(data.get("priority") or 0),
            max_retries=int(data.get("max_retries", 3)),
            created_at=created,
            updated_at=parse_time(data.get("updated_at")) or created,
            status=status,
            assigned_engine=data.get("assigned_engine") or None,
            output_url=data.get("output_url") or None,
            progress=None if data.get("progress") is None else float(data["progress"]),
            retries=int(data.get("retries") or 0),
            error_message=data.get("error_message") or None,
            retry_at=parse_time(data.get("retry_at")),
            assigned_at=parse_time(data.get("assigned_at")),
            completed_at=parse_time(data.get("completed_at")),
            attempt=int(data.get("attempt") or 0),
            progress_at=parse_time(data.get("progress_at")),
            callback_url=data.get("callback_url") or None,
            progress_detail=_detail(data.get("progress_detail")),
            extra=data.get("extra") or None,
            output=data.get("output") or None,
            chunk_seconds=data.get("chunk_seconds"),
            parent_id=data.get("parent_id") or None,
            task=data.get("task") or None,
            chunks=data.get("chunks") or None,
        )


@dataclass(slots=True)
class Engine:
    engine_id: str
    registered_at: float
    last_heartbeat: float
    engine_type: str | None = None
    hostname: str | None = None
    supported_codecs: tuple[str, ...] = ()
    storage_capacity_gb: float | None = None
    streaming_support: bool = False
    benchmark_time: float | None = None
    avg_benchmark_time: float | None = None
    benchmark_count: int = 0
    local_job_queue: tuple[str, ...] = ()
    jobs_completed: int = 0
    jobs_failed: int = 0
    offline: bool = False
    drain: str | None = None  # "api" (operator) or "engine" (announced by the engine)
    telemetry: dict[str, Any] | None = None  # the last heartbeat's other fields, as sent
    # The kinds of chunked-encoding task it runs (``chunking.TASK_KINDS``); none: it
    # is given whole jobs only.
    task_kinds: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The state-file form (``status`` and ``current_jobs`` are derived on load)."""
        return {
            "engine_id": self.engine_id,
            "engine_type": self.engine_type,
            "hostname": self.hostname,
            "supported_codecs": list(self.supported_codecs),
            "storage_capacity_gb": self.storage_capacity_gb,
            "streaming_support": self.streaming_support,
            "benchmark_time": self.benchmark_time,
            "avg_benchmark_time": self.avg_benchmark_time,
            "benchmark_count": self.benchmark_count,
            "local_job_queue": list(self.local_job_queue),
            "jobs_completed": self.jobs_completed,
            "jobs_failed": self.jobs_failed,
            "registered_at": format_time(self.registered_at),
            "last_heartbeat": format_time(self.last_heartbeat),
            "status": "offline" if self.offline else "idle",
            "drain": self.drain,
            "telemetry": self.telemetry,
            "task_kinds": list(self.task_kinds),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Engine:
        last = parse_time(data.get("last_heartbeat")) or 0.0
        benchmark = data.get("benchmark_time")
        avg = data.get("avg_benchmark_time")
        return cls(
            engine_id=str(data["engine_id"]),
            registered_at=parse_time(data.get("registered_at")) or last,
            last_heartbeat=last,
            engine_type=data.get("engine_type") or None,
            hostname=data.get("hostname") or None,
            supported_codecs=tuple(str(c) for c in data.get("supported_codecs") or ()),
            storage_capacity_gb=(
                None if data.get("storage_capacity_gb") is None
                else float(data["storage_capacity_gb"])
            ),
            streaming_support=bool(data.get("streaming_support", False)),
            benchmark_time=None if benchmark is None else float(benchmark),
            avg_benchmark_time=None if avg is None else float(avg),
            benchmark_count=int(data.get("benchmark_count") or (0 if avg is None else 1)),
            local_job_queue=tuple(str(j) for j in data.get("local_job_queue") or ()),
            jobs_completed=int(data.get("jobs_completed") or 0),
            jobs_failed=int(data.get("jobs_failed") or 0),
            offline=data.get("status") == "offline",
            drain=data.get("drain") if data.get("drain") in ("api", "engine") else None,
            telemetry=data.get("telemetry") or None,
            task_kinds=tuple(str(k) for k in data.get("task_kinds") or ()),
        )


DELIVERY_STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True, slots=True)
class Delivery:
    """The webhook a finished job owes its client (``callbacks`` makes and advances
    it; the sender only sends). Each notification of the same job (a retried job
    finishes again) is a new ``generation``."""

    job_id: str
    url: str
    event: str  # the job's status when it finished
    payload: dict[str, Any]  # the job's API form then
    first_at: float
    next_at: float
    generation: int = 1
    state: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    delivered_at: float | None = None

    def to_record(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "url": self.url, "state": self.state,
                "event": self.event, "attempts": self.attempts, "first_at": self.first_at,
                "next_at": self.next_at, "last_error": self.last_error,
                "delivered_at": self.delivered_at, "payload": self.payload,
                "generation": self.generation}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(job_id=data["job_id"], url=data["url"], event=data["event"],
                   payload=data["payload"], first_at=data["first_at"],
                   next_at=data.get("next_at") or 0.0, generation=data["generation"],
                   state=data["state"], attempts=data["attempts"],
                   last_error=data.get("last_error"),
                   delivered_at=data.get("delivered_at"))


@dataclass(frozen=True, slots=True)
class IdempotencyEntry:
    """A submission made under an ``Idempotency-Key``: what it asked for (a hash of
    the request) and the job it made, ``at`` when."""

    fingerprint: str
    job_id: str
    at: float

    def to_record(self) -> dict[str, Any]:
        return {"hash": self.fingerprint, "job_id": self.job_id, "at": self.at}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> IdempotencyEntry:
        return cls(fingerprint=data["hash"], job_id=data["job_id"], at=data["at"])
