"""Waiting for jobs: one live bar per job on a terminal (status, percent, fps, speed,
ETA, engine), one plain line per state change otherwise, nothing with ``--json``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from dispatch.client import render
from dispatch.client.api import INTERRUPTED, Api, Failure

FINISHED = ("completed", "failed", "cancelled")


def interrupted(job_ids: list[str]) -> Failure:
    ids = " ".join(job_ids)
    return Failure(f"interrupted; the job{'s' if len(job_ids) > 1 else ''} keep running on "
                   f"the farm: `distconv wait {ids}` picks {'them' if len(job_ids) > 1 else 'it'}"
                   f" up again", INTERRUPTED)


def line(job: dict[str, Any], label: str) -> str:
    """A job's state as one plain line."""
    text = f"{label}: {job['status']}"
    shown = render.figures(job)
    if shown:
        text += f" · {shown}"
    if job["status"] == "pending" and job.get("retry_at") and job.get("error_message"):
        text += f" · attempt failed ({job['error_message'].splitlines()[0]}), retrying"
    elif job["status"] == "pending" and job.get("waiting_reason"):
        text += f" · {job['waiting_reason']['message']}"
    elif job["status"] == "failed" and job.get("error_message"):
        text += f" · {job['error_message'].splitlines()[0]}"
    return text


def wait(api: Api, jobs: list[dict[str, Any]], labels: dict[str, str],
         quiet: bool) -> list[dict[str, Any]]:
    """Poll each job until it is finished; returns them as they ended."""
    current = {job["job_id"]: job for job in jobs}
    try:
        if quiet:
            _poll(api, current, lambda job, changed: None)
        elif render.is_terminal(sys.stderr):
            _bars(api, current, labels)
        else:
            for job in current.values():
                render.say(line(job, labels.get(job["job_id"], job["job_id"])))

            def plain(job: dict[str, Any], changed: bool) -> None:
                if changed:
                    render.say(line(job, labels.get(job["job_id"], job["job_id"])))
            # A chunk finishing is a line of its own in a log; live bars show it in place.
            _poll(api, current, plain, moment=_moment_with_chunks)
    except KeyboardInterrupt:
        raise interrupted([job_id for job_id, job in current.items()
                           if job["status"] not in FINISHED] or list(current)) from None
    return list(current.values())


def _moment(job: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a new line: the status, the attempt's error, the engine."""
    return job["status"], job.get("error_message"), job.get("assigned_engine")


def _moment_with_chunks(job: dict[str, Any]) -> tuple[Any, ...]:
    chunks = job.get("chunks") or {}
    return *_moment(job), chunks.get("completed"), chunks.get("failed")


def _poll(api: Api, current: dict[str, dict[str, Any]], seen: Any,
          moment: Callable[[dict[str, Any]], tuple[Any, ...]] = _moment) -> None:
    """Update ``current`` until every job is finished, calling ``seen(job, changed)``
    after each look (``changed``: its ``moment`` changed)."""
    while True:
        waiting = [job_id for job_id, job in current.items() if job["status"] not in FINISHED]
        if not waiting:
            return
        for job_id in waiting:
            before = current[job_id]
            job = api.job(job_id)
            current[job_id] = job
            changed = moment(job) != moment(before)
            seen(job, changed)
        if any(job["status"] not in FINISHED for job in current.values()):
            time.sleep(api.settings.poll_interval)


def _bars(api: Api, current: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[state]}"),
                        console=render.console(stderr=True), transient=False)
    tasks = {}
    with progress:
        for job_id, job in current.items():
            tasks[job_id] = progress.add_task(labels.get(job_id, job_id), total=100,
                                              completed=job.get("progress") or 0,
                                              state=_state(job))

        def update(job: dict[str, Any], changed: bool) -> None:
            job_id = job["job_id"]
            if changed:
                progress.console.print(line(job, labels.get(job_id, job_id)))
            done = 100 if job["status"] == "completed" else (job.get("progress") or 0)
            progress.update(tasks[job_id], completed=done, state=_state(job))
        _poll(api, current, update)


def _state(job: dict[str, Any]) -> str:
    shown = render.figures(job)
    return f"{job['status']}" + (f" · {shown}" if shown else "")
