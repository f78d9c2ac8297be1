"""Chunked encoding, the workflow: what follows in the state when a chunked job or one
of its tasks changes. Every rule of when tasks are made, when the parent moves and what
the parent's cancel, retry, priority and removal do to its tasks is here, called from
the commands and the maintenance inside their units of work (the pure rules are
``dispatch.domain.chunking``). Each function does nothing for a job that is neither a
parent nor a task, so its callers need not ask.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from dispatch.domain import chunking, errors
from dispatch.domain.models import FINISHED_STATUSES, Job
from dispatch.service.ports import Transaction

events = logging.getLogger("dispatch.events")


def current_generation(tasks: list[Job]) -> int:
    return max((chunking.generation_of(t) for t in tasks), default=0)


def started(tx: Transaction, job: Job, now: float) -> None:
    """A new chunked job gets its plan task, in the same unit."""
    if job.chunk_seconds is None:
        return
    tx.jobs.put(chunking.plan_task(job, 1, tx.jobs.allocate_seq(), now))


def refuse_task(job: Job, action: str) -> None:
    """Cancel, retry and priority act on the parent, never on one of its tasks."""
    if job.parent_id is not None:
        raise errors.InvalidTransition(
            f"cannot {action} job {job.job_id!r}: it is a task of chunked job "
            f"{job.parent_id!r}; {action} that job instead")


def reads_source(job: Job, output_url: str) -> bool:
    """A plan task's report that the chunks read the source itself (it answers
    ``Range``, or is already in the store): an output that is not a new file."""
    return chunking.kind_of(job) == "plan" and output_url == job.source_url


def check_completion(job: Job, probe: Mapping[str, Any] | None) -> None:
    """A plan task completes with the source's probe, and no other job does."""
    if chunking.kind_of(job) == "plan":
        if probe is None:
            raise errors.Invalid({"probe": ["a plan task completes with the source's "
                                            "probe"]})
    elif probe is not None:
        raise errors.Invalid({"probe": ["only a plan task completes with a probe"]})


def follow(tx: Transaction, task: Job, now: float,
           probe: Mapping[str, Any] | None = None) -> None:
    """What a task's change (just stored) makes of its parent: the next tasks when a
    stage is done, the parent failed when a task is out of retries, completed with
    the stitch's output, else its progress and counts."""
    if task.parent_id is None:
        return
    parent = tx.jobs.get_for_update(task.parent_id)
    if parent is None or parent.status in FINISHED_STATUSES:
        return
    kind = chunking.kind_of(task)
    if task.status == "failed":
        fail(tx, parent, f"{chunking.task_label(task)} failed: {task.error_message}", now)
        return
    tasks = tx.jobs.tasks_of(parent.job_id)
    generation = current_generation(tasks)
    if task.status == "completed" and kind == "plan":
        assert probe is not None
        problem = chunking.probe_problem(probe)
        if problem is not None:
            fail(tx, parent, problem, now)
            return
        seqs = (tx.jobs.allocate_seq() for _ in itertools.count())
        made = chunking.plan_tasks(parent, generation, probe, task.output_url or
                                   parent.source_url, seqs, now)
        for new in made:
            tx.jobs.put(new)
        tasks = [*tasks, *made]
    elif task.status == "completed" and kind in ("chunk", "audio"):
        work = [t for t in tasks if chunking.kind_of(t) in ("chunk", "audio")]
        if all(t.status == "completed" for t in work) \
                and not any(chunking.kind_of(t) == "stitch" for t in tasks):
            stitch = chunking.stitch_task(parent, generation, work, _probe_of(work),
                                          tx.jobs.allocate_seq(), now)
            tx.jobs.put(stitch)
            tasks = [*tasks, stitch]
    elif task.status == "completed" and kind == "stitch":
        tx.jobs.put(replace(chunking.rollup(parent, tasks, now), status="completed",
                            output_url=task.output_url, output=task.output, progress=100.0,
                            progress_detail=None, completed_at=now, updated_at=now,
                            retry_at=None, error_message=None))
        events.info("chunked job completed", extra={"job_id": parent.job_id})
        return
    rolled = chunking.rollup(parent, tasks, now)
    if rolled is not parent:
        tx.jobs.put(rolled)


def _probe_of(work: list[Job]) -> dict[str, Any]:
    """What the stitch expects, from the chunk and audio tasks the probe made."""
    chunks = [t.task for t in work if t.task and t.task["kind"] == "chunk"]
    audio = next((t.task for t in work if t.task and t.task["kind"] == "audio"), None)
    return {"frames": sum(c["frames"] for c in chunks), "frame_rate": chunks[0]["frame_rate"],
            "audio": None if audio is None else {"duration": audio["duration"]}}


