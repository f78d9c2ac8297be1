"""Contract §2 (HTTP conventions): auth, body parsing, size limit, routing errors,
trailing slashes, time format, null values and the one error shape."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import API_KEY, JOB
from tests.support.helpers import assert_error

MIB = 1024 * 1024
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
ERROR_CODES = {"bad_request", "validation_error", "unauthorized", "not_found", "forbidden",
               "method_not_allowed", "conflict", "payload_too_large", "queue_full",
               "internal_error", "unavailable"}

# Every route that needs the key (method, path); ids need not exist: auth comes first.
PROTECTED = [
    ("POST", "/jobs/"),
    ("POST", "/jobs"),
    ("GET", "/jobs/"),
    ("GET", "/jobs"),
    ("GET", "/jobs/1704067200000000_0"),
    ("DELETE", "/jobs/1704067200000000_0"),
    ("POST", "/jobs/1704067200000000_0/progress"),
    ("POST", "/jobs/1704067200000000_0/complete"),
    ("POST", "/jobs/1704067200000000_0/fail"),
    ("POST", "/jobs/1704067200000000_0/retry"),
    ("POST", "/engines/heartbeat"),
    ("POST", "/engines/benchmark_result"),
    ("GET", "/engines/"),
    ("GET", "/engines"),
    ("GET", "/engines/engine-001"),
    ("DELETE", "/engines/engine-001"),
    ("POST", "/assign_job/"),
    ("POST", "/assign_job"),
    ("GET", "/stats"),
]

BAD_KEYS = {
    "missing": {},
    "empty": {"X-API-Key": ""},
    "wrong": {"X-API-Key": "not-the-key"},
    "prefix": {"X-API-Key": API_KEY[:-1]},
    "longer": {"X-API-Key": API_KEY + "x"},
    "other-case": {"X-API-Key": API_KEY.upper()},
    "bearer-instead": {"Authorization": f"Bearer {API_KEY}"},
}


def total(client: FlaskClient, auth: dict[str, str]) -> int:
    response = client.get("/jobs/", headers=auth)
    assert 200 == response.status_code
    return response.get_json()["total"]


# --------------------------------------------------------------- auth

@pytest.mark.parametrize("headers", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_refuse_missing_or_wrong_key(client: FlaskClient,
                                                      auth: dict[str, str], method: str,
                                                      path: str,
                                                      headers: dict[str, str]) -> None:
    """Every route but /health and /metrics: no key or a wrong one is 401 unauthorized,
    and nothing is done."""
    response = client.open(path, method=method, json=JOB, headers=headers)

    assert_error(response, 401, "unauthorized")
    assert 0 == total(client, auth)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_accept_the_key(client: FlaskClient, method: str,
                                         path: str) -> None:
    """The right key in X-API-Key (header name in any case) gets past authentication."""
    response = client.open(path, method=method, json=JOB, headers={"x-api-key": API_KEY})

    assert response.status_code not in (401, 403), response.get_json()


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_health_and_metrics_need_no_key(client: FlaskClient, path: str) -> None:
    """/health and /metrics answer 200 without a key."""
    assert 200 == client.get(path).status_code


def test_metrics_is_prometheus_text_not_json(client: FlaskClient) -> None:
    """/metrics is the exception to JSON bodies: Prometheus text exposition."""
    response = client.get("/metrics")

    assert "text/plain" == response.mimetype
    assert "# TYPE" in response.get_data(as_text=True)


def test_openapi_document_needs_no_key(client: FlaskClient, auth: dict[str, str]) -> None:
    """Issue #2 overrides the contract here: GET /openapi.json is served without a key
    (it describes the API, it holds no data), and with one."""
    for headers in ({}, auth):
        response = client.get("/openapi.json", headers=headers)
        assert 200 == response.status_code
        assert response.get_json()["openapi"].startswith("3.")


# --------------------------------------------------------------- request bodies

@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=xyz",
    "application/json; charset=utf-8",
    None,
])
def test_body_is_read_as_json_whatever_the_content_type(client: FlaskClient,
                                                        auth: dict[str, str],
                                                        content_type: str | None) -> None:
    """A JSON body works whatever Content-Type says (curl -d sends a form type)."""
    headers = dict(auth) if content_type is None else {**auth, "Content-Type": content_type}

    response = client.post("/jobs/", data=json.dumps(JOB), headers=headers)

    assert 201 == response.status_code, response.get_json()
    assert JOB == {key: response.get_json()[key] for key in JOB}


def test_form_content_type_works_for_engine_requests(client: FlaskClient,
                                                     auth: dict[str, str]) -> None:
    """Heartbeat, assign and complete read JSON from a form-typed body too (curl -d)."""
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    job_id = client.post("/jobs/", data=json.dumps(JOB), headers=form).get_json()["job_id"]

    assert 200 == client.post("/engines/heartbeat", data='{"engine_id": "e1"}',
                              headers=form).status_code
    assert 200 == client.post("/assign_job/", data='{"engine_id": "e1"}',
                              headers=form).status_code
    response = client.post(f"/jobs/{job_id}/complete",
                           data='{"output_url": "http://example.com/o.mp4"}', headers=form)
    assert ("completed", "http://example.com/o.mp4") == (
        response.get_json()["status"], response.get_json()["output_url"])


@pytest.mark.parametrize("content_type", [None, "application/json",
                                          "application/x-www-form-urlencoded"])
def test_empty_body_on_all_optional_endpoint_is_empty_object(client: FlaskClient,
                                                             auth: dict[str, str],
                                                             content_type: str | None) -> None:
    """POST /jobs/{id}/retry (no required fields) with an empty body works."""
    job_id = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    assert 200 == client.delete(f"/jobs/{job_id}", headers=auth).status_code
    headers = dict(auth) if content_type is None else {**auth, "Content-Type": content_type}

    response = client.post(f"/jobs/{job_id}/retry", data=b"", headers=headers)

    assert 200 == response.status_code, response.get_json()
    assert "pending" == response.get_json()["status"]


def test_body_over_1_mib_is_413(client: FlaskClient, auth: dict[str, str]) -> None:
    """A request body larger than 1 MiB: 413 payload_too_large, nothing created."""
    body = json.dumps({**JOB, "source_url": "http://example.com/" + "a" * MIB})

    response = client.post("/jobs/", data=body, headers=auth,
                           content_type="application/json")

    assert_error(response, 413, "payload_too_large")
    assert 0 == total(client, auth)


def test_body_of_exactly_1_mib_is_accepted(client: FlaskClient, auth: dict[str, str]) -> None:
    """The limit is "larger than 1 MiB": a valid 1 MiB body (padded with spaces) is read."""
    text = json.dumps(JOB)
    body = text + " " * (MIB - len(text))
    assert MIB == len(body.encode())

    response = client.post("/jobs/", data=body, headers=auth,
                           content_type="application/json")

    assert 201 == response.status_code, response.get_json()


@pytest.mark.parametrize("body", [b"{", b"not json", b"{'a': 1}", b'{"a": 1,}', b"NaN",
                                  b"[1]", b'"x"', b"1", b"null", b"true", b"[]",
                                  b"\xff\xfe"])
@pytest.mark.parametrize("path", ["/jobs/", "/engines/heartbeat", "/assign_job/",
                                  "/jobs/1704067200000000_0/complete"])
def test_invalid_or_non_object_json_is_400_bad_request(client: FlaskClient,
                                                       auth: dict[str, str], path: str,
                                                       body: bytes) -> None:
    """A body that is not JSON, or JSON that is not an object: 400 bad_request, no details."""
    response = client.post(path, data=body, headers=auth, content_type="application/json")

    assert_error(response, 400, "bad_request")
    assert 0 == total(client, auth)


# --------------------------------------------------------------- routing

@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/jobs/"),
    ("PATCH", "/jobs"),
    ("DELETE", "/jobs/"),
    ("PUT", "/jobs/1704067200000000_0"),
    ("GET", "/jobs/1704067200000000_0/complete"),
    ("DELETE", "/jobs/1704067200000000_0/retry"),
    ("PUT", "/jobs"),
    ("POST", "/engines/"),
    ("PUT", "/engines"),
    ("GET", "/assign_job/"),
    ("GET", "/assign_job"),
    ("POST", "/stats"),
    ("POST", "/health"),
])
def test_unknown_method_on_known_path_is_405(client: FlaskClient, auth: dict[str, str],
                                             method: str, path: str) -> None:
    """An unknown method on a known path (either slash form): 405 method_not_allowed."""
    response = client.open(path, method=method, json={}, headers=auth)

    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"),
    ("GET", "/nope"),
    ("GET", "/api/jobs"),
    ("GET", "/jobs/1704067200000000_0/nope"),
    ("POST", "/jobs/1704067200000000_0/finish"),
    ("POST", "/assign"),
])
def test_unknown_path_is_404(client: FlaskClient, auth: dict[str, str], method: str,
                             path: str) -> None:
    """An unknown path: 404 not_found."""
    assert_error(client.open(path, method=method, json={}, headers=auth), 404, "not_found")


@pytest.fixture
def job_id(client: FlaskClient, auth: dict[str, str]) -> str:
    """A pending job's id, with engine e1 registered."""
    assert 200 == client.post("/engines/heartbeat", json={"engine_id": "e1"},
                              headers=auth).status_code
    return client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/jobs", None, 200),
    ("GET", "/jobs/", None, 200),
    ("POST", "/jobs", JOB, 201),
    ("POST", "/jobs/", JOB, 201),
    ("GET", "/engines", None, 200),
    ("GET", "/engines/", None, 200),
    ("GET", "/engines/e1", None, 200),
    ("GET", "/engines/e1/", None, 200),
    ("POST", "/engines/heartbeat/", {"engine_id": "e2"}, 200),
    ("POST", "/assign_job", {"engine_id": "e1"}, 200),
    ("POST", "/assign_job/", {"engine_id": "e1"}, 200),
    ("GET", "/jobs/{id}", None, 200),
    ("GET", "/jobs/{id}/", None, 200),
    ("DELETE", "/jobs/{id}/", None, 200),
    ("GET", "/stats/", None, 200),
    ("GET", "/health/", None, 200),
])
def test_paths_work_with_and_without_trailing_slash_without_redirect(
        client: FlaskClient, auth: dict[str, str], job_id: str, method: str, path: str,
        body: Any, status: int) -> None:
    """Each path answers directly with or without its trailing slash (no 3xx)."""
    response = client.open(path.replace("{id}", job_id), method=method, json=body,
                           headers=auth)

    assert status == response.status_code, (response.status_code, response.headers)


