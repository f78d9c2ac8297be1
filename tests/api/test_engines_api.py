"""Contract §4 (Engines) through the test client: heartbeats, benchmarks, the engine
table, work assignment, the scheduling rules and liveness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import BOTH_BACKENDS, START, FakeClock
from tests.support.helpers import epoch, norm

pytestmark = BOTH_BACKENDS

Json = dict[str, Any]

ENGINE_KEYS = {
    "engine_id", "engine_type", "hostname", "status", "supported_codecs",
    "storage_capacity_gb", "streaming_support", "benchmark_time", "avg_benchmark_time",
    "local_job_queue", "current_jobs", "jobs_completed", "jobs_failed", "registered_at",
    "last_heartbeat", "telemetry", "task_kinds",
}
JOB_KEYS = {
    "job_id", "source_url", "target_codec", "job_size", "priority", "status",
    "assigned_engine", "output_url", "progress", "retries", "max_retries", "error_message",
    "retry_at", "created_at", "updated_at", "assigned_at", "completed_at",
}
ANSWER_KEYS = ENGINE_KEYS | {"cancelled_jobs", "draining"}  # a heartbeat's answer

FULL_HEARTBEAT = {
    "engine_id": "engine-001",
    "engine_type": "ffmpeg",
    "hostname": "node-1.example.com",
    "supported_codecs": ["h264", "vp9"],
    "storage_capacity_gb": 500.0,
    "streaming_support": True,
    "benchmark_time": 12.5,
    "local_job_queue": ["local-1"],
    "status": "idle",
}


def job_view(body: Json) -> Json:
    """The contract's job keys, times as epoch seconds; every key must be present."""
    assert JOB_KEYS <= set(body), JOB_KEYS - set(body)
    return norm({key: body[key] for key in JOB_KEYS})


def assign(client: FlaskClient, auth: dict[str, str], engine_id: str, **fields: Any) -> Any:
    return client.post("/assign_job/", json={"engine_id": engine_id, **fields}, headers=auth)


def assigned(client: FlaskClient, auth: dict[str, str], engine_id: str, **fields: Any) -> Json:
    response = assign(client, auth, engine_id, **fields)
    assert 200 == response.status_code, response.get_data(as_text=True)
    return response.get_json()


def complete(client: FlaskClient, auth: dict[str, str], job_id: str) -> Json:
    response = client.post(f"/jobs/{job_id}/complete", json={"output_url": "http://out/x.mp4"},
                           headers=auth)
    assert 200 == response.status_code, response.get_json()
    return response.get_json()


def get_engine(client: FlaskClient, auth: dict[str, str], engine_id: str) -> Json:
    response = client.get(f"/engines/{engine_id}", headers=auth)
    assert 200 == response.status_code, response.get_json()
    return response.get_json()


def get_job(client: FlaskClient, auth: dict[str, str], job_id: str) -> Json:
    response = client.get(f"/jobs/{job_id}", headers=auth)
    assert 200 == response.status_code, response.get_json()
    return response.get_json()


def assert_error(response: Any, status: int, code: str) -> Json:
    assert status == response.status_code, response.get_data(as_text=True)
    body = response.get_json()
    assert code == body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# ---------------------------------------------------------------- heartbeat


def test_heartbeat_registers_with_full_body(client: FlaskClient, auth: dict[str, str]) -> None:
    """The first heartbeat registers the engine and answers the whole engine object."""
    response = client.post("/engines/heartbeat", json=FULL_HEARTBEAT, headers=auth)
    assert 200 == response.status_code
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert ANSWER_KEYS == set(body)
    assert ([], False) == (body.pop("cancelled_jobs"), body.pop("draining"))
    assert body["registered_at"].endswith("Z") and body["last_heartbeat"].endswith("Z")
    expected = {
        "engine_id": "engine-001",
        "engine_type": "ffmpeg",
        "hostname": "node-1.example.com",
        "status": "idle",
        "supported_codecs": ["h264", "vp9"],
        "storage_capacity_gb": 500.0,
        "streaming_support": True,
        "benchmark_time": 12.5,
        "avg_benchmark_time": 12.5,
        "local_job_queue": ["local-1"],
        "current_jobs": [],
        "jobs_completed": 0,
        "jobs_failed": 0,
        "registered_at": START,
        "last_heartbeat": START,
        "telemetry": None,
        "task_kinds": [],
    }
    assert expected == norm(body)
    assert body == get_engine(client, auth, "engine-001")


