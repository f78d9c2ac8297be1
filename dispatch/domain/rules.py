"""Job rules that do not depend on where the state lives: what a new job is, what a
failed attempt makes of a job (retry with backoff, or failed for good), who may report
on a job, what an idempotent retry must repeat. Pure functions of their arguments."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from sys import intern
from typing import TYPE_CHECKING, Any

import orjson

from dispatch.domain import chunking, errors
from dispatch.domain.models import ACTIVE_STATUSES, FINISHED_STATUSES, Engine, Job

if TYPE_CHECKING:
    from dispatch.config.settings import Settings

QUEUE_FULL_RETRY_AFTER = 5  # seconds; a hint, the queue drains at the farm's pace


def new_job(data: Mapping[str, Any], seq: int, now: float, settings: Settings) -> Job:
    return Job(
        job_id=f"{int(now * 1_000_000)}_{seq}",
        seq=seq,
        source_url=data["source_url"],
        target_codec=intern(data["target_codec"]),
        job_size=float(data["job_size"]),
        priority=data.get("priority", 0),
        max_retries=data.get("max_retries", settings.max_job_retries),
        created_at=now,
        updated_at=now,
        callback_url=data.get("callback_url"),
        chunk_seconds=data.get("chunk_seconds"),
        chunks=None if data.get("chunk_seconds") is None else chunking.empty_counts(),
    )


def can_cancel(job: Job) -> bool:
    """A job can be cancelled until it has finished."""
    return job.status not in FINISHED_STATUSES


def can_retry(job: Job) -> bool:
    """Only a job that failed for good or was cancelled can be retried."""
    return job.status in ("failed", "cancelled")


def queue_full(pending: int, limit: int) -> errors.QueueFull:
    return errors.QueueFull(
        f"the queue holds {pending} pending jobs and takes at most {limit}; retry later",
        QUEUE_FULL_RETRY_AFTER,
    )


def retry_delay(retries: int, settings: Settings) -> float:
    """Seconds a job waits before attempt ``retries + 1``: doubling, capped."""
    return min(settings.retry_backoff_seconds * 2 ** (retries - 1),
               settings.retry_backoff_max_seconds)


def failed_attempt(job: Job, reason: str, now: float, settings: Settings) -> Job:
    """The job after a failed attempt: re-queued with backoff, or failed for good."""
    retries = job.retries + 1
    attempt_over = replace(job, retries=retries, error_message=reason,
                           assigned_engine=None, progress=None, progress_detail=None,
                           progress_at=None, updated_at=now)
    if settings.auto_retry_failed_jobs and retries <= job.max_retries:
        return replace(attempt_over, status="pending",
                       retry_at=now + retry_delay(retries, settings))
    return replace(attempt_over, status="failed", retry_at=None, completed_at=now)


def check_holder(job: Job, engine_id: str | None, attempt: int | None, action: str) -> None:
    """Raise unless a report on ``job`` may be applied: the job is active, the report
    is for its current attempt and (when the engine is known) from its holder."""
    job_id = job.job_id
    if attempt is not None and attempt != job.attempt:
        raise errors.StaleAttempt(
            f"report for attempt {attempt} of job {job_id!r}, which is on attempt "
            f"{job.attempt}: the job was given to another engine since"
        )
    if job.status not in ACTIVE_STATUSES:
        raise errors.InvalidTransition(
            f"cannot {action} job {job_id!r}: it is {job.status}, not assigned or processing"
        )
    if engine_id is not None and engine_id != job.assigned_engine:
        raise errors.NotJobHolder(f"engine {engine_id!r} does not hold job {job_id!r}")


def withdrawn(job: Job | None, engine: Engine) -> bool:
    """Whether a job in the engine's local queue is no longer its own: cancelled, or
    given back to the queue or to another engine."""
    if job is None:
        return False
    return job.status == "cancelled" or (
        job.status not in FINISHED_STATUSES and job.assigned_engine != engine.engine_id)


def stalled(job: Job, now: float, limit: float) -> bool:
    """An active job with no progress for more than ``limit`` seconds."""
    since = job.progress_at if job.progress_at is not None else job.assigned_at
    return since is not None and now - since > limit


def fingerprint(data: Mapping[str, Any]) -> str:
    """What an idempotent retry must repeat: the request body, key order aside."""
    return hashlib.sha256(orjson.dumps(dict(data), option=orjson.OPT_SORT_KEYS)).hexdigest()
