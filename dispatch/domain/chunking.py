"""Chunked encoding, the pure part: task ids, the plan cut from a probe, the tasks a
parent gets, and what a parent shows of its tasks (status, progress, counts).

A chunked job is a *parent* that no engine is ever given; its work is done by *tasks*,
jobs of their own with ``parent_id`` and ``task``: one ``plan`` (probe the source),
``chunk`` tasks (frames [start_frame, start_frame + frames) of the first video
stream), at most one ``audio`` task (the audio, once, whole) and one ``stitch``. The
service (``dispatch.service.chunked``) decides when each is made; the rules are here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from fractions import Fraction
from typing import Any

from dispatch.domain.models import ACTIVE_STATUSES, FINISHED_STATUSES, Job

TASK_KINDS = ("plan", "chunk", "audio", "stitch")
CHUNK_SECONDS_MIN, CHUNK_SECONDS_MAX = 2, 600
CHUNKS_SHARE = 95.0  # of a parent's progress; the stitch makes the rest
MERGE_BELOW = Fraction(1, 4)  # a last chunk under a quarter of the others joins the one before
VFR_REASON = ("variable frame rate sources cannot be split frame-exact; submit without "
              "chunk_seconds")


def task_id(parent_id: str, generation: int, name: str) -> str:
    """``plan``, ``audio``, ``stitch`` or ``c0003`` (``chunk_name``) of a generation."""
    return f"{parent_id}.g{generation}.{name}"


def chunk_name(index: int) -> str:
    return f"c{index:04d}"


def generation_of(task: Job) -> int:
    """The generation a task belongs to, read from its id."""
    assert task.parent_id is not None
    rest = task.job_id[len(task.parent_id) + 2:]
    return int(rest.split(".", 1)[0])


def kind_of(job: Job) -> str | None:
    """A task's kind; None for a job that is not a task."""
    return None if job.task is None else str(job.task["kind"])


def task_label(task: Job) -> str:
    """How a parent's failure names the task: ``chunk 3``, ``stitch``, ``planning``."""
    kind = kind_of(task)
    if kind == "chunk":
        assert task.task is not None
        return f"chunk {task.task['index']}"
    return "planning" if kind == "plan" else str(kind)


def new_task(parent: Job, generation: int, name: str, task: dict[str, Any], seq: int,
             now: float, source_url: str | None = None, job_size: float | None = None) -> Job:
    """A task of ``parent``: its codec, priority, retries and age (created_at, for
    aging), no webhook."""
    return Job(job_id=task_id(parent.job_id, generation, name), seq=seq,
               source_url=source_url or parent.source_url, target_codec=parent.target_codec,
               job_size=parent.job_size if job_size is None else job_size,
               priority=parent.priority, max_retries=parent.max_retries,
               created_at=parent.created_at, updated_at=now, parent_id=parent.job_id,
               task=task)


def plan_task(parent: Job, generation: int, seq: int, now: float) -> Job:
    assert parent.chunk_seconds is not None
    return new_task(parent, generation, "plan",
                    {"kind": "plan", "chunk_seconds": parent.chunk_seconds}, seq, now)


def empty_counts() -> dict[str, int]:
    return {"total": 0, "pending": 0, "running": 0, "completed": 0, "failed": 0}


# ------------------------------------------------------------------ the plan


def probe_problem(probe: Mapping[str, Any]) -> str | None:
    """Why a probed source cannot be cut (the parent fails at once), or None."""
    if probe.get("variable_frame_rate"):
        return VFR_REASON
    if not probe.get("frame_rate") or int(probe.get("frames") or 0) < 1:
        return "the source has no video frames to split"
    try:
        if Fraction(str(probe["frame_rate"])) <= 0:
            return f"the source's frame rate {probe['frame_rate']!r} is not positive"
    except (ValueError, ZeroDivisionError):
        return f"the source's frame rate {probe['frame_rate']!r} is not N/D"
    return None


def cut(total_frames: int, frame_rate: Fraction, chunk_seconds: int) -> list[tuple[int, int]]:
    """(start_frame, frames) of each chunk: every frame in exactly one chunk, in
    order; a last chunk under a quarter of the others is merged into the one before."""
    per_chunk = max(1, round(chunk_seconds * frame_rate))
    chunks = [(start, min(per_chunk, total_frames - start))
              for start in range(0, total_frames, per_chunk)]
    if len(chunks) > 1 and chunks[-1][1] < per_chunk * MERGE_BELOW:
        start, frames = chunks[-2]
        chunks[-2:] = [(start, frames + chunks[-1][1])]
    return chunks


