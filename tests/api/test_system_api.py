"""Contract §5 (System): /health, /stats, /metrics and /openapi.json, and the response
schemas of dispatch/http/schemas.py checked against real response bodies."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import RAISE, Schema, ValidationError

from dispatch import __version__
from dispatch.http.schemas import (
    AssignedJobSchema,
    EngineListSchema,
    EngineSchema,
    ErrorSchema,
    HealthSchema,
    HeartbeatAnswerSchema,
    JobPageSchema,
    JobSchema,
    StatsSchema,
)
from tests.conftest import BOTH_BACKENDS, FakeClock
from tests.support.helpers import scrape

pytestmark = BOTH_BACKENDS

Json = dict[str, Any]
JOB_STATUSES = ("pending", "assigned", "processing", "completed", "failed", "cancelled")
ENGINE_STATUSES = ("idle", "busy", "draining", "offline")
NEW_JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10}


def post(client: FlaskClient, auth: dict[str, str], path: str, body: Json | None = None,
         status: int = 200) -> Json:
    response = client.post(path, json=body if body is not None else {}, headers=auth)
    assert status == response.status_code, response.get_data(as_text=True)
    return response.get_json()


def assign(client: FlaskClient, auth: dict[str, str], engine_id: str) -> Json:
    return post(client, auth, "/assign_job/", {"engine_id": engine_id})


def complete(client: FlaskClient, auth: dict[str, str], job_id: str) -> Json:
    return post(client, auth, f"/jobs/{job_id}/complete", {"output_url": "http://out/o.mp4"})


def fail(client: FlaskClient, auth: dict[str, str], job_id: str) -> Json:
    return post(client, auth, f"/jobs/{job_id}/fail", {"error_message": "encoder crashed"})


def health(client: FlaskClient) -> Json:
    response = client.get("/health")
    assert 200 == response.status_code
    assert "application/json" == response.mimetype
    return response.get_json()


def stats(client: FlaskClient, auth: dict[str, str]) -> Json:
    response = client.get("/stats", headers=auth)
    assert 200 == response.status_code, response.get_data(as_text=True)
    return response.get_json()


# ------------------------------------------------------------------ /health


def test_health_needs_no_key_and_has_exact_keys(client: FlaskClient, clock: FakeClock) -> None:
    """/health answers without a key with exactly status, version, uptime_seconds,
    jobs_queued and engines_active; uptime follows the clock."""
    clock.advance(42.5)
    expected = {"status": "healthy", "version": __version__, "uptime_seconds": 42.5,
                "jobs_queued": 0, "engines_active": 0}
    assert expected == health(client)
    assert expected == client.get("/health/").get_json()


def test_health_counts_move(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str], clock: FakeClock,
) -> None:
    """jobs_queued counts pending jobs and engines_active engines that are not offline."""
    app = make_app(make_settings(engine_heartbeat_timeout=60))
    client = app.test_client()

    def counts() -> tuple[int, int]:
        body = health(client)
        return body["jobs_queued"], body["engines_active"]

    assert (0, 0) == counts()
    post(client, auth, "/jobs/", NEW_JOB, 201)
    post(client, auth, "/jobs/", NEW_JOB, 201)
    assert (2, 0) == counts()
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1"})
    post(client, auth, "/engines/heartbeat", {"engine_id": "e2"})
    assert (2, 2) == counts()
    assign(client, auth, "e1")
    assert (1, 2) == counts()
    clock.advance(40)
    post(client, auth, "/engines/heartbeat", {"engine_id": "e2"})
    clock.advance(30)  # e1 silent for 70 s, e2 for 30 s
    app.extensions["dispatch"].maintenance.sweep()
    assert (2, 1) == counts()


# ------------------------------------------------------------------- /stats


def test_stats_needs_key(client: FlaskClient) -> None:
    """/stats is 401 without a key or with a wrong one."""
    for headers in ({}, {"X-API-Key": "nope"}):
        response = client.get("/stats", headers=headers)
        assert 401 == response.status_code
        assert "unauthorized" == response.get_json()["error"]["code"]


def test_stats_empty(client: FlaskClient, auth: dict[str, str]) -> None:
    """An empty server reports zero everywhere."""
    expected = {
        "jobs": {"total": 0, **dict.fromkeys(JOB_STATUSES, 0)},
        "engines": {"total": 0, "active": 0, "idle": 0, "busy": 0, "draining": 0, "offline": 0},
        "performance": {"avg_job_time": 0.0, "jobs_per_hour": 0, "success_rate": 0.0},
    }
    assert expected == stats(client, auth)


def test_stats_counts_and_performance(
    client: FlaskClient, auth: dict[str, str], clock: FakeClock,
    submit: Callable[..., Json], heartbeat: Callable[..., Json],
) -> None:
    """jobs counts every status; avg_job_time is assignment to completion; jobs_per_hour
    counts completions of the last hour; success_rate is completed / (completed + failed)."""
    heartbeat("e1")
    heartbeat("e2")
    first, second = submit()["job_id"], submit()["job_id"]
    doomed = submit(max_retries=0)["job_id"]
    held, waiting, cancelled = (submit()["job_id"] for _ in range(3))

    assert first == assign(client, auth, "e1")["job_id"]
    clock.advance(60)
    complete(client, auth, first)                       # took 60 s
    assert second == assign(client, auth, "e1")["job_id"]
    clock.advance(120)
    complete(client, auth, second)                      # took 120 s
    assert doomed == assign(client, auth, "e1")["job_id"]
    assert "failed" == fail(client, auth, doomed)["status"]
    assert held == assign(client, auth, "e2")["job_id"]
    assert "cancelled" == client.delete(f"/jobs/{cancelled}", headers=auth) \
        .get_json()["status"]
    assert "pending" == client.get(f"/jobs/{waiting}", headers=auth).get_json()["status"]

    expected = {
        "jobs": {"total": 6, "pending": 1, "assigned": 1, "processing": 0, "completed": 2,
                 "failed": 1, "cancelled": 1},
        "engines": {"total": 2, "active": 2, "idle": 1, "busy": 1, "draining": 0, "offline": 0},
        "performance": {"avg_job_time": pytest.approx(90.0),
                        "jobs_per_hour": 2,
                        "success_rate": pytest.approx(200 / 3, abs=0.01)},
    }
    assert expected == stats(client, auth)

    clock.advance(3500)  # the first completion is now more than an hour old
    assert 1 == stats(client, auth)["performance"]["jobs_per_hour"]
    clock.advance(200)
    performance = stats(client, auth)["performance"]
    assert 0 == performance["jobs_per_hour"]
    assert pytest.approx(90.0) == performance["avg_job_time"]


def test_stats_engine_counts_include_offline(
    make_app: Callable[..., Flask], make_settings: Callable[..., Any],
    auth: dict[str, str], clock: FakeClock,
) -> None:
    """engines counts total, active (idle + busy), idle, busy and offline."""
    app = make_app(make_settings(engine_heartbeat_timeout=60))
    client = app.test_client()
    for engine_id in ("e1", "e2", "e3"):
        post(client, auth, "/engines/heartbeat", {"engine_id": engine_id})
    post(client, auth, "/jobs/", NEW_JOB, 201)
    assign(client, auth, "e2")
    clock.advance(40)
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1"})
    post(client, auth, "/engines/heartbeat", {"engine_id": "e2"})
    clock.advance(30)
    app.extensions["dispatch"].maintenance.sweep()
    expected = {"total": 3, "active": 2, "idle": 1, "busy": 1, "draining": 0, "offline": 1}
    assert expected == stats(client, auth)["engines"]


# ----------------------------------------------------------------- /metrics


def by_label(families: dict[str, Any], name: str, label: str, sample: str) -> dict[str, float]:
    """Sum of the family's ``sample`` values, grouped by ``label``."""
    totals: dict[str, float] = {}
    for item in families[name].samples:
        if item.name == sample:
            key = item.labels[label]
            totals[key] = totals.get(key, 0.0) + item.value
    return totals