@pytest.mark.parametrize(("action", "body"), [
    ("progress/", {"progress": 5}),
    ("complete/", {"output_url": "http://example.com/o.mp4"}),
    ("fail/", {"error_message": "x"}),
])
def test_job_report_paths_accept_trailing_slash(client: FlaskClient, auth: dict[str, str],
                                                job_id: str, action: str,
                                                body: dict[str, Any]) -> None:
    """/jobs/{id}/progress/, /complete/ and /fail/ work like their slash-less forms."""
    assert 200 == client.post("/assign_job/", json={"engine_id": "e1"},
                              headers=auth).status_code

    response = client.post(f"/jobs/{job_id}/{action}", json=body, headers=auth)

    assert 200 == response.status_code, (response.status_code, response.headers)


def test_retry_path_accepts_trailing_slash(client: FlaskClient, auth: dict[str, str],
                                           job_id: str) -> None:
    """/jobs/{id}/retry/ works like /jobs/{id}/retry."""
    assert 200 == client.delete(f"/jobs/{job_id}", headers=auth).status_code

    response = client.post(f"/jobs/{job_id}/retry/", headers=auth)

    assert 200 == response.status_code, (response.status_code, response.headers)


# --------------------------------------------------------------- bodies out

def test_times_are_rfc3339_utc_ending_in_z(client: FlaskClient, auth: dict[str, str],
                                           job_id: str) -> None:
    """Every time in jobs and engines is an RFC 3339 UTC string ending in Z."""
    job = client.post("/assign_job/", json={"engine_id": "e1"}, headers=auth).get_json()
    requeued = client.post(f"/jobs/{job_id}/fail", json={"error_message": "x"},
                           headers=auth).get_json()
    second = client.post("/jobs/", json=JOB, headers=auth).get_json()
    client.delete(f"/jobs/{second['job_id']}", headers=auth)
    cancelled = client.get(f"/jobs/{second['job_id']}", headers=auth).get_json()
    engine = client.get("/engines/e1", headers=auth).get_json()

    times = [job[key] for key in ("created_at", "updated_at", "assigned_at")]
    times += [requeued["retry_at"], cancelled["completed_at"]]
    times += [engine["registered_at"], engine["last_heartbeat"]]
    for job_in_list in client.get("/jobs/", headers=auth).get_json()["jobs"]:
        times += [job_in_list["created_at"], job_in_list["updated_at"]]
    assert [t for t in times if not (isinstance(t, str) and RFC3339_UTC.match(t))] == []


