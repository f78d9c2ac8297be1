"""Issue #23 through the API: a chunked job submitted, planned, encoded in chunks
whose outputs go through the store, stitched and downloaded; what engines without
task kinds get; the refusals (400, 404, 409 in the contract's error shape); and a
restart in the middle."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatch.config.settings import Settings
from dispatch.http.chunk_schemas import ChunksSchema
from dispatch.http.schemas import JobSchema
from tests.api.test_files import local, put_parts, read
from tests.api.test_jobs_api import assert_validation_error
from tests.conftest import BOTH_BACKENDS, JOB, FakeClock
from tests.support.helpers import assert_error

pytestmark = BOTH_BACKENDS
KINDS = ["plan", "chunk", "audio", "stitch"]
PROBE = {"duration": 17.6, "frames": 440, "frame_rate": "25/1", "start_time": 0.0,
         "width": 320, "height": 240, "variable_frame_rate": False, "audio": None}
Json = dict[str, Any]


def post(client: FlaskClient, auth: dict[str, str], path: str, body: Json,
         status: int = 200) -> Json:
    response = client.post(path, json=body, headers=auth)
    assert response.status_code == status, response.get_data(as_text=True)[:400]
    return response.get_json() if response.data else {}


def assign(client: FlaskClient, auth: dict[str, str], engine_id: str) -> Json:
    return post(client, auth, "/assign_job/", {"engine_id": engine_id})


def complete_stored(client: FlaskClient, auth: dict[str, str], engine_id: str, job: Json,
                    data: bytes, **extra: Any) -> Json:
    """Complete ``job`` with ``data`` uploaded to the store as its output."""
    upload = post(client, auth, f"/jobs/{job['job_id']}/output_upload", {
        "engine_id": engine_id, "attempt": job["attempt"], "size": len(data),
        "extension": "mkv"}, 201)
    return post(client, auth, f"/jobs/{job['job_id']}/complete", {
        "engine_id": engine_id, "attempt": job["attempt"], "output_url": upload["source_url"],
        "upload_id": upload["upload_id"], "size": len(data),
        "parts": put_parts(client, upload, data), **extra})


def test_a_chunked_job_from_submission_to_its_output(client: FlaskClient,
                                                     auth: dict[str, str]) -> None:
    parent = post(client, auth, "/jobs/", {**JOB, "chunk_seconds": 8}, 201)
    assert (parent["chunk_seconds"], parent["chunks"]["total"], parent["parent_id"]) == (
        8, 0, None)
    post(client, auth, "/engines/heartbeat", {"engine_id": "cpp"})
    assert client.post("/assign_job/", json={"engine_id": "cpp"},
                       headers=auth).status_code == 204
    engine = post(client, auth, "/engines/heartbeat", {"engine_id": "py", "task_kinds": KINDS})
    assert engine["task_kinds"] == KINDS
    plan = assign(client, auth, "py")
    assert (plan["job_id"], plan["parent_id"], plan["task"]) == (
        f"{parent['job_id']}.g1.plan", parent["job_id"], {"kind": "plan", "chunk_seconds": 8})
    assert plan["source_url"] == JOB["source_url"]
    no_probe = client.post(f"/jobs/{plan['job_id']}/complete", headers=auth, json={
        "engine_id": "py", "attempt": 1, "output_url": JOB["source_url"]})
    assert_validation_error(no_probe, "probe")
    bad_probe = client.post(f"/jobs/{plan['job_id']}/complete", headers=auth, json={
        "engine_id": "py", "attempt": 1, "output_url": JOB["source_url"],
        "probe": {**PROBE, "frame_rate": "fast"}})
    assert bad_probe.status_code == 400
    assert bad_probe.get_json()["error"]["details"] == {"probe": {"frame_rate": [
        "Must be N/D."]}}
    post(client, auth, f"/jobs/{plan['job_id']}/complete", {
        "engine_id": "py", "attempt": 1, "output_url": JOB["source_url"], "probe": PROBE})
    chunks = client.get(f"/jobs/{parent['job_id']}/chunks", headers=auth).get_json()
    assert {} == ChunksSchema().validate(chunks)
    assert {} == JobSchema().validate(
        client.get(f"/jobs/{parent['job_id']}", headers=auth).get_json())
    assert {} == JobSchema().validate(
        client.get(f"/jobs/{plan['job_id']}", headers=auth).get_json())
    assert [(c["index"], c["start_time"], c["end_time"], c["frames"]) for c in
            chunks["chunks"]] == [(0, 0.0, 8.0, 200), (1, 8.0, 17.6, 240)]
    assert [t["kind"] for t in chunks["tasks"]] == ["plan"]
    listed = client.get("/jobs/", headers=auth).get_json()
    assert [j["job_id"] for j in listed["jobs"]] == [parent["job_id"]]
    assert listed["total"] == 1
    for index in range(2):
        chunk = assign(client, auth, "py")
        assert chunk["task"]["index"] == index and chunk["source_url"] == JOB["source_url"]
        with_probe = client.post(f"/jobs/{chunk['job_id']}/complete", headers=auth, json={
            "engine_id": "py", "attempt": 1, "output_url": "http://x/y", "probe": PROBE})
        assert_validation_error(with_probe, "probe")
        post(client, auth, f"/jobs/{chunk['job_id']}/progress",
             {"engine_id": "py", "attempt": 1, "progress": 50, "fps": 100, "speed": 4})
        mid = client.get(f"/jobs/{parent['job_id']}", headers=auth).get_json()
        assert mid["status"] == "processing" and mid["progress_detail"]["speed"] == 4
        complete_stored(client, auth, "py", chunk, f"chunk {index}".encode())
    stitch = assign(client, auth, "py")
    assert stitch["task"]["kind"] == "stitch" and stitch["task"]["audio"] is None
    assert stitch["task"]["expect"] == {"frames": 440, "duration": 17.6,
                                        "audio_duration": None, "frame_rate": "25/1"}
    for index, row in enumerate(stitch["task"]["chunks"]):
        assert (row["index"], row["frames"]) == (index, [200, 240][index])
        assert read(client, local(row["url"])).data == f"chunk {index}".encode()
    complete_stored(client, auth, "py", stitch, b"the whole film")
    done = client.get(f"/jobs/{parent['job_id']}", headers=auth).get_json()
    assert (done["status"], done["progress"], done["chunks"]["completed"]) == (
        "completed", 100.0, 2)
    link = client.get(f"/jobs/{parent['job_id']}/output", headers=auth)
    assert link.status_code in (302, 307), link.get_data(as_text=True)
    assert read(client, local(link.headers["Location"])).data == b"the whole film"
    stats = client.get("/stats", headers=auth).get_json()
    assert stats["jobs"]["total"] == 1 and stats["jobs"]["completed"] == 1


def test_what_is_refused(client: FlaskClient, auth: dict[str, str]) -> None:
    for value in (1, 601, "10", 2.5, None):
        response = client.post("/jobs/", json={**JOB, "chunk_seconds": value}, headers=auth)
        assert_validation_error(response, "chunk_seconds")
    batch = client.post("/jobs/batch", headers=auth, json={"jobs": [
        {**JOB, "chunk_seconds": 10}, {**JOB, "chunk_seconds": 0}]})
    assert batch.status_code == 400
    unknown = client.post("/engines/heartbeat", headers=auth, json={
        "engine_id": "e1", "task_kinds": ["plan", "transmogrify"]})
    assert unknown.status_code == 400
    assert unknown.get_json()["error"]["details"] == {"task_kinds": {"1": [
        "Must be one of: plan, chunk, audio, stitch."]}}
    whole = post(client, auth, "/jobs/", JOB, 201)
    assert_error(client.get(f"/jobs/{whole['job_id']}/chunks", headers=auth), 409,
                 "conflict")
    assert_error(client.get("/jobs/nope/chunks", headers=auth), 404, "not_found")
    parent = post(client, auth, "/jobs/", {**JOB, "chunk_seconds": 10}, 201)
    plan_id = f"{parent['job_id']}.g1.plan"
    for method, path, body in (("delete", "", None), ("post", "/retry", None),
                               ("post", "/priority", {"priority": 3})):
        response = getattr(client, method)(f"/jobs/{plan_id}{path}", json=body,
                                           headers=auth)
        assert parent["job_id"] in assert_error(response, 409, "conflict")["message"]
    batch = post(client, auth, "/jobs/batch", {"jobs": [{**JOB, "chunk_seconds": 10}]}, 201)
    assert batch["jobs"][0]["chunks"]["total"] == 0


def test_cancel_then_retry_through_the_api(client: FlaskClient, auth: dict[str, str]) -> None:
    parent = post(client, auth, "/jobs/", {**JOB, "chunk_seconds": 10}, 201)
    post(client, auth, "/engines/heartbeat", {"engine_id": "py", "task_kinds": KINDS})
    plan = assign(client, auth, "py")
    cancelled = client.delete(f"/jobs/{parent['job_id']}", headers=auth).get_json()
    assert cancelled["status"] == "cancelled"
    beat = post(client, auth, "/engines/heartbeat", {
        "engine_id": "py", "task_kinds": KINDS, "local_job_queue": [plan["job_id"]]})
    assert beat["cancelled_jobs"] == [plan["job_id"]]
    retried = post(client, auth, f"/jobs/{parent['job_id']}/retry", {})
    assert retried["status"] == "pending"
    assert assign(client, auth, "py")["job_id"] == f"{parent['job_id']}.g2.plan"
    assert_error(client.post(f"/jobs/{plan['job_id']}/progress", headers=auth,
                             json={"engine_id": "py", "attempt": 1, "progress": 5}),
                 404, "not_found")


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_restart_keeps_parents_and_tasks(make_app: Callable[..., Any], settings: Settings,
                                          auth: dict[str, str], snapshot: bool) -> None:
    app = make_app(settings)
    client = app.test_client()
    parent = post(client, auth, "/jobs/", {**JOB, "chunk_seconds": 10}, 201)
    post(client, auth, "/engines/heartbeat", {"engine_id": "py", "task_kinds": KINDS})
    plan = assign(client, auth, "py")
    post(client, auth, f"/jobs/{plan['job_id']}/complete", {
        "engine_id": "py", "attempt": 1, "output_url": JOB["source_url"],
        "probe": {**PROBE, "frames": 600}})
    chunk = assign(client, auth, "py")
    if snapshot:
        app.extensions["dispatch"].maintenance.snapshot()
    app.extensions["dispatch.runtime"].shutdown()
    again = make_app(settings).test_client()
    body = again.get(f"/jobs/{parent['job_id']}", headers=auth).get_json()
    assert (body["status"], body["chunks"]) == ("processing", {
        "total": 3, "pending": 2, "running": 1, "completed": 0, "failed": 0})
    assert [j["job_id"] for j in again.get("/jobs/", headers=auth).get_json()["jobs"]] == [
        parent["job_id"]]
    assert assign(again, auth, "py")["job_id"] == chunk["job_id"]  # it still holds it
    post(again, auth, "/engines/heartbeat", {"engine_id": "py2", "task_kinds": ["chunk"]})
    assert assign(again, auth, "py2")["task"]["index"] == 1


def test_a_stored_source_is_read_by_the_chunks_as_it_is(client: FlaskClient,
                                                         auth: dict[str, str]) -> None:
    """The planner reports the stored source itself as what the chunks read: no new
    output to check; the chunks get a signed URL of it."""
    data = b"a source in the store"
    upload = post(client, auth, "/uploads", {"filename": "film.mp4", "size": len(data)}, 201)
    post(client, auth, f"/uploads/{upload['upload_id']}/complete",
         {"parts": put_parts(client, upload, data)})
    parent = post(client, auth, "/jobs/", {**JOB, "source_url": upload["source_url"],
                                           "chunk_seconds": 10}, 201)
    post(client, auth, "/engines/heartbeat", {"engine_id": "py", "task_kinds": KINDS})
    plan = assign(client, auth, "py")
    assert read(client, local(plan["source_url"])).data == data
    post(client, auth, f"/jobs/{plan['job_id']}/complete", {
        "engine_id": "py", "attempt": 1, "output_url": upload["source_url"], "probe": PROBE})
    chunk = assign(client, auth, "py")
    assert chunk["parent_id"] == parent["job_id"]
    assert read(client, local(chunk["source_url"])).data == data


def test_the_source_a_running_chunked_job_reads_is_kept(client: FlaskClient,
                                                        auth: dict[str, str], app: Any,
                                                        clock: FakeClock,
                                                        settings: Settings) -> None:
    """Past output_retention_days, the stored copy the planner made stays while the
    job's chunks still read it."""
    parent = post(client, auth, "/jobs/", {**JOB, "chunk_seconds": 10}, 201)
    post(client, auth, "/engines/heartbeat", {"engine_id": "py", "task_kinds": KINDS})
    plan = assign(client, auth, "py")
    complete_stored(client, auth, "py", plan, b"the source, copied", probe=PROBE)
    assert client.get(f"/jobs/{parent['job_id']}", headers=auth).get_json()["status"] \
        == "processing"
    clock.advance(8 * 86400)
    objects = Path(settings.state_file).parent / "files" / "objects"
    for path in objects.rglob("*"):
        if path.is_file():
            os.utime(path, (clock() - 8 * 86400, clock() - 8 * 86400))
    assert app.extensions["dispatch"].maintenance.sweep_files() == 0
    chunk = assign(client, auth, "py")
    assert read(client, local(chunk["source_url"])).data == b"the source, copied"
