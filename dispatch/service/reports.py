"""What the service reports about its state: a job with why it waits and its webhook,
an engine with the jobs it holds, statistics. Functions of what a unit of work reads
(the ``ports``); the service calls them inside one, so each report sees one state.
Their API forms are made in one place, ``present``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from dispatch.config.settings import Settings
from dispatch.domain.codecs import family
from dispatch.domain.models import Delivery, Engine, Job, format_time
from dispatch.domain.scheduler import fits, takes_codec
from dispatch.service.ports import Transaction


# Tuples: one is made for every job a request shows, so they must be cheap to build
# (a frozen dataclass's __init__ costs several times as much).
class JobState(NamedTuple):
    """A job as its client sees it."""

    job: Job
    waiting_reason: dict[str, Any] | None = None  # pending jobs: why (``waiting_reason``)
    delivery: Delivery | None = None  # jobs with a callback URL: their webhook


class EngineState(NamedTuple):
    """An engine with what the server derives: the jobs it holds, and so its status."""

    engine: Engine
    current_jobs: tuple[str, ...]

    @property
    def status(self) -> str:
        return engine_status(self.engine, bool(self.current_jobs))


class Beat(NamedTuple):
    """The answer to a heartbeat: the engine, and the jobs in its queue it must stop
    (cancelled, or no longer its own)."""

    state: EngineState
    cancelled_jobs: list[str]


def engine_state(tx: Transaction, engine: Engine) -> EngineState:
    return EngineState(engine, tuple(tx.jobs.held_by(engine.engine_id)))


def waiting_reason(tx: Transaction, settings: Settings, job: Job, now: float) -> dict[str, Any]:
    """Why a pending job waits: the first reason that holds."""
    if job.retry_at is not None and job.retry_at > now:
        return _reason("backoff", f"in backoff after a failed attempt until "
                       f"{format_time(job.retry_at)}")
    live = [e for e in tx.engines.all() if not e.offline]
    # A chunked job waits for an engine that plans (its plan task is what waits);
    # a task for one that runs its kind.
    kind = job.task["kind"] if job.task is not None \
        else "plan" if job.chunk_seconds is not None else None
    if kind is not None:
        live = [e for e in live if kind in e.task_kinds]
        if not live:
            return _reason("no_task_engine", f"no active engine runs {kind} tasks of "
                           "chunked jobs (an engine advertises them in task_kinds)")
    codec = _codec_name(job.target_codec)
    able = [e for e in live if takes_codec(job, e)]
    if not able:
        return _reason("no_engine_for_codec", f"no active engine supports codec {codec}")
    roomy = [e for e in able if fits(job, e)]
    if not roomy:
        return _reason("no_engine_with_room", f"no active engine supporting {codec} "
                       f"has storage for {job.job_size:g} MB")
    if all(e.drain is not None for e in roomy):
        return _reason("engines_draining", "every engine that could take it is draining")
    active = tx.jobs.active_count()
    if active >= settings.max_concurrent_jobs:
        return _reason("concurrency_limit", f"{active} jobs are running, the limit "
                       "(max_concurrent_jobs); it starts when one finishes")
    position = tx.jobs.queue_position(job, now)
    return _reason("queued", f"number {position} in line for codec {codec}", position)


def _codec_name(codec: str) -> str:
    """A codec as reports name it: with its family when that is another name
    (``'libx264' (family h264)``)."""
    codec_family = family(codec)
    return repr(codec) if codec_family == codec else f"{codec!r} (family {codec_family})"


def _reason(code: str, message: str, position: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "position": position}


def per_minute(finished: Iterable[tuple[str, float]], now: float,
               minutes: int) -> dict[str, list[int]]:
    """Jobs completed and finally failed in each of the ``minutes`` minutes up to
    ``now``, oldest minute first, from (status, finishing time) pairs."""
    counts = {"completed": [0] * minutes, "failed": [0] * minutes}
    for status, finished_at in finished:
        # Minute 0 is the oldest, the last one the current minute.
        minute = minutes - 1 - int((now - finished_at) // 60)
        if 0 <= minute < minutes and status in counts:
            counts[status][minute] += 1
    return counts


def stats(tx: Transaction, now: float) -> dict[str, Any]:
    """Counts of jobs and engines, and throughput over the last hour."""
    engines = engine_counts(tx)
    jobs: dict[str, int] = {"total": tx.jobs.total(), **tx.jobs.counts()}
    last_hour, avg = tx.jobs.completion_stats(now - 3600)
    finished = jobs["completed"] + jobs["failed"]
    return {
        "jobs": jobs,
        "engines": {
            "total": sum(engines.values()),
            "active": engines["idle"] + engines["busy"] + engines["draining"],
            **engines,
        },
        "performance": {
            "avg_job_time": round(avg, 3),
            "jobs_per_hour": last_hour,
            "success_rate": round(100.0 * jobs["completed"] / finished, 2) if finished else 0.0,
        },
    }


def engine_status(engine: Engine, holds_jobs: bool) -> str:
    if engine.offline:
        return "offline"
    if engine.drain is not None:
        return "draining"
    return "busy" if holds_jobs else "idle"


def engine_counts(tx: Transaction) -> dict[str, int]:
    counts = {"idle": 0, "busy": 0, "draining": 0, "offline": 0}
    for engine in tx.engines.all():
        counts[engine_status(engine, tx.jobs.holds_any(engine.engine_id))] += 1
    return counts