def test_absent_values_are_null_never_missing(client: FlaskClient, auth: dict[str, str]
                                              ) -> None:
    """A fresh job and a minimal engine carry every key, with null for absent values."""
    job = client.post("/jobs/", json=JOB, headers=auth).get_json()
    engine = client.post("/engines/heartbeat", json={"engine_id": "e1"},
                         headers=auth).get_json()

    assert {key: None for key in ("assigned_engine", "output_url", "progress",
                                  "error_message", "retry_at", "assigned_at",
                                  "completed_at")} == {
        key: job[key] for key in ("assigned_engine", "output_url", "progress",
                                  "error_message", "retry_at", "assigned_at",
                                  "completed_at")}
    assert {"engine_id", "engine_type", "hostname", "status", "supported_codecs",
            "storage_capacity_gb", "streaming_support", "benchmark_time",
            "avg_benchmark_time", "local_job_queue", "current_jobs", "jobs_completed",
            "jobs_failed", "registered_at", "last_heartbeat"} <= set(engine)
    assert (None, None, None, None, None) == (
        engine["engine_type"], engine["hostname"], engine["storage_capacity_gb"],
        engine["benchmark_time"], engine["avg_benchmark_time"])


def test_json_responses_say_application_json_and_204_has_no_body(
        client: FlaskClient, auth: dict[str, str]) -> None:
    """Success bodies are JSON with that Content-Type; a 204 has no body."""
    for response in (client.post("/jobs/", json=JOB, headers=auth),
                     client.get("/jobs/", headers=auth),
                     client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth),
                     client.get("/stats", headers=auth),
                     client.get("/health")):
        assert "application/json" == response.mimetype, response.request.path
        assert isinstance(response.get_json(), dict)
    client.post("/assign_job/", json={"engine_id": "e1"}, headers=auth)

    idle = client.post("/assign_job/", json={"engine_id": "e2"}, headers=auth)
    assert 404 == idle.status_code  # e2 never sent a heartbeat
    client.post("/engines/heartbeat", json={"engine_id": "e2"}, headers=auth)
    empty = client.post("/assign_job/", json={"engine_id": "e2"}, headers=auth)
    assert (204, b"") == (empty.status_code, empty.get_data())