def job_counts(client: FlaskClient) -> dict[str, float]:
    return by_label(scrape(client), "distconv_jobs", "status", "distconv_jobs")


def engine_counts(client: FlaskClient) -> dict[str, float]:
    return by_label(scrape(client), "distconv_engines", "status", "distconv_engines")


def request_counts(client: FlaskClient) -> dict[str, float]:
    return by_label(scrape(client), "distconv_http_requests", "endpoint",
                    "distconv_http_requests_total")


def test_metrics_job_and_engine_counts(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json],
    heartbeat: Callable[..., Json],
) -> None:
    """/metrics (no key) reports jobs by status and engines by status as they move."""
    zero_jobs = dict.fromkeys(JOB_STATUSES, 0.0)
    assert zero_jobs == job_counts(client)
    assert dict.fromkeys(ENGINE_STATUSES, 0.0) == engine_counts(client)

    first = submit()["job_id"]
    submit()
    heartbeat("e1")
    heartbeat("e2")
    assert {**zero_jobs, "pending": 2.0} == job_counts(client)
    assert {"idle": 2.0, "busy": 0.0, "draining": 0.0, "offline": 0.0} == engine_counts(client)

    assert first == assign(client, auth, "e1")["job_id"]
    assert {**zero_jobs, "pending": 1.0, "assigned": 1.0} == job_counts(client)
    assert {"idle": 1.0, "busy": 1.0, "draining": 0.0, "offline": 0.0} == engine_counts(client)

    post(client, auth, f"/jobs/{first}/progress", {"progress": 50})
    assert {**zero_jobs, "pending": 1.0, "processing": 1.0} == job_counts(client)

    complete(client, auth, first)
    assert {**zero_jobs, "pending": 1.0, "completed": 1.0} == job_counts(client)
    assert {"idle": 2.0, "busy": 0.0, "draining": 0.0, "offline": 0.0} == engine_counts(client)