def test_minimal_heartbeat_registers_with_nulls(client: FlaskClient, auth: dict[str, str]) -> None:
    """A heartbeat with only engine_id registers; absent values are null or empty."""
    response = client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    assert 200 == response.status_code
    expected = {
        "engine_id": "e1", "engine_type": None, "hostname": None, "status": "idle",
        "supported_codecs": [], "storage_capacity_gb": None, "streaming_support": False,
        "benchmark_time": None, "avg_benchmark_time": None, "local_job_queue": [],
        "current_jobs": [], "jobs_completed": 0, "jobs_failed": 0,
        "registered_at": START, "last_heartbeat": START, "telemetry": None,
        "task_kinds": [], "cancelled_jobs": [], "draining": False,
    }
    assert expected == norm(response.get_json())


def test_heartbeat_update_keeps_fields_left_out(
    client: FlaskClient, auth: dict[str, str], clock: FakeClock,
    heartbeat: Callable[..., Json],
) -> None:
    """A later heartbeat refreshes last_heartbeat and changes only the fields it carries:
    benchmark_time and the rest are not erased."""
    first = heartbeat(**{k: v for k, v in FULL_HEARTBEAT.items() if k != "engine_id"})
    clock.advance(30)
    second = heartbeat("engine-001", status="idle", hostname="node-1b")
    expected = {**norm(first), "hostname": "node-1b", "last_heartbeat": START + 30}
    assert expected == norm(second)
    assert second == get_engine(client, auth, "engine-001")


def test_heartbeat_keeps_unknown_telemetry_as_sent(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    """Unknown telemetry (encoders, cpu_temperature) is accepted and kept as sent under
    ``telemetry``; the next heartbeat's telemetry replaces it."""
    response = client.post(
        "/engines/heartbeat",
        json={"engine_id": "e1", "encoders": ["libx264", "nvenc"], "cpu_temperature": 71.5},
        headers=auth,
    )
    assert 200 == response.status_code
    body = response.get_json()
    assert ANSWER_KEYS == set(body)
    assert {"encoders": ["libx264", "nvenc"], "cpu_temperature": 71.5} == body["telemetry"]
    response = client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    assert response.get_json()["telemetry"] is None


def test_heartbeat_accepts_boundary_engine_ids(client: FlaskClient, auth: dict[str, str]) -> None:
    """engine_id may be 128 characters and use letters, digits and ._:-"""
    for engine_id in ("a" * 128, "Node_1.farm:gpu-0"):
        response = client.post("/engines/heartbeat", json={"engine_id": engine_id},
                               headers=auth)
        assert 200 == response.status_code, response.get_json()
        assert engine_id == response.get_json()["engine_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "engine_id"),
        ({"hostname": "h"}, "engine_id"),
        ({"engine_id": ""}, "engine_id"),
        ({"engine_id": "a" * 129}, "engine_id"),
        ({"engine_id": "engine 1"}, "engine_id"),
        ({"engine_id": "engine/1"}, "engine_id"),
        ({"engine_id": "e1", "storage_capacity_gb": -1}, "storage_capacity_gb"),
        ({"engine_id": "e1", "benchmark_time": "fast"}, "benchmark_time"),
        ({"engine_id": "e1", "benchmark_time": -0.5}, "benchmark_time"),
        ({"engine_id": "e1", "streaming_support": "yes"}, "streaming_support"),
        ({"engine_id": "e1", "status": "weird"}, "status"),
        ({"engine_id": "e1", "supported_codecs": "h264"}, "supported_codecs"),
        ({"engine_id": "e1", "supported_codecs": [1, 2]}, "supported_codecs"),
        ({"engine_id": "e1", "local_job_queue": "j1"}, "local_job_queue"),
    ],
    ids=[
        "empty", "id-missing", "id-empty", "id-129-chars", "id-space", "id-slash",
        "storage-negative", "benchmark-string", "benchmark-negative", "streaming-yes",
        "status-weird", "codecs-string", "codecs-not-strings",
        "queue-string",
    ],
)
def test_heartbeat_validation(
    client: FlaskClient, auth: dict[str, str], body: Json, field: str
) -> None:
    """Each invalid heartbeat is a 400 validation_error naming the field; nothing registers."""
    error = assert_error(client.post("/engines/heartbeat", json=body, headers=auth),
                         400, "validation_error")
    assert field in error["details"]
    assert {"engines": []} == client.get("/engines/", headers=auth).get_json()