# --------------------------------------------------------------- error shape

@pytest.fixture
def small_queue_client(make_app: Callable[..., Flask], make_settings: Callable[..., Any],
                       tmp_path: Any) -> FlaskClient:
    """A second app (own state file) whose queue holds one pending job."""
    settings = make_settings(job_queue_max_size=1, state_file=str(tmp_path / "small.json"))
    return make_app(settings).test_client()


def test_every_error_has_one_shape(client: FlaskClient, auth: dict[str, str],
                                   small_queue_client: FlaskClient) -> None:
    """Errors from auth, routing, body parsing, size, domain rules and the queue all have
    exactly {"error": {"code", "message"}}, with a code from the contract's list."""
    job_id = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    small_queue_client.post("/jobs/", json=JOB, headers=auth)
    cases = [
        (client.get("/jobs/"), 401, "unauthorized"),
        (client.get("/nope", headers=auth), 404, "not_found"),
        (client.get("/jobs/none_0", headers=auth), 404, "not_found"),
        (client.put("/jobs/", headers=auth), 405, "method_not_allowed"),
        (client.post("/jobs/", data="{", headers=auth), 400, "bad_request"),
        (client.post("/jobs/", data=b"x" * (MIB + 1), headers=auth), 413,
         "payload_too_large"),
        (client.post(f"/jobs/{job_id}/retry", headers=auth), 409, "conflict"),
        (small_queue_client.post("/jobs/", json=JOB, headers=auth), 503, "queue_full"),
    ]
    for response, status, code in cases:
        assert code in ERROR_CODES
        assert_error(response, status, code)


def test_validation_error_carries_details_field_to_messages(client: FlaskClient,
                                                            auth: dict[str, str]) -> None:
    """validation_error is the one error with details: field → list of messages."""
    response = client.post("/jobs/", json={**JOB, "job_size": -1}, headers=auth)

    assert (400, "application/json") == (response.status_code, response.mimetype)
    body = response.get_json()
    error = body["error"]
    assert {"error": {"code": "validation_error", "message": error["message"],
                      "details": {"job_size": error["details"]["job_size"]}}} == body
    assert isinstance(error["message"], str) and error["message"]
    assert error["details"]["job_size"] and all(
        isinstance(message, str) for message in error["details"]["job_size"])


def test_unexpected_exception_is_500_internal_error_without_traceback(
        app: Flask, client: FlaskClient, auth: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug answers 500 internal_error in the error shape; the traceback goes to the log,
    not the body."""
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(app.extensions["dispatch"].queries, "get_job", boom)

    response = client.get("/jobs/1704067200000000_0", headers=auth)

    assert_error(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    for leak in ("Traceback", "secret-internal-detail", "RuntimeError", "File \""):
        assert leak not in text
    assert any(record.exc_info and "secret-internal-detail" in str(record.exc_info[1])
               for record in caplog.records)