def test_metrics_request_counts_by_endpoint(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json]
) -> None:
    """/metrics counts requests per endpoint, and exposes latency by endpoint and
    persistence latency."""
    before = request_counts(client)
    client.get("/health")
    client.get("/health")
    submit()
    client.get("/jobs/", headers=auth)
    after = request_counts(client)

    def delta(endpoint: str) -> float:
        return after.get(endpoint, 0.0) - before.get(endpoint, 0.0)

    assert 2.0 == delta("/health")
    assert 2.0 == delta("/jobs/")  # one POST, one GET
    assert 1.0 == delta("/metrics")  # the scrape that produced ``before``

    families = scrape(client)
    latency = families["distconv_http_request_duration_seconds"]
    assert "histogram" == latency.type
    assert {"/health", "/jobs/"} <= {s.labels.get("endpoint") for s in latency.samples}
    assert "histogram" == families["distconv_persistence_sync_seconds"].type


# ------------------------------------------------------------ /openapi.json

CONTRACT_PATHS = {
    "/jobs", "/jobs/{}", "/jobs/{}/progress", "/jobs/{}/complete", "/jobs/{}/fail",
    "/jobs/{}/retry", "/engines/heartbeat", "/engines/benchmark_result", "/engines",
    "/engines/{}", "/assign_job", "/health", "/stats", "/metrics",
}


def test_openapi_document(client: FlaskClient) -> None:
    """/openapi.json (no key) is OpenAPI 3.x, has every contract path, declares an apiKey
    scheme on header X-API-Key required by default, and /health needs no key."""
    response = client.get("/openapi.json")
    assert 200 == response.status_code
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    paths = {re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/" for path in spec["paths"]}
    assert set() == CONTRACT_PATHS - paths

    schemes = spec["components"]["securitySchemes"]
    api_key = [name for name, scheme in schemes.items()
               if scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}]
    assert 1 == len(api_key), schemes
    assert [{api_key[0]: []}] == spec["security"]
    assert [] == spec["paths"]["/health"]["get"]["security"]