def test_engine_busy_while_holding_job_and_idle_heartbeat_frees_nothing(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """status is the server's view: busy while the engine holds a job (an idle heartbeat
    does not free it), idle again once the job is done."""
    heartbeat("e1")
    job = submit()
    assigned(client, auth, "e1")
    engine = get_engine(client, auth, "e1")
    assert ("busy", [job["job_id"]]) == (engine["status"], engine["current_jobs"])

    after = heartbeat("e1", status="idle")
    assert ("busy", [job["job_id"]]) == (after["status"], after["current_jobs"])
    held = get_job(client, auth, job["job_id"])
    assert ("assigned", "e1") == (held["status"], held["assigned_engine"])

    complete(client, auth, job["job_id"])
    engine = get_engine(client, auth, "e1")
    assert ("idle", [], 1) == (engine["status"], engine["current_jobs"],
                               engine["jobs_completed"])


def test_busy_heartbeat_without_job_is_idle(heartbeat: Callable[..., Json]) -> None:
    """An engine that says busy but holds no job is idle in the server's view."""
    assert "idle" == heartbeat("e1", status="busy")["status"]


# ---------------------------------------------------------------- benchmark


def test_benchmark_result_updates_latest_and_average(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json]
) -> None:
    """benchmark_result sets benchmark_time to the latest run and averages the runs."""
    registered = heartbeat("e1", hostname="h1")
    response = client.post("/engines/benchmark_result",
                           json={"engine_id": "e1", "benchmark_time": 10.0}, headers=auth)
    assert 200 == response.status_code
    assert {**registered, "benchmark_time": 10.0, "avg_benchmark_time": 10.0} \
        == response.get_json()
    response = client.post("/engines/benchmark_result",
                           json={"engine_id": "e1", "benchmark_time": 20.0}, headers=auth)
    assert 200 == response.status_code
    assert {**registered, "benchmark_time": 20.0, "avg_benchmark_time": 15.0} \
        == response.get_json()
    assert response.get_json() == get_engine(client, auth, "e1")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"benchmark_time": 1.0}, "engine_id"),
        ({"engine_id": "e1"}, "benchmark_time"),
        ({"engine_id": "e1", "benchmark_time": -1}, "benchmark_time"),
        ({"engine_id": "e1", "benchmark_time": "fast"}, "benchmark_time"),
        ({"engine_id": "e 1", "benchmark_time": 1.0}, "engine_id"),
    ],
    ids=["id-missing", "time-missing", "time-negative", "time-string", "id-bad"],
)
def test_benchmark_result_validation(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json],
    body: Json, field: str,
) -> None:
    """An invalid benchmark_result is a 400 validation_error naming the field."""
    heartbeat("e1")
    error = assert_error(client.post("/engines/benchmark_result", json=body, headers=auth),
                         400, "validation_error")
    assert field in error["details"]


def test_benchmark_result_unknown_engine(client: FlaskClient, auth: dict[str, str]) -> None:
    """benchmark_result for an engine that never sent a heartbeat is 404."""
    response = client.post("/engines/benchmark_result",
                           json={"engine_id": "ghost", "benchmark_time": 3.0}, headers=auth)
    assert_error(response, 404, "not_found")
    assert 404 == client.get("/engines/ghost", headers=auth).status_code


# ---------------------------------------------------------------- the table


def test_list_engines(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json]
) -> None:
    """GET /engines/ lists every engine as the heartbeat answered it."""
    assert {"engines": []} == client.get("/engines/", headers=auth).get_json()
    first = heartbeat("e1", supported_codecs=["h264"])
    second = heartbeat("e2", hostname="h2")
    response = client.get("/engines/", headers=auth)
    assert 200 == response.status_code
    body = response.get_json()
    assert ["engines"] == list(body)
    assert [first, second] == sorted(body["engines"], key=lambda e: e["engine_id"])
    assert body == client.get("/engines", headers=auth).get_json()