def plan_tasks(parent: Job, generation: int, probe: Mapping[str, Any], source_url: str,
               seqs: Iterable[int], now: float) -> list[Job]:
    """The chunk tasks (and the audio task when the probe found audio) of a plan."""
    assert parent.chunk_seconds is not None
    rate_text = str(probe["frame_rate"])
    fps = Fraction(rate_text)
    total = int(probe["frames"])
    start_time = float(probe.get("start_time") or 0.0)
    order = iter(seqs)
    tasks = []
    for index, (start, frames) in enumerate(cut(total, fps, parent.chunk_seconds)):
        t0 = start_time + float(start / fps)
        task = {"kind": "chunk", "index": index, "start_frame": start, "frames": frames,
                "start_time": round(t0, 6), "end_time": round(t0 + float(frames / fps), 6),
                "frame_rate": rate_text}
        tasks.append(new_task(parent, generation, chunk_name(index), task, next(order), now,
                              source_url, parent.job_size * frames / total))
    audio = probe.get("audio")
    if audio:
        tasks.append(new_task(parent, generation, "audio",
                              {"kind": "audio", "duration": float(audio["duration"])},
                              next(order), now, source_url))
    return tasks


def stitch_task(parent: Job, generation: int, tasks: Sequence[Job], probe: Mapping[str, Any],
                seq: int, now: float) -> Job:
    """The stitch of a generation whose chunk and audio tasks are done."""
    chunks = sorted((t for t in tasks if kind_of(t) == "chunk"),
                    key=lambda t: t.task["index"] if t.task else 0)
    audio = next((t.job_id for t in tasks if kind_of(t) == "audio"), None)
    fps = Fraction(str(probe["frame_rate"]))
    frames = int(probe["frames"])
    audio_probe = probe.get("audio")
    expect = {"frames": frames, "duration": round(float(frames / fps), 6),
              "audio_duration": None if not audio_probe else float(audio_probe["duration"]),
              "frame_rate": str(probe["frame_rate"])}
    return new_task(parent, generation, "stitch",
                    {"kind": "stitch", "chunks": [t.job_id for t in chunks], "audio": audio,
                     "expect": expect}, seq, now)


# -------------------------------------------------------- what a parent shows


def counts(tasks: Iterable[Job]) -> dict[str, int]:
    """The ``chunks`` of a parent: its chunk tasks by state."""
    found = empty_counts()
    for task in tasks:
        if kind_of(task) != "chunk":
            continue
        found["total"] += 1
        if task.status in ACTIVE_STATUSES:
            found["running"] += 1
        elif task.status in ("pending", "completed", "failed"):
            found[task.status] += 1
    return found


def _chunk_seconds(task: Job) -> float:
    assert task.task is not None
    return float(task.task["frames"] / Fraction(str(task.task["frame_rate"])))


def progress(tasks: Sequence[Job]) -> float:
    """Chunks weighted by their frames (95 %), then the stitch (5 %)."""
    chunks = [t for t in tasks if kind_of(t) == "chunk"]
    total = sum(t.task["frames"] for t in chunks if t.task)
    done = 0.0
    for task in chunks:
        assert task.task is not None
        share = 100.0 if task.status == "completed" else (
            task.progress or 0.0) if task.status in ACTIVE_STATUSES else 0.0
        done += task.task["frames"] * share / 100.0
    value = CHUNKS_SHARE * done / total if total else 0.0
    for task in tasks:
        if kind_of(task) == "stitch":
            share = 100.0 if task.status == "completed" else (task.progress or 0.0) \
                if task.status in ACTIVE_STATUSES else 0.0
            value += (100.0 - CHUNKS_SHARE) * share / 100.0
    return round(value, 3)


def detail(tasks: Sequence[Job], now: float) -> dict[str, float | None] | None:
    """fps and speed: the running chunks' sums; eta: the media left over that speed."""
    running = [t for t in tasks if kind_of(t) == "chunk" and t.status in ACTIVE_STATUSES
               and t.progress_detail]
    if not running:
        return None
    fps = sum(t.progress_detail.get("fps") or 0.0 for t in running if t.progress_detail)
    speed = sum(t.progress_detail.get("speed") or 0.0 for t in running if t.progress_detail)
    left = sum(_chunk_seconds(t) * (1.0 - (
        1.0 if t.status == "completed" else (t.progress or 0.0) / 100.0))
        for t in tasks if kind_of(t) == "chunk")
    return {"fps": round(fps, 3), "speed": round(speed, 3),
            "eta_seconds": round(left / speed, 3) if speed > 0 else None,
            "updated_at": now}


def rollup(parent: Job, tasks: Sequence[Job], now: float) -> Job:
    """The parent as its current tasks show it: progress, figures, chunk counts, and
    ``processing`` once one of its tasks has been given to an engine."""
    if parent.status in FINISHED_STATUSES:
        return parent
    started = parent.status == "processing" or any(
        t.status in ACTIVE_STATUSES or t.status == "completed" for t in tasks)
    new = replace(parent, status="processing" if started else parent.status,
                  progress=progress(tasks) if started else parent.progress,
                  progress_detail=detail(tasks, now), chunks=counts(tasks))
    if new == parent:
        return parent
    return replace(new, updated_at=now)
