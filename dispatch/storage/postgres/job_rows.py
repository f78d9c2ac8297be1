"""A job as a row of ``jobs``: the columns the queries filter and sort on, beside the
whole record (JSON) and its history (``events``). The repositories, the unit's cheap
single-job read and ``copy-state`` all write and read jobs through these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from dispatch.domain import codecs
from dispatch.domain.models import Job

# Read with ``Unit.rows`` (rows by column name).
SELECT_JOB = "SELECT record, seq FROM jobs"
SELECT_JOB_EVENTS = "SELECT record, seq, events FROM jobs"


def job_from_row(row: Mapping[str, Any]) -> Job:
    return Job.from_dict(row["record"], row["seq"])


def job_columns(job: Job, events: bytes | None) -> tuple[Any, ...]:
    return (job.job_id, job.seq, job.status, job.target_codec,
            codecs.family(job.target_codec), job.priority, job.job_size, job.created_at,
            job.retry_at, job.assigned_at, job.completed_at, job.assigned_engine,
            Jsonb(job.to_record()), events, kind(job), job.parent_id)


def kind(job: Job) -> str:
    """The ``kind`` column: 'job', 'parent' (a chunked job) or a task's kind."""
    if job.task is not None:
        return str(job.task["kind"])
    return "job" if job.chunk_seconds is None else "parent"


JOB_COLUMNS = ("job_id, seq, status, target_codec, codec_family, priority, job_size, "
               "created_at, retry_at, assigned_at, completed_at, assigned_engine, record, "
               "events, kind, parent_id")
UPSERT_JOB = f"""
INSERT INTO jobs ({JOB_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (job_id) DO UPDATE SET
    status = EXCLUDED.status, target_codec = EXCLUDED.target_codec,
    codec_family = EXCLUDED.codec_family, priority = EXCLUDED.priority,
    job_size = EXCLUDED.job_size, retry_at = EXCLUDED.retry_at,
    assigned_at = EXCLUDED.assigned_at, completed_at = EXCLUDED.completed_at,
    assigned_engine = EXCLUDED.assigned_engine, record = EXCLUDED.record,
    events = EXCLUDED.events
"""