def test_get_engine(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json]
) -> None:
    """GET /engines/{id} answers the engine; an unknown id is 404."""
    registered = heartbeat("e1", engine_type="gpu")
    assert registered == get_engine(client, auth, "e1")
    assert_error(client.get("/engines/nope", headers=auth), 404, "not_found")


@pytest.mark.parametrize("state", ["assigned", "processing"])
def test_delete_engine_returns_it_and_requeues_its_job(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json], state: str,
) -> None:
    """DELETE answers the engine as it was (current_jobs included); its unfinished job
    goes back to pending and another engine can take it; a second DELETE is 404."""
    heartbeat("e1")
    job = submit()
    assigned(client, auth, "e1")
    if state == "processing":
        progress = client.post(f"/jobs/{job['job_id']}/progress", json={"progress": 40},
                               headers=auth)
        assert 200 == progress.status_code
    before = get_engine(client, auth, "e1")
    assert [job["job_id"]] == before["current_jobs"]

    response = client.delete("/engines/e1", headers=auth)
    assert 200 == response.status_code
    assert before == response.get_json()

    assert_error(client.get("/engines/e1", headers=auth), 404, "not_found")
    requeued = get_job(client, auth, job["job_id"])
    assert ("pending", None) == (requeued["status"], requeued["assigned_engine"])
    heartbeat("e2")
    assert job["job_id"] == assigned(client, auth, "e2")["job_id"]
    assert_error(client.delete("/engines/e1", headers=auth), 404, "not_found")


def test_delete_unknown_engine(client: FlaskClient, auth: dict[str, str]) -> None:
    """DELETE of an engine the server does not know is 404."""
    assert_error(client.delete("/engines/ghost", headers=auth), 404, "not_found")


# ---------------------------------------------------------------- assign


def test_assign_job(
    client: FlaskClient, auth: dict[str, str], clock: FakeClock,
    submit: Callable[..., Json], heartbeat: Callable[..., Json],
) -> None:
    """assign answers 200 with the job, now assigned to the engine, stamped assigned_at."""
    heartbeat("e1")
    job = submit()
    clock.advance(5)
    body = assigned(client, auth, "e1")
    expected = {**job_view(job), "status": "assigned", "assigned_engine": "e1",
                "assigned_at": START + 5, "updated_at": START + 5}
    assert expected == job_view(body)
    # The job as GET shows it, and where the engine uploads its output (#21).
    upload_at = body.pop("output_upload")
    assert upload_at == f"http://localhost/jobs/{job['job_id']}/output_upload"
    assert body == get_job(client, auth, job["job_id"])
    engine = get_engine(client, auth, "e1")
    assert ("busy", [job["job_id"]]) == (engine["status"], engine["current_jobs"])


def test_assign_nothing_suits_is_204(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json]
) -> None:
    """With nothing to do, assign answers 204 with an empty body."""
    heartbeat("e1")
    response = assign(client, auth, "e1")
    assert 204 == response.status_code
    assert b"" == response.data


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "engine_id"),
        ({"engine_id": "e 1"}, "engine_id"),
        ({"engine_id": "e1", "capabilities": "h264"}, "capabilities"),
        ({"engine_id": "e1", "capabilities": [264]}, "capabilities"),
    ],
    ids=["id-missing", "id-bad", "capabilities-string", "capabilities-not-strings"],
)
def test_assign_validation(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json],
    body: Json, field: str,
) -> None:
    """An invalid assign request is a 400 validation_error naming the field."""
    heartbeat("e1")
    error = assert_error(client.post("/assign_job/", json=body, headers=auth),
                         400, "validation_error")
    assert field in error["details"]


def test_assign_unknown_engine_is_404(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json]
) -> None:
    """An engine that never sent a heartbeat gets 404, and the job stays pending."""
    job = submit()
    assert_error(assign(client, auth, "ghost"), 404, "not_found")
    assert "pending" == get_job(client, auth, job["job_id"])["status"]