def fail(tx: Transaction, parent: Job, reason: str, now: float) -> None:
    """The parent fails for good (no retry of its own); its unfinished tasks are
    cancelled (an engine holding one learns it from its next heartbeat)."""
    tasks = tx.jobs.tasks_of(parent.job_id)
    cancel_tasks(tx, tasks, now)
    tx.jobs.put(replace(parent, status="failed", error_message=reason, completed_at=now,
                        updated_at=now, retry_at=None, progress_detail=None,
                        chunks=chunking.counts(tx.jobs.get(t.job_id) or t for t in tasks)))
    events.info("chunked job failed: %s", reason, extra={"job_id": parent.job_id})


def cancel_tasks(tx: Transaction, tasks: list[Job], now: float) -> None:
    for task in tasks:
        if task.status not in FINISHED_STATUSES:
            locked = tx.jobs.get_for_update(task.job_id) or task
            tx.jobs.put(replace(locked, status="cancelled", completed_at=now,
                                updated_at=now, retry_at=None))


def cancelled(tx: Transaction, parent: Job, now: float) -> None:
    """A cancelled parent's unfinished tasks are cancelled with it."""
    if parent.chunk_seconds is not None:
        cancel_tasks(tx, tx.jobs.tasks_of(parent.job_id), now)


def retried(tx: Transaction, parent: Job, now: float) -> list[Job]:
    """A retried parent runs again from a clean plan, as the next generation: its
    tasks are deleted (returned, for their stored outputs) and a new plan task made."""
    if parent.chunk_seconds is None:
        return []
    old = remove_tasks(tx, parent)
    tx.jobs.put(chunking.plan_task(parent, current_generation(old) + 1,
                                   tx.jobs.allocate_seq(), now))
    tx.jobs.put(replace(parent, chunks=chunking.empty_counts(), error_message=None))
    return old


def reprioritised(tx: Transaction, parent: Job, now: float) -> None:
    """A parent's new priority is its unfinished tasks' too."""
    if parent.chunk_seconds is None:
        return
    for task in tx.jobs.tasks_of(parent.job_id):
        if task.status not in FINISHED_STATUSES:
            locked = tx.jobs.get_for_update(task.job_id) or task
            tx.jobs.put(replace(locked, priority=parent.priority, updated_at=now))


def remove_tasks(tx: Transaction, parent: Job) -> list[Job]:
    """Delete a parent's tasks (the parent is removed or starts again); return them."""
    tasks = tx.jobs.tasks_of(parent.job_id)
    for task in tasks:
        tx.jobs.delete(task.job_id)
    return tasks


# ------------------------------------------------------------------ reads


def chunk_rows(tx: Transaction, parent: Job) -> dict[str, Any]:
    """``GET /jobs/{id}/chunks``: each chunk task of the current generation, and the
    plan, audio and stitch tasks."""
    if parent.chunk_seconds is None:
        raise errors.Conflict(f"job {parent.job_id!r} is not a chunked job "
                              "(it was submitted without chunk_seconds)")
    tasks = tx.jobs.tasks_of(parent.job_id)
    chunks, others = [], []
    for task in tasks:
        assert task.task is not None
        row = {"job_id": task.job_id, "status": task.status, "engine": task.assigned_engine,
               "attempt": task.attempt, "progress": task.progress}
        if task.task["kind"] == "chunk":
            chunks.append({"index": task.task["index"],
                           "start_time": task.task["start_time"],
                           "end_time": task.task["end_time"],
                           "frames": task.task["frames"], **row})
        else:
            others.append({"kind": task.task["kind"], **row})
    chunks.sort(key=lambda row: row["index"])
    return {"job_id": parent.job_id, "generation": current_generation(tasks),
            "chunks": chunks, "tasks": others}


def engine_task(tx: Transaction, job: Job,
                sign: Callable[[str], str]) -> dict[str, Any] | None:
    """A task as its engine gets it: as stored, a stitch's chunk outputs and audio as
    URLs it can GET (``sign`` makes one of a job's ``output_url``)."""
    if job.task is None or job.task["kind"] != "stitch":
        return job.task
    chunks = []
    for index, chunk_id in enumerate(job.task["chunks"]):
        chunk = tx.jobs.get(chunk_id)
        if chunk is None or chunk.output_url is None or chunk.task is None:
            raise errors.Conflict(f"chunk {index} of {job.parent_id!r} has no output")
        chunks.append({"index": index, "url": sign(chunk.output_url),
                       "frames": chunk.task["frames"]})
    audio = None
    if job.task["audio"] is not None:
        found = tx.jobs.get(job.task["audio"])
        if found is None or found.output_url is None:
            raise errors.Conflict(f"the audio of {job.parent_id!r} has no output")
        audio = {"url": sign(found.output_url)}
    return {**job.task, "chunks": chunks, "audio": audio}
