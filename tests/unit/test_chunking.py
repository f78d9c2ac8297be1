"""The pure rules of chunked encoding: the frame-exact cut, task ids, the tasks a plan
makes, and what a parent shows of its tasks."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from itertools import count

import pytest

from dispatch.domain import chunking
from dispatch.domain.models import Engine, Job

PROBE = {"duration": 60.0, "frames": 1800, "frame_rate": "30/1", "start_time": 0.0,
         "width": 640, "height": 360, "variable_frame_rate": False,
         "audio": {"duration": 60.0, "streams": 1}}


def parent(**fields: object) -> Job:
    base = Job(job_id="p1", seq=1, source_url="http://example.com/a.mp4",
               target_codec="h264", job_size=90.0, priority=3, max_retries=2,
               created_at=100.0, updated_at=100.0, chunk_seconds=10,
               callback_url="http://hooks.example.com/x")
    return replace(base, **fields)  # type: ignore[arg-type]


def covers_every_frame_once(chunks: list[tuple[int, int]], total: int) -> bool:
    frames = [f for start, n in chunks for f in range(start, start + n)]
    return frames == list(range(total))


@pytest.mark.parametrize("total, rate, seconds", [
    (1800, "30/1", 10), (1799, "30/1", 10), (1, "25/1", 2), (7193, "30000/1001", 10),
    (86313, "24000/1001", 600), (100, "30/1", 600), (1001, "60000/1001", 2)])
def test_the_cut_covers_every_frame_exactly_once(total: int, rate: str,
                                                  seconds: int) -> None:
    chunks = chunking.cut(total, Fraction(rate), seconds)
    assert covers_every_frame_once(chunks, total)
    per_chunk = max(1, round(seconds * Fraction(rate)))
    assert all(n >= per_chunk / 4 or len(chunks) == 1 for _, n in chunks)


def test_frames_per_chunk_follow_a_rational_rate() -> None:
    # 10 s at 30000/1001 fps is 299.7 frames: 300 a chunk.
    chunks = chunking.cut(3000, Fraction(30000, 1001), 10)
    assert [n for _, n in chunks] == [300] * 10


def test_a_short_last_chunk_joins_the_one_before() -> None:
    assert chunking.cut(1860, Fraction(30), 10) == [
        (0, 300), (300, 300), (600, 300), (900, 300), (1200, 300), (1500, 360)]
    # A quarter or more stays a chunk of its own.
    assert chunking.cut(1875, Fraction(30), 10)[-1] == (1800, 75)


def test_task_ids_name_parent_generation_and_task() -> None:
    plan = chunking.plan_task(parent(), 1, 7, 200.0)
    assert (plan.job_id, plan.parent_id, plan.task) == (
        "p1.g1.plan", "p1", {"kind": "plan", "chunk_seconds": 10})
    assert (plan.priority, plan.created_at, plan.max_retries, plan.callback_url) == (
        3, 100.0, 2, None)
    assert chunking.task_id("p1", 2, chunking.chunk_name(3)) == "p1.g2.c0003"
    assert chunking.generation_of(replace(plan, job_id="p1.g12.c0001")) == 12


def test_a_plan_makes_chunks_with_times_and_one_audio_task() -> None:
    probe = {**PROBE, "frames": 600, "frame_rate": "30000/1001", "start_time": 1.5}
    tasks = chunking.plan_tasks(parent(), 1, probe, "store://sources/x", count(10), 200.0)
    chunks = [t for t in tasks if t.task and t.task["kind"] == "chunk"]
    assert [t.job_id for t in tasks] == ["p1.g1.c0000", "p1.g1.c0001", "p1.g1.audio"]
    first = chunks[0].task
    assert first == {"kind": "chunk", "index": 0, "start_frame": 0, "frames": 300,
                     "start_time": 1.5, "end_time": round(1.5 + 300 * 1001 / 30000, 6),
                     "frame_rate": "30000/1001"}
    assert chunks[1].task and chunks[1].task["start_time"] == first["end_time"]
    assert all(t.source_url == "store://sources/x" for t in tasks)
    no_audio = chunking.plan_tasks(parent(), 1, {**PROBE, "audio": None}, "u", count(), 1.0)
    assert all(t.task and t.task["kind"] == "chunk" for t in no_audio)


@pytest.mark.parametrize("change, reason", [
    ({"variable_frame_rate": True}, "variable frame rate"),
    ({"frames": 0}, "no video frames"), ({"frame_rate": None}, "no video frames"),
    ({"frame_rate": "0/1"}, "not positive"), ({"frame_rate": "x"}, "not N/D")])
def test_a_probe_that_cannot_be_cut_says_why(change: dict[str, object],
                                             reason: str) -> None:
    assert reason in (chunking.probe_problem({**PROBE, **change}) or "")
    assert chunking.probe_problem(PROBE) is None


def test_the_stitch_expects_the_source() -> None:
    tasks = chunking.plan_tasks(parent(), 1, PROBE, "u", count(), 1.0)
    stitch = chunking.stitch_task(parent(), 1, list(reversed(tasks)), PROBE, 99, 2.0)
    assert stitch.task == {
        "kind": "stitch", "chunks": [f"p1.g1.c{i:04d}" for i in range(6)],
        "audio": "p1.g1.audio",
        "expect": {"frames": 1800, "duration": 60.0, "audio_duration": 60.0,
                   "frame_rate": "30/1"}}


def test_the_parent_rolls_up_its_tasks() -> None:
    tasks = chunking.plan_tasks(parent(), 1, {**PROBE, "audio": None}, "u", count(), 1.0)
    untouched = chunking.rollup(parent(), tasks, 5.0)
    assert (untouched.status, untouched.progress, untouched.chunks) == (
        "pending", None, {"total": 6, "pending": 6, "running": 0, "completed": 0,
                          "failed": 0})
    figures = {"fps": 30.0, "speed": 1.0, "eta_seconds": 5.0, "updated_at": 4.0}
    tasks[0] = replace(tasks[0], status="completed")
    tasks[1] = replace(tasks[1], status="processing", progress=50.0,
                       progress_detail=figures)
    tasks[2] = replace(tasks[2], status="processing", progress=0.0, progress_detail=figures)
    rolled = chunking.rollup(parent(), tasks, 6.0)
    assert rolled.status == "processing" and rolled.updated_at == 6.0
    assert rolled.progress == pytest.approx(95 * 1.5 / 6, abs=0.001)
    assert rolled.chunks == {"total": 6, "pending": 3, "running": 2, "completed": 1,
                             "failed": 0}
    # 4.5 chunks of 10 s left at 2x real time.
    assert rolled.progress_detail == {"fps": 60.0, "speed": 2.0, "eta_seconds": 22.5,
                                      "updated_at": 6.0}
    done = [replace(t, status="completed") for t in tasks]
    stitch = replace(chunking.stitch_task(parent(), 1, done, PROBE, 50, 7.0),
                     status="processing", progress=40.0)
    assert chunking.rollup(parent(), [*done, stitch], 8.0).progress == 97.0
    finished = parent(status="cancelled")
    assert chunking.rollup(finished, done, 9.0) is finished


def test_labels_name_the_task() -> None:
    tasks = chunking.plan_tasks(parent(), 1, PROBE, "u", count(), 1.0)
    plan = chunking.plan_task(parent(), 1, 0, 1.0)
    assert [chunking.task_label(t) for t in (tasks[3], tasks[-1], plan)] == [
        "chunk 3", "audio", "planning"]


def test_records_written_before_chunked_encoding_load_with_none() -> None:
    record = parent().to_record()
    for key in ("chunk_seconds", "parent_id", "task", "chunks"):
        del record[key]
    old = Job.from_dict(record, 1)
    assert (old.chunk_seconds, old.parent_id, old.task, old.chunks) == (None,) * 4
    kept = chunking.plan_task(parent(), 1, 2, 3.0)
    assert Job.from_dict(kept.to_record(), 2) == kept
    engine = Engine.from_dict({"engine_id": "e1", "last_heartbeat": 1.0})
    assert engine.task_kinds == ()
    assert Engine.from_dict(replace(engine, task_kinds=("plan",)).to_record()).task_kinds \
        == ("plan",)