# --------------------------------------------------------- response schemas


def test_response_bodies_load_with_their_schemas(
    client: FlaskClient, auth: dict[str, str], heartbeat: Callable[..., Json],
    submit: Callable[..., Json],
) -> None:
    """Every JSON body of the main endpoints loads with its schema (unknown=RAISE)."""
    bodies: list[tuple[str, type[Schema], Any]] = []

    def record(label: str, schema: type[Schema], response: Any, status: int) -> Json:
        assert status == response.status_code, (label, response.get_data(as_text=True))
        body = response.get_json()
        bodies.append((label, schema, body))
        return body

    def call(method: str, path: str, body: Json | None = None,
             headers: dict[str, str] | None = None) -> Any:
        return getattr(client, method)(path, json=body, headers=auth if headers is None
                                       else headers)

    record("heartbeat", HeartbeatAnswerSchema,
           call("post", "/engines/heartbeat", {"engine_id": "e1", "hostname": "h",
                                               "supported_codecs": ["h264"],
                                               "storage_capacity_gb": 100}), 200)
    record("benchmark", EngineSchema, call("post", "/engines/benchmark_result",
                                           {"engine_id": "e1", "benchmark_time": 4.5}), 200)
    first = record("submit", JobSchema, call("post", "/jobs/", NEW_JOB), 201)["job_id"]
    second = submit(max_retries=1)["job_id"]
    third = submit()["job_id"]
    record("assign", AssignedJobSchema, call("post", "/assign_job/", {"engine_id": "e1"}), 200)
    record("progress", JobSchema, call("post", f"/jobs/{first}/progress",
                                       {"progress": 30.5}), 200)
    record("get engine busy", EngineSchema, call("get", "/engines/e1"), 200)
    record("complete", JobSchema, call("post", f"/jobs/{first}/complete",
                                       {"output_url": "http://out/o.mp4"}), 200)
    record("get completed", JobSchema, call("get", f"/jobs/{first}"), 200)
    assert second == record("assign 2", AssignedJobSchema,
                            call("post", "/assign_job/", {"engine_id": "e1"}), 200)["job_id"]
    record("fail requeued", JobSchema, call("post", f"/jobs/{second}/fail",
                                            {"error_message": "boom"}), 200)
    record("cancel", JobSchema, call("delete", f"/jobs/{third}"), 200)
    record("retry", JobSchema, call("post", f"/jobs/{third}/retry"), 200)
    record("list", JobPageSchema, call("get", "/jobs/?limit=10"), 200)
    record("list pending", JobPageSchema, call("get", "/jobs/?status=pending"), 200)
    record("engines", EngineListSchema, call("get", "/engines/"), 200)
    record("stats", StatsSchema, call("get", "/stats"), 200)
    record("health", HealthSchema, client.get("/health"), 200)
    heartbeat("e2")
    record("delete engine", EngineSchema, call("delete", "/engines/e2"), 200)

    record("404 job", ErrorSchema, call("get", "/jobs/nope"), 404)
    record("404 engine", ErrorSchema, call("get", "/engines/nope"), 404)
    record("404 path", ErrorSchema, call("get", "/nowhere"), 404)
    record("400 validation", ErrorSchema, call("post", "/jobs/", {"job_size": -1}), 400)
    record("400 heartbeat", ErrorSchema, call("post", "/engines/heartbeat", {}), 400)
    record("401", ErrorSchema, call("get", "/jobs/", headers={}), 401)
    record("405", ErrorSchema, call("put", "/health"), 405)
    record("409", ErrorSchema, call("post", f"/jobs/{first}/fail",
                                    {"error_message": "late"}), 409)

    problems = []
    for label, schema, body in bodies:
        try:
            schema().load(body, unknown=RAISE)
        except ValidationError as exc:
            problems.append((label, exc.messages))
    assert [] == problems
