"""Chunked encoding through the service, on every backend: a parent and its tasks,
from the plan to the stitch, failures, cancel, retry, restart; what a client and an
engine see."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dispatch.config.settings import Settings
from dispatch.domain import errors
from dispatch.domain.models import Job
from dispatch.service import DispatchService, present
from tests.conftest import API_KEY, JOB, FakeClock
from tests.support.backends import Harness

MakeService = Callable[..., DispatchService]
KINDS = ["plan", "chunk", "audio", "stitch"]
PROBE = {"duration": 30.0, "frames": 900, "frame_rate": "30/1", "start_time": 0.0,
         "width": 320, "height": 240, "variable_frame_rate": False,
         "audio": {"duration": 30.0, "streams": 1}}


def chunked(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {**JOB, "source_url": f"http://example.com/{n}.mp4", "chunk_seconds": 10,
            **fields}


def beat(service: DispatchService, engine_id: str, kinds: list[str] | None = None,
         **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"engine_id": engine_id, **fields}
    if kinds is not None:
        data["task_kinds"] = kinds
    return present.beat(service.commands.heartbeat(data))


def take(service: DispatchService, engine_id: str) -> Job:
    job = service.commands.assign_job(engine_id, None).job
    assert job is not None, f"{engine_id} got nothing"
    return job


def shown(service: DispatchService, job_id: str) -> dict[str, Any]:
    return present.job(service.queries.describe(service.queries.get_job(job_id)))


def planned(service: DispatchService, probe: dict[str, Any] | None = None) -> Job:
    """A chunked job submitted and planned by e1; the parent as it is then."""
    beat(service, "e1", KINDS)
    parent = service.commands.submit_job(chunked())
    plan = take(service, "e1")
    service.commands.complete_job(plan.job_id, parent.source_url, "e1", plan.attempt,
                                  probe=probe or PROBE)
    return service.queries.get_job(parent.job_id)


def finish(service: DispatchService, engine_id: str, kind: str | None = None) -> Job:
    """The next task ``engine_id`` gets, completed with a stored-looking output."""
    task = take(service, engine_id)
    assert kind is None or (task.task and task.task["kind"] == kind)
    return service.commands.complete_job(task.job_id, f"store://outputs/{task.job_id}.mkv",
                                         engine_id, task.attempt)


def test_a_chunked_job_is_one_job_to_its_client(make_service: MakeService) -> None:
    service = make_service()
    parent = service.commands.submit_job(chunked())
    body = shown(service, parent.job_id)
    assert (body["status"], body["chunk_seconds"], body["parent_id"], body["task"]) == (
        "pending", 10, None, None)
    assert body["chunks"] == {"total": 0, "pending": 0, "running": 0, "completed": 0,
                              "failed": 0}
    assert [parent.job_id] == [j.job_id for j in service.queries.list_jobs(None, 10, 0).jobs]
    assert 1 == service.queries.counts()["pending"]
    plan = service.queries.get_job(f"{parent.job_id}.g1.plan")
    assert (plan.parent_id, plan.task, plan.priority, plan.created_at) == (
        parent.job_id, {"kind": "plan", "chunk_seconds": 10}, parent.priority,
        parent.created_at)
    assert service.queries.get_job(parent.job_id).chunks is not None


def test_engines_without_task_kinds_get_whole_jobs_only(make_service: MakeService) -> None:
    service = make_service()
    beat(service, "cpp")
    parent = service.commands.submit_job(chunked())
    assert service.commands.assign_job("cpp", None).job is None
    reason = shown(service, parent.job_id)["waiting_reason"]
    assert reason["code"] == "no_task_engine" and "plan" in reason["message"]
    whole = service.commands.submit_job({**JOB, "source_url": "http://example.com/w.mp4"})
    assert take(service, "cpp").job_id == whole.job_id
    beat(service, "py", ["chunk"])  # no planner yet
    assert service.commands.assign_job("py", None).job is None
    beat(service, "planner", ["plan"])
    assert shown(service, parent.job_id)["waiting_reason"]["code"] == "queued"
    assert take(service, "planner").job_id == f"{parent.job_id}.g1.plan"
    assert shown(service, parent.job_id)["status"] == "processing"


def test_a_chunked_job_runs_from_plan_to_stitch(make_service: MakeService) -> None:
    service = make_service(webhook_allowed_hosts=("hooks.test",))
    beat(service, "e1", KINDS)
    beat(service, "e2", KINDS)
    parent = service.commands.submit_job(chunked(callback_url="http://hooks.test/done"))
    plan = take(service, "e1")
    with pytest.raises(errors.Invalid):
        service.commands.complete_job(plan.job_id, parent.source_url, "e1", plan.attempt)
    service.commands.complete_job(plan.job_id, "store://sources/copy.mp4", "e1",
                                  plan.attempt, probe=PROBE)
    rows = service.queries.chunks(parent.job_id)
    assert [(c["index"], c["start_time"], c["end_time"], c["frames"], c["status"])
            for c in rows["chunks"]] == [(0, 0.0, 10.0, 300, "pending"),
                                        (1, 10.0, 20.0, 300, "pending"),
                                        (2, 20.0, 30.0, 300, "pending")]
    assert [(t["kind"], t["status"]) for t in rows["tasks"]] == [
        ("plan", "completed"), ("audio", "pending")]
    assert rows["generation"] == 1
    first = take(service, "e1")
    second = take(service, "e2")
    assert first.source_url == "store://sources/copy.mp4"
    assert first.task and first.task["kind"] == "chunk"
    for task, engine in ((first, "e1"), (second, "e2")):
        service.commands.report_progress(task.job_id, 50.0, engine, task.attempt,
                                         {"fps": 60.0, "speed": 2.0})
    body = shown(service, parent.job_id)
    assert body["status"] == "processing" and body["assigned_engine"] is None
    assert body["progress"] == pytest.approx(95 * 1.0 / 3, abs=0.01)
    assert body["chunks"]["running"] == 2 and body["chunks"]["total"] == 3
    assert body["progress_detail"]["speed"] == 4.0
    assert body["progress_detail"]["eta_seconds"] == pytest.approx(20.0 / 4.0)
    for task, engine in ((first, "e1"), (second, "e2")):
        service.commands.complete_job(task.job_id, f"store://outputs/{task.job_id}.mkv",
                                      engine, task.attempt)
    finish(service, "e1", "chunk")
    assert shown(service, parent.job_id)["chunks"]["completed"] == 3
    finish(service, "e2", "audio")
    stitch = take(service, "e1")
    assert stitch.task == {
        "kind": "stitch", "chunks": [f"{parent.job_id}.g1.c000{i}" for i in range(3)],
        "audio": f"{parent.job_id}.g1.audio",
        "expect": {"frames": 900, "duration": 30.0, "audio_duration": 30.0,
                   "frame_rate": "30/1"}}
    signed = service.queries.engine_task(stitch, lambda url: "signed:" + url)
    assert signed and signed["chunks"][1] == {
        "index": 1, "url": f"signed:store://outputs/{parent.job_id}.g1.c0001.mkv",
        "frames": 300}
    assert signed["audio"] == {"url": f"signed:store://outputs/{parent.job_id}.g1.audio.mkv"}
    service.commands.complete_job(stitch.job_id, "store://outputs/joined.mkv", "e1",
                                  stitch.attempt, {"size": 5, "sha256": "0" * 64,
                                                   "content_type": "video/x-matroska"})
    body = shown(service, parent.job_id)
    assert (body["status"], body["output_url"], body["progress"], body["output"]["size"]) \
        == ("completed", "store://outputs/joined.mkv", 100.0, 5)
    assert body["webhook"]["state"] == "pending"
    events = [e["event"] for e in present.events(service.queries.job_events(parent.job_id))]
    assert events[0] == "submitted" and events[-1] == "completed"
    assert [j.job_id for j in service.queries.list_jobs(None, 10, 0).jobs] == [parent.job_id]


def test_a_source_that_cannot_be_cut_fails_at_once(make_service: MakeService) -> None:
    service = make_service()
    parent = planned(service, {**PROBE, "variable_frame_rate": True})
    assert parent.status == "failed" and parent.retries == 0
    assert "variable frame rate" in (parent.error_message or "")
    assert service.queries.chunks(parent.job_id)["chunks"] == []


def test_a_task_out_of_retries_fails_the_parent(make_service: MakeService) -> None:
    service = make_service(retry_backoff_seconds=0)
    beat(service, "e2", KINDS)
    parent = service.commands.submit_job(chunked(max_retries=1))
    beat(service, "e1", KINDS)
    plan = take(service, "e1")
    service.commands.complete_job(plan.job_id, parent.source_url, "e1", plan.attempt,
                                  probe=PROBE)
    bad = take(service, "e1")
    other = take(service, "e2")
    again = service.commands.fail_job(bad.job_id, "corrupt", "e1", bad.attempt)
    assert again.status == "pending"  # retried on its own
    assert service.queries.get_job(parent.job_id).status == "processing"
    retried = take(service, "e1")
    assert retried.job_id == bad.job_id and retried.attempt == 2
    service.commands.fail_job(bad.job_id, "corrupt again", "e1", retried.attempt)
    body = shown(service, parent.job_id)
    assert (body["status"], body["error_message"]) == ("failed",
                                                       "chunk 0 failed: corrupt again")
    assert service.queries.get_job(other.job_id).status == "cancelled"
    assert other.job_id in beat(service, "e2", KINDS, local_job_queue=[other.job_id])[
        "cancelled_jobs"]
    assert body["chunks"]["failed"] == 1


def test_cancel_and_retry_act_on_the_tasks(make_service: MakeService) -> None:
    service = make_service()
    parent = planned(service)
    task = take(service, "e1")
    with pytest.raises(errors.InvalidTransition, match=parent.job_id):
        service.commands.cancel_job(task.job_id)
    with pytest.raises(errors.InvalidTransition, match=parent.job_id):
        service.commands.set_priority(task.job_id, 5)
    service.commands.set_priority(parent.job_id, 7)
    assert service.queries.get_job(task.job_id).priority == 7
    service.commands.cancel_job(parent.job_id)
    rows = service.queries.chunks(parent.job_id)
    assert {c["status"] for c in rows["chunks"]} == {"cancelled"}
    assert task.job_id in beat(service, "e1", KINDS, local_job_queue=[task.job_id])[
        "cancelled_jobs"]
    with pytest.raises(errors.InvalidTransition, match=parent.job_id):
        service.commands.retry_job(task.job_id)
    again = service.commands.retry_job(parent.job_id)
    assert (again.status, again.chunks) == ("pending", {
        "total": 0, "pending": 0, "running": 0, "completed": 0, "failed": 0})
    rows = service.queries.chunks(parent.job_id)
    assert (rows["generation"], rows["chunks"], [t["job_id"] for t in rows["tasks"]]) == (
        2, [], [f"{parent.job_id}.g2.plan"])
    with pytest.raises(errors.JobNotFound):  # a stale engine's report stops there
        service.commands.report_progress(task.job_id, 10.0, "e1", task.attempt)


def test_a_probe_goes_with_a_plan_task_only(make_service: MakeService) -> None:
    service = make_service()
    planned(service)
    task = take(service, "e1")
    with pytest.raises(errors.Invalid):
        service.commands.complete_job(task.job_id, "store://x", "e1", task.attempt,
                                      probe=PROBE)
    with pytest.raises(errors.JobNotFound):
        service.queries.chunks("nope")
    whole = service.commands.submit_job({**JOB, "source_url": "http://example.com/w.mp4"})
    with pytest.raises(errors.Conflict):
        service.queries.chunks(whole.job_id)


def test_a_lost_engine_loses_only_its_task(make_service: MakeService,
                                           clock: FakeClock) -> None:
    service = make_service(engine_heartbeat_timeout=10)
    parent = planned(service)
    beat(service, "e2", KINDS)
    held = take(service, "e2")
    for _ in range(2):
        clock.advance(8)
        beat(service, "e1", KINDS)
    assert service.maintenance.sweep() == 1
    assert service.queries.get_job(held.job_id).status == "pending"
    assert service.queries.get_job(parent.job_id).status == "processing"


def test_purge_removes_the_tasks_with_their_parent(make_service: MakeService,
                                                   clock: FakeClock) -> None:
    service = make_service(finished_job_retention=10)
    parent = planned(service)
    service.commands.cancel_job(parent.job_id)
    clock.advance(11)
    assert service.maintenance.purge() == 1
    with pytest.raises(errors.JobNotFound):
        service.queries.get_job(f"{parent.job_id}.g1.plan")
    assert service.commands.assign_job("e1", None).job is None


def test_parents_and_tasks_survive_a_restart(durable_harness: Harness,
                                              clock: FakeClock) -> None:
    settings = Settings(api_key=API_KEY)
    service = DispatchService(settings, durable_harness.open(), clock)
    parent = planned(service)
    first = take(service, "e1")
    service.commands.report_progress(first.job_id, 40.0, "e1", first.attempt)
    restarted = DispatchService(settings, durable_harness.restart(), clock)
    assert restarted.queries.get_job(parent.job_id).chunks == {
        "total": 3, "pending": 2, "running": 1, "completed": 0, "failed": 0}
    assert [j.job_id for j in restarted.queries.list_jobs(None, 10, 0).jobs] == [
        parent.job_id]
    assert take(restarted, "e1").job_id == first.job_id  # redelivered
    beat(restarted, "e2", KINDS)
    assert take(restarted, "e2").parent_id == parent.job_id


def test_a_sweep_that_fails_the_job_leaves_its_other_tasks_cancelled(
        make_service: MakeService, clock: FakeClock) -> None:
    service = make_service(engine_heartbeat_timeout=10, retry_backoff_seconds=0)
    beat(service, "e1", KINDS)  # swept first: its task fails the job
    beat(service, "e2", KINDS)
    parent = service.commands.submit_job(chunked(max_retries=1))
    plan = take(service, "e1")
    service.commands.complete_job(plan.job_id, parent.source_url, "e1", plan.attempt,
                                  probe=PROBE)
    worn = take(service, "e1")
    service.commands.fail_job(worn.job_id, "once", "e1", worn.attempt)  # its last retry left
    assert take(service, "e1").job_id == worn.job_id
    other = take(service, "e2")
    beat(service, "e3", KINDS)
    clock.advance(11)  # e1 and e2 fall silent together
    beat(service, "e3", KINDS)
    assert service.maintenance.sweep() == 2
    body = shown(service, parent.job_id)
    assert body["status"] == "failed" and body["error_message"].startswith("chunk 0 failed:")
    assert service.queries.get_job(other.job_id).status == "cancelled"
    assert service.commands.assign_job("e3", None).job is None