def test_assign_redelivers_held_job(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """An engine asking again while it holds a job gets that same job again, also once
    it is processing; other jobs stay pending."""
    heartbeat("e1")
    first = submit()
    second = submit()
    body = assigned(client, auth, "e1")
    assert first["job_id"] == body["job_id"]
    again = assigned(client, auth, "e1")
    assert body == again
    progress = client.post(f"/jobs/{first['job_id']}/progress", json={"progress": 10},
                           headers=auth)
    assert 200 == progress.status_code
    resumed = assigned(client, auth, "e1")
    assert (first["job_id"], "e1") == (resumed["job_id"], resumed["assigned_engine"])
    assert "pending" == get_job(client, auth, second["job_id"])["status"]
    assert [first["job_id"]] == get_engine(client, auth, "e1")["current_jobs"]


# ------------------------------------------------------------- scheduling


def test_codec_must_match_registered_codecs(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """An engine only gets jobs whose target_codec it registered."""
    heartbeat("e1", supported_codecs=["vp9"])
    h264 = submit(target_codec="h264")
    assert 204 == assign(client, auth, "e1").status_code
    vp9 = submit(target_codec="vp9")
    assert vp9["job_id"] == assigned(client, auth, "e1")["job_id"]
    assert "pending" == get_job(client, auth, h264["job_id"])["status"]


def test_capabilities_override_registered_codecs(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """capabilities in the request replace the registered supported_codecs."""
    heartbeat("e1", supported_codecs=["h264"])
    h264 = submit(target_codec="h264")
    assert 204 == assign(client, auth, "e1", capabilities=["av1"]).status_code
    av1 = submit(target_codec="av1")
    assert av1["job_id"] == assigned(client, auth, "e1", capabilities=["av1"])["job_id"]
    complete(client, auth, av1["job_id"])
    heartbeat("e2", supported_codecs=["vp9"])
    assert h264["job_id"] == assigned(client, auth, "e2", capabilities=["h264"])["job_id"]


def test_engine_without_codecs_takes_any_codec(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """An engine that lists no codecs takes a job of any codec."""
    heartbeat("e1")
    job = submit(target_codec="prores")
    assert job["job_id"] == assigned(client, auth, "e1")["job_id"]


def test_job_size_must_fit_storage(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """A job fits when job_size (MB) <= storage_capacity_gb * 1024: 1024 MB fits 1 GB,
    1025 MB does not (even though it is older)."""
    heartbeat("small", storage_capacity_gb=1)
    too_big = submit(job_size=1025)
    assert 204 == assign(client, auth, "small").status_code
    exact = submit(job_size=1024)
    assert exact["job_id"] == assigned(client, auth, "small")["job_id"]
    assert "pending" == get_job(client, auth, too_big["job_id"])["status"]
    heartbeat("unknown-storage")
    assert too_big["job_id"] == assigned(client, auth, "unknown-storage")["job_id"]


def test_higher_priority_first_then_oldest(
    client: FlaskClient, auth: dict[str, str], clock: FakeClock,
    submit: Callable[..., Json], heartbeat: Callable[..., Json],
) -> None:
    """Among suitable jobs the highest priority goes first, ties by age (oldest first)."""
    heartbeat("e1")
    order = []
    for priority in (0, 5, -1, 5, 0):
        order.append((priority, submit(priority=priority)["job_id"]))
        clock.advance(1)
    served = []
    for _ in order:
        job = assigned(client, auth, "e1")
        served.append(job["job_id"])
        complete(client, auth, job["job_id"])
    expected = [job_id for _, job_id in sorted(order, key=lambda item: -item[0])]
    assert expected == served
    assert 204 == assign(client, auth, "e1").status_code


def test_concurrent_jobs_limit(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str],
) -> None:
    """With max_concurrent_jobs=1 a second engine gets 204 while one job is active,
    and the next job once it is done."""
    client = make_app(make_settings(max_concurrent_jobs=1)).test_client()
    for engine_id in ("e1", "e2"):
        assert 200 == client.post("/engines/heartbeat", json={"engine_id": engine_id},
                                  headers=auth).status_code
    ids = []
    for _ in range(2):
        response = client.post("/jobs/", json={"source_url": "http://a/b.mp4",
                                               "target_codec": "h264", "job_size": 1},
                               headers=auth)
        assert 201 == response.status_code
        ids.append(response.get_json()["job_id"])
    assert ids[0] == assigned(client, auth, "e1")["job_id"]
    response = assign(client, auth, "e2")
    assert (204, b"") == (response.status_code, response.data)
    complete(client, auth, ids[0])
    assert ids[1] == assigned(client, auth, "e2")["job_id"]


# ---------------------------------------------------------------- liveness


def _liveness_client(make_app: Callable[..., Flask], make_settings: Callable[..., Any],
                     **overrides: Any) -> tuple[Flask, FlaskClient]:
    app = make_app(make_settings(engine_heartbeat_timeout=60, **overrides))
    return app, app.test_client()


def _hold_job(client: FlaskClient, auth: dict[str, str], **job: Any) -> str:
    assert 200 == client.post("/engines/heartbeat", json={"engine_id": "e1"},
                              headers=auth).status_code
    response = client.post("/jobs/", json={"source_url": "http://a/b.mp4",
                                           "target_codec": "h264", "job_size": 1, **job},
                           headers=auth)
    assert 201 == response.status_code
    job_id = response.get_json()["job_id"]
    assert job_id == assigned(client, auth, "e1")["job_id"]
    return job_id


def test_silent_engine_goes_offline_and_its_job_is_requeued(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str], clock: FakeClock,
) -> None:
    """No heartbeat for the timeout: the engine becomes offline and its job is a failed
    attempt, re-queued (pending, retries 1, error_message says the engine was lost)."""
    app, client = _liveness_client(make_app, make_settings)
    job_id = _hold_job(client, auth)
    service = app.extensions["dispatch"]

    clock.advance(59)
    service.maintenance.sweep()
    assert "busy" == get_engine(client, auth, "e1")["status"]

    clock.advance(2)
    service.maintenance.sweep()
    engine = get_engine(client, auth, "e1")
    assert ("offline", []) == (engine["status"], engine["current_jobs"])
    job = get_job(client, auth, job_id)
    assert ("pending", None, 1) == (job["status"], job["assigned_engine"], job["retries"])
    assert "lost" in job["error_message"].lower()


def test_silent_engine_job_fails_without_retries(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str], clock: FakeClock,
) -> None:
    """With max_retries 0, the job of a lost engine fails for good."""
    app, client = _liveness_client(make_app, make_settings)
    job_id = _hold_job(client, auth, max_retries=0)
    clock.advance(61)
    app.extensions["dispatch"].maintenance.sweep()
    job = get_job(client, auth, job_id)
    assert ("failed", None, 1) == (job["status"], job["assigned_engine"], job["retries"])
    assert "lost" in job["error_message"].lower()
    assert "offline" == get_engine(client, auth, "e1")["status"]


def test_heartbeat_brings_offline_engine_back(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str], clock: FakeClock,
) -> None:
    """A heartbeat from an offline engine makes it idle again, and it can take work."""
    app, client = _liveness_client(make_app, make_settings, retry_backoff_seconds=5)
    job_id = _hold_job(client, auth)
    clock.advance(61)
    app.extensions["dispatch"].maintenance.sweep()
    assert "offline" == get_engine(client, auth, "e1")["status"]

    response = client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    assert 200 == response.status_code
    body = response.get_json()
    assert ("idle", []) == (body["status"], body["current_jobs"])
    assert START + 61 == epoch(body["last_heartbeat"])

    clock.advance(600)  # past any retry backoff
    client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    again = assigned(client, auth, "e1")
    assert (job_id, "assigned", 1) == (again["job_id"], again["status"], again["retries"])


def test_heartbeating_engine_stays_online(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str], clock: FakeClock,
) -> None:
    """An engine that keeps sending heartbeats within the timeout is never swept."""
    app, client = _liveness_client(make_app, make_settings)
    job_id = _hold_job(client, auth)
    for _ in range(5):
        clock.advance(40)
        client.post("/engines/heartbeat", json={"engine_id": "e1", "status": "idle"},
                    headers=auth)
        app.extensions["dispatch"].maintenance.sweep()
    assert "busy" == get_engine(client, auth, "e1")["status"]
    assert "assigned" == get_job(client, auth, job_id)["status"]


# ------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/engines/heartbeat"),
        ("post", "/engines/benchmark_result"),
        ("get", "/engines/"),
        ("get", "/engines/e1"),
        ("delete", "/engines/e1"),
        ("post", "/assign_job/"),
    ],
)
def test_engine_endpoints_need_key(client: FlaskClient, method: str, path: str) -> None:
    """Every engine endpoint answers 401 without the X-API-Key header or with a wrong one."""
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = getattr(client, method)(path, json={"engine_id": "e1"}, headers=headers)
        assert_error(response, 401, "unauthorized")
