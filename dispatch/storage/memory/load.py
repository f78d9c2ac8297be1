"""Filling the memory backend's tables from what its store recovered, at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dispatch.domain import errors, history
from dispatch.domain.models import ACTIVE_STATUSES, Delivery, Engine, IdempotencyEntry, Job
from dispatch.storage.memory.store import RecoveredState

if TYPE_CHECKING:
    from dispatch.storage.memory.backend import MemoryBackend


def _next_counter(jobs: list[Job]) -> int:
    highest = -1
    for job in jobs:
        tail = job.job_id.rpartition("_")[2]
        if tail.isdigit() and int(tail) > highest:
            highest = int(tail)
    return highest + 1


_TASK_ORDER = {"plan": 0, "audio": 2, "stitch": 3}  # chunks (cNNNN) are 1


def _id_sort_key(record: Mapping[str, Any]) -> tuple[int, int, str, int, int, int]:
    job_id = str(record.get("job_id", ""))
    head, _, tail = job_id.partition("_")
    counter, dot, rest = tail.partition(".")
    # A chunked job's task ("{parent}.g{generation}.{name}") comes after its parent,
    # in the order its tasks are made.
    task = (0, 0, 0)
    if dot and record.get("parent_id"):
        generation, _, name = rest.partition(".")
        chunk = name[1:] if name.startswith("c") else ""
        task = (int(generation[1:]) if generation[1:].isdigit() else 0,
                1 if chunk.isdigit() else _TASK_ORDER.get(name, 4),
                int(chunk) if chunk.isdigit() else 0)
    try:
        return (int(head), int(counter), "", *task)
    except ValueError:
        # Other ids (the C++ benchmark layout's "job_0"): creation time first.
        created = record.get("created_at")
        micros = int(created * 1_000_000) if isinstance(created, (int, float)) else 0
        return (micros, 0, job_id, *task)


def load(backend: MemoryBackend, state: RecoveredState) -> None:
    """Fill ``backend``'s tables from ``state``; raises StateError on a record this
    server cannot read."""
    # Creation order: our ids carry it; the C++ server's ids share the same
    # "{microseconds}_{counter}" form, so sort on both parts.
    records = state.jobs if state.ordered else sorted(state.jobs, key=_id_sort_key)
    try:
        jobs = [Job.from_dict(record, seq) for seq, record in enumerate(records)]
        engines = backend.engines_table.rows
        for record in state.engines:
            engine = Engine.from_dict(record)
            engines[engine.engine_id] = engine
        tables = state.tables
        histories = backend.histories.rows
        for job_id, events in tables.get("events", {}).items():
            histories[job_id] = history.encode(events)
        entries = sorted(tables.get("idempotency", {}).items(), key=lambda item: item[1]["at"])
        for key, entry in entries:
            backend.idempotency_keys.rows[key] = IdempotencyEntry.from_record(entry)
        for job_id, delivery in tables.get("delivery", {}).items():
            backend.deliveries_table.put(job_id, Delivery.from_record(delivery))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise errors.StateError(
            f"the state holds a record this server cannot read ({exc!r}); "
            "restore the state file from a backup"
        ) from None
    table = backend.jobs_table
    table.index_all(jobs)
    # An id is "{micros}_{counter}": continuing the counter past every one in use
    # keeps a new id unique even when the clock reads no later than an old job's
    # (len(jobs) alone would repeat a counter once jobs were purged).
    table.next_seq = max(len(jobs), _next_counter(jobs))
    for job in list(table.rows.values()):
        if job.status in ACTIVE_STATUSES and job.assigned_engine not in engines \
                and job.chunk_seconds is None:  # a chunked job's parent is never held
            # A job held by an engine the file does not know can never be
            # reported on; return it to the queue rather than strand it.
            table.put(job.job_id, replace(job, status="pending", assigned_engine=None,
                                          progress=None, progress_detail=None))
