"""Contract §3 (Jobs): the job object and every ``/jobs`` endpoint, through the test
client: each success row and each listed error."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from itertools import count
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import BOTH_BACKENDS, JOB, START, FakeClock
from tests.support.helpers import assert_error

pytestmark = BOTH_BACKENDS

JOB_KEYS = {
    "job_id", "source_url", "target_codec", "job_size", "priority", "status",
    "assigned_engine", "output_url", "progress", "retries", "max_retries", "error_message",
    "retry_at", "created_at", "updated_at", "assigned_at", "completed_at",
}
# Keys later issues added: attempts (#4), callbacks, waiting reasons, webhooks (#8),
# the encoder's figures (#22), the stored output (#21), chunked encoding (#23).
EXTRA_KEYS = {"attempt", "callback_url", "waiting_reason", "webhook", "progress_detail",
              "output", "chunk_seconds", "parent_id", "task", "chunks"}
# A pending job with no engine registered waits for one that supports its codec.
NO_ENGINE = {"code": "no_engine_for_codec", "message": "no active engine supports codec 'h264'",
             "position": None}
TIME_KEYS = ("retry_at", "created_at", "updated_at", "assigned_at", "completed_at")
JOB_ID = re.compile(r"^(\d+)_(\d+)$")
START_MICROS = 1_704_067_200_000_000


# ------------------------------------------------------------------ helpers

def parse_time(text: str | None) -> float | None:
    """An RFC 3339 UTC time ending in Z, as epoch seconds (None stays None)."""
    if text is None:
        return None
    assert isinstance(text, str) and text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def normalized(job: dict[str, Any]) -> dict[str, Any]:
    """The job with its times as epoch seconds, so bodies compare whatever the precision."""
    return {key: parse_time(value) if key in TIME_KEYS else value for key, value in job.items()}


def expected_job(job_id: str, **overrides: Any) -> dict[str, Any]:
    """A freshly submitted job (normalized), with ``overrides``."""
    body: dict[str, Any] = {
        "job_id": job_id, "source_url": JOB["source_url"], "target_codec": JOB["target_codec"],
        "job_size": JOB["job_size"], "priority": 0, "status": "pending",
        "assigned_engine": None, "output_url": None, "progress": None, "retries": 0,
        "max_retries": 3, "error_message": None, "retry_at": None, "created_at": START,
        "updated_at": START, "assigned_at": None, "completed_at": None, "attempt": 0,
        "callback_url": None, "waiting_reason": NO_ENGINE, "webhook": None,
        "progress_detail": None, "output": None, "chunk_seconds": None, "parent_id": None,
        "task": None, "chunks": None,
    }
    body.update(overrides)
    return body


def ok(response: TestResponse, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == "application/json"
    return response.get_json()


def assert_validation_error(response: TestResponse, field: str) -> None:
    """400 validation_error whose details name exactly ``field``, with messages."""
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    error = body["error"]
    assert {"error": {"code": "validation_error", "message": error["message"],
                      "details": {field: error["details"][field]}}} == body
    assert isinstance(error["message"], str) and error["message"]
    messages = error["details"][field]
    assert isinstance(messages, list) and messages
    assert all(isinstance(message, str) and message for message in messages)


# ----------------------------------------------------------------- fixtures

@pytest.fixture
def get(client: FlaskClient, auth: dict[str, str]) -> Callable[[str], dict[str, Any]]:
    """GET a path, expect 200, return the JSON."""
    return lambda path: ok(client.get(path, headers=auth))


@pytest.fixture
def total(get: Callable[[str], dict[str, Any]]) -> Callable[[], int]:
    """How many jobs the server holds."""
    return lambda: get("/jobs/")["total"]


@pytest.fixture
def assign(client: FlaskClient, auth: dict[str, str]) -> Callable[..., TestResponse]:
    """Ask for work for ``engine_id``; returns the response (200 or 204)."""
    return lambda engine_id, **body: client.post(
        "/assign_job/", json={"engine_id": engine_id, **body}, headers=auth)


@pytest.fixture
def job_in(client: FlaskClient, auth: dict[str, str], submit: Callable[..., dict[str, Any]],
           heartbeat: Callable[..., dict[str, Any]],
           assign: Callable[..., TestResponse]) -> Callable[..., dict[str, Any]]:
    """A job brought to ``status``; each on its own codec and, once assigned, its own
    engine (``engine-N``, which handles only that codec)."""
    numbers = count()

    def make(status: str, **fields: Any) -> dict[str, Any]:
        n = next(numbers)
        codec, engine = f"codec{n}", f"engine-{n}"
        if status == "failed":
            fields.setdefault("max_retries", 0)
        job = submit(**{"target_codec": codec, **fields})
        job_id = job["job_id"]
        if status == "pending":
            return job
        if status == "cancelled":
            return ok(client.delete(f"/jobs/{job_id}", headers=auth))
        heartbeat(engine, supported_codecs=[codec])
        job = ok(assign(engine))
        job.pop("output_upload")  # the engine's, beside the job as GET shows it
        assert job["job_id"] == job_id
        if status == "assigned":
            return job
        if status == "processing":
            return ok(client.post(f"/jobs/{job_id}/progress", json={"progress": 10},
                                  headers=auth))
        if status == "completed":
            return ok(client.post(f"/jobs/{job_id}/complete",
                                  json={"output_url": "http://example.com/out.mp4"},
                                  headers=auth))
        if status == "failed":
            job = ok(client.post(f"/jobs/{job_id}/fail", json={"error_message": "boom"},
                                 headers=auth))
            assert job["status"] == "failed"
            return job
        raise AssertionError(status)

    return make


REPORTS = {
    "progress": {"progress": 50},
    "complete": {"output_url": "http://example.com/out.mp4"},
    "fail": {"error_message": "encoder crashed"},
}


# ------------------------------------------------------------------- submit

def test_submit_returns_201_pending_job_with_every_key_and_location(
        client: FlaskClient, auth: dict[str, str]) -> None:
    """POST /jobs/: 201, the whole job object with defaults and nulls, Location header."""
    response = client.post("/jobs/", json=JOB, headers=auth)

    body = ok(response, 201)
    assert JOB_KEYS | EXTRA_KEYS == set(body)
    assert expected_job(body["job_id"]) == normalized(body)
    assert f"/jobs/{body['job_id']}" == response.headers["Location"]


def test_submit_job_id_is_microseconds_since_epoch_and_counter(
        submit: Callable[..., dict[str, Any]], clock: FakeClock) -> None:
    """job_id is ``{microseconds since epoch}_{counter}``, unique and sortable by creation."""
    first = submit()["job_id"]
    second = submit()["job_id"]
    clock.advance(1.5)
    third = submit()["job_id"]

    parts = [JOB_ID.match(job_id) for job_id in (first, second, third)]
    assert all(parts), (first, second, third)
    keys = [(int(m.group(1)), int(m.group(2))) for m in parts if m]
    assert [START_MICROS, START_MICROS, START_MICROS + 1_500_000] == [k[0] for k in keys]
    assert len({first, second, third}) == 3
    assert sorted(keys) == keys


def test_submit_keeps_given_priority_and_max_retries(submit: Callable[..., dict[str, Any]],
                                                     get: Callable[[str], dict[str, Any]]
                                                     ) -> None:
    """Optional fields are stored as submitted and the job reads back the same."""
    job = submit(priority=-7, max_retries=5)

    assert expected_job(job["job_id"], priority=-7, max_retries=5) == normalized(job)
    assert job == get(f"/jobs/{job['job_id']}")


@pytest.mark.parametrize(("field", "value"), [
    ("source_url", "file:///srv/media/input.mp4"),
    ("source_url", "https://example.com/" + "a" * (2048 - len("https://example.com/"))),
    ("source_url", "s3://bucket/key.mp4"),
    ("target_codec", "x"),
    ("target_codec", "c" * 64),
    ("job_size", 0),
    ("job_size", 12),
    ("job_size", 0.25),
    ("max_retries", 0),
    ("max_retries", 100),
    ("priority", -100),
    ("priority", 100),
])
def test_submit_accepts_boundary_values(client: FlaskClient, auth: dict[str, str],
                                        field: str, value: Any) -> None:
    """Values at the edges of each validation rule are accepted and echoed."""
    body = ok(client.post("/jobs/", json={**JOB, field: value}, headers=auth), 201)

    assert value == body[field]


INVALID_SUBMISSIONS = [
    pytest.param({"source_url": None}, "source_url", id="source_url-missing"),
    pytest.param({"target_codec": None}, "target_codec", id="target_codec-missing"),
    pytest.param({"job_size": None}, "job_size", id="job_size-missing"),
    pytest.param({"source_url": "not a url"}, "source_url", id="url-no-scheme-space"),
    pytest.param({"source_url": "example.com/input.mp4"}, "source_url", id="url-no-scheme"),
    pytest.param({"source_url": "/srv/media/input.mp4"}, "source_url", id="url-relative"),
    pytest.param({"source_url": "http://"}, "source_url", id="url-no-host"),
    pytest.param({"source_url": ""}, "source_url", id="url-empty"),
    pytest.param({"source_url": 42}, "source_url", id="url-not-string"),
    pytest.param({"source_url": "https://example.com/" + "a" * (2049 - 20)}, "source_url",
                 id="url-2049-chars"),
    pytest.param({"target_codec": ""}, "target_codec", id="codec-empty"),
    pytest.param({"target_codec": "c" * 65}, "target_codec", id="codec-65-chars"),
    pytest.param({"target_codec": 264}, "target_codec", id="codec-not-string"),
    pytest.param({"job_size": -1}, "job_size", id="size-negative"),
    pytest.param({"job_size": -0.001}, "job_size", id="size-slightly-negative"),
    pytest.param({"job_size": True}, "job_size", id="size-true"),
    pytest.param({"job_size": False}, "job_size", id="size-false"),
    pytest.param({"job_size": "100"}, "job_size", id="size-string"),
    pytest.param({"job_size": "NaN"}, "job_size", id="size-nan-string"),
    pytest.param({"job_size": "Infinity"}, "job_size", id="size-infinity-string"),
    pytest.param({"job_size": [1]}, "job_size", id="size-list"),
    pytest.param({"max_retries": 101}, "max_retries", id="max_retries-101"),
    pytest.param({"max_retries": -1}, "max_retries", id="max_retries-negative"),
    pytest.param({"max_retries": 1.5}, "max_retries", id="max_retries-fraction"),
    pytest.param({"max_retries": True}, "max_retries", id="max_retries-true"),
    pytest.param({"max_retries": "3"}, "max_retries", id="max_retries-string"),
    pytest.param({"priority": 101}, "priority", id="priority-101"),
    pytest.param({"priority": -101}, "priority", id="priority-minus-101"),
    pytest.param({"priority": 2.5}, "priority", id="priority-fraction"),
    pytest.param({"priority": True}, "priority", id="priority-true"),
    pytest.param({"max_retires": 5}, "max_retires", id="unknown-field-typo"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_SUBMISSIONS)
def test_submit_invalid_is_400_validation_error_naming_field_and_creates_nothing(
        client: FlaskClient, auth: dict[str, str], total: Callable[[], int],
        change: dict[str, Any], field: str) -> None:
    """Each submit validation rule: 400 validation_error, details name the field, no job."""
    body = {**JOB, **change}
    body = {key: value for key, value in body.items() if value is not None}

    response = client.post("/jobs/", json=body, headers=auth)

    assert_validation_error(response, field)
    assert 0 == total()


def test_submit_empty_object_names_every_required_field(client: FlaskClient,
                                                        auth: dict[str, str]) -> None:
    """An empty submission lists all three required fields in details."""
    response = client.post("/jobs/", json={}, headers=auth)

    assert 400 == response.status_code
    error = response.get_json()["error"]
    assert "validation_error" == error["code"]
    assert {"source_url", "target_codec", "job_size"} == set(error["details"])


@pytest.fixture
def small_queue(make_app: Callable[..., Flask],
                make_settings: Callable[..., Any]) -> FlaskClient:
    """A client of an app whose queue holds at most 2 pending jobs."""
    return make_app(make_settings(job_queue_max_size=2)).test_client()


def test_submit_503_queue_full_with_retry_after_when_pending_reaches_queue_size(
        small_queue: FlaskClient, auth: dict[str, str]) -> None:
    """pending ≥ job_queue_max_size: 503 queue_full with Retry-After, nothing created."""
    for _ in range(2):
        ok(small_queue.post("/jobs/", json=JOB, headers=auth), 201)

    response = small_queue.post("/jobs/", json=JOB, headers=auth)

    assert_error(response, 503, "queue_full")
    assert int(response.headers["Retry-After"]) >= 0
    assert 2 == ok(small_queue.get("/jobs/", headers=auth))["total"]


def test_submit_queue_limit_counts_only_pending_jobs(small_queue: FlaskClient,
                                                     auth: dict[str, str]) -> None:
    """Once a pending job is assigned, the full queue accepts a submission again."""
    for _ in range(2):
        ok(small_queue.post("/jobs/", json=JOB, headers=auth), 201)
    assert 503 == small_queue.post("/jobs/", json=JOB, headers=auth).status_code
    ok(small_queue.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth))
    ok(small_queue.post("/assign_job/", json={"engine_id": "e1"}, headers=auth))

    ok(small_queue.post("/jobs/", json=JOB, headers=auth), 201)


# ---------------------------------------------------------------------- get

def test_get_job_returns_the_job(submit: Callable[..., dict[str, Any]],
                                 get: Callable[[str], dict[str, Any]]) -> None:
    """GET /jobs/{id}: 200 with the job as submitted."""
    job = submit()

    assert job == get(f"/jobs/{job['job_id']}")


def test_get_unknown_job_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    """GET /jobs/{id} for an id never issued: 404 not_found."""
    assert_error(client.get("/jobs/1704067200000000_99", headers=auth), 404, "not_found")


# --------------------------------------------------------------------- list

def test_list_empty_has_defaults_limit_50_offset_0(get: Callable[[str], dict[str, Any]]
                                                   ) -> None:
    """GET /jobs/ with no jobs and no query: empty page, limit 50, offset 0."""
    assert {"jobs": [], "total": 0, "limit": 50, "offset": 0} == get("/jobs/")


def test_list_is_oldest_first_whatever_priority(submit: Callable[..., dict[str, Any]],
                                                clock: FakeClock,
                                                get: Callable[[str], dict[str, Any]]) -> None:
    """Listing order is creation order, not serving order."""
    jobs = []
    for priority in (0, 50, -5, 100):
        jobs.append(submit(priority=priority))
        clock.advance(1)

    assert {"jobs": jobs, "total": 4, "limit": 50, "offset": 0} == get("/jobs/")


def test_list_pages_with_limit_and_offset_and_total_counts_all(
        submit: Callable[..., dict[str, Any]], get: Callable[[str], dict[str, Any]]) -> None:
    """limit/offset cut a page; total counts every match, not the page."""
    jobs = [submit() for _ in range(5)]

    assert {"jobs": jobs[1:3], "total": 5, "limit": 2, "offset": 1} == get(
        "/jobs/?limit=2&offset=1")
    assert {"jobs": jobs[4:], "total": 5, "limit": 2, "offset": 4} == get(
        "/jobs/?limit=2&offset=4")
    assert {"jobs": [], "total": 5, "limit": 10, "offset": 9} == get(
        "/jobs/?limit=10&offset=9")


def test_list_default_limit_is_50(submit: Callable[..., dict[str, Any]],
                                  get: Callable[[str], dict[str, Any]]) -> None:
    """Without limit, at most 50 jobs come back; total still counts all 51."""
    ids = [submit()["job_id"] for _ in range(51)]

    page = get("/jobs/")
    assert (ids[:50], 51, 50, 0) == (
        [job["job_id"] for job in page["jobs"]], page["total"], page["limit"], page["offset"])
    rest = get("/jobs/?offset=50")
    assert ids[50:] == [job["job_id"] for job in rest["jobs"]]


def test_list_filters_by_status(job_in: Callable[..., dict[str, Any]],
                                get: Callable[[str], dict[str, Any]]) -> None:
    """status= keeps only jobs in that status (oldest first); total counts the matches."""
    statuses = ["pending", "cancelled", "assigned", "cancelled", "completed", "pending"]
    made = [job_in(status) for status in statuses]
    current = {job["job_id"]: job for job in get("/jobs/?limit=1000")["jobs"]}

    for status in ("pending", "assigned", "processing", "completed", "failed", "cancelled"):
        matches = [current[job["job_id"]] for job in made if job["status"] == status]
        assert {"jobs": matches, "total": len(matches), "limit": 50, "offset": 0} == get(
            f"/jobs/?status={status}"), status
    assert {"jobs": [current[made[3]["job_id"]]], "total": 2, "limit": 1, "offset": 1} == get(
        "/jobs/?status=cancelled&limit=1&offset=1")


@pytest.mark.parametrize("query", ["limit=1", "limit=1000", "offset=0"])
def test_list_accepts_limit_and_offset_at_their_bounds(client: FlaskClient,
                                                       auth: dict[str, str], query: str) -> None:
    """limit 1 and 1000 and offset 0 are within range."""
    ok(client.get(f"/jobs/?{query}", headers=auth))


@pytest.mark.parametrize(("query", "field"), [
    ("status=running", "status"),
    ("status=", "status"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=-1", "limit"),
    ("limit=ten", "limit"),
    ("offset=-1", "offset"),
    ("offset=one", "offset"),
])
def test_list_bad_query_is_400(client: FlaskClient, auth: dict[str, str], query: str,
                               field: str) -> None:
    """Unknown status, limit outside 1–1000, negative (or non-numeric) offset: 400."""
    assert_validation_error(client.get(f"/jobs/?{query}", headers=auth), field)


# ------------------------------------------------ progress / complete / fail

def test_progress_makes_job_processing(job_in: Callable[..., dict[str, Any]],
                                       client: FlaskClient, auth: dict[str, str],
                                       clock: FakeClock) -> None:
    """POST /jobs/{id}/progress: 200, status processing, progress stored."""
    job = job_in("assigned")
    clock.advance(3)

    body = ok(client.post(f"/jobs/{job['job_id']}/progress", json={"progress": 42.5},
                          headers=auth))

    assert {**normalized(job), "status": "processing", "progress": 42.5,
            "updated_at": START + 3} == normalized(body)


def test_progress_can_be_reported_again_while_processing(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient,
        auth: dict[str, str]) -> None:
    """A processing job takes further progress reports, from its holder too."""
    job = job_in("processing")

    body = ok(client.post(f"/jobs/{job['job_id']}/progress",
                          json={"progress": 100, "engine_id": job["assigned_engine"]},
                          headers=auth))

    assert ("processing", 100) == (body["status"], body["progress"])


def test_progress_figures_are_the_jobs_progress_detail(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient, auth: dict[str, str],
        clock: FakeClock, get: Callable[[str], dict[str, Any]]) -> None:
    """fps, speed and eta_seconds sent with progress show as progress_detail with the
    time of the report; a report without them keeps them; a requeue clears them."""
    job = job_in("assigned")
    assert job["progress_detail"] is None
    clock.advance(2)

    body = ok(client.post(f"/jobs/{job['job_id']}/progress", headers=auth, json={
        "progress": 10, "fps": 61.5, "speed": 2.46, "eta_seconds": 12}))
    clock.advance(1)
    again = ok(client.post(f"/jobs/{job['job_id']}/progress", headers=auth,
                           json={"progress": 20, "speed": 0}))
    clock.advance(1)
    kept = ok(client.post(f"/jobs/{job['job_id']}/progress", headers=auth,
                          json={"progress": 30}))

    assert {"fps": 61.5, "speed": 2.46, "eta_seconds": 12,
            "updated_at": START + 2} == {**body["progress_detail"], "updated_at": parse_time(
                body["progress_detail"]["updated_at"])}
    assert {"fps": None, "speed": 0, "eta_seconds": None, "updated_at": START + 3} == {
        **again["progress_detail"], "updated_at": parse_time(
            again["progress_detail"]["updated_at"])}
    assert again["progress_detail"] == kept["progress_detail"]
    assert kept == get(f"/jobs/{job['job_id']}")
    requeued = ok(client.post(f"/jobs/{job['job_id']}/fail", headers=auth,
                              json={"error_message": "boom"}))
    assert ("pending", None) == (requeued["status"], requeued["progress_detail"])


@pytest.mark.parametrize("field,value", [("fps", -1), ("speed", "2x"), ("eta_seconds", True),
                                         ("speed", None)])
def test_progress_figures_are_numbers_from_0(job_in: Callable[..., dict[str, Any]],
                                             client: FlaskClient, auth: dict[str, str],
                                             get: Callable[[str], dict[str, Any]],
                                             field: str, value: Any) -> None:
    """fps, speed and eta_seconds are numbers ≥ 0; anything else is a 400 naming the
    field, the job unchanged."""
    job = job_in("assigned")

    response = client.post(f"/jobs/{job['job_id']}/progress", headers=auth,
                           json={"progress": 5, field: value})

    assert_validation_error(response, field)
    assert job == get(f"/jobs/{job['job_id']}")


@pytest.mark.parametrize("progress", [-1, 100.5, "50", True, None])
def test_progress_outside_0_to_100_is_400(job_in: Callable[..., dict[str, Any]],
                                          client: FlaskClient, auth: dict[str, str],
                                          get: Callable[[str], dict[str, Any]],
                                          progress: Any) -> None:
    """progress is a number 0–100; anything else is a validation error, job unchanged."""
    job = job_in("assigned")
    body = {} if progress is None else {"progress": progress}

    response = client.post(f"/jobs/{job['job_id']}/progress", json=body, headers=auth)

    assert_validation_error(response, "progress")
    assert job == get(f"/jobs/{job['job_id']}")


def test_complete_marks_completed_and_frees_engine(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient, auth: dict[str, str],
        clock: FakeClock, get: Callable[[str], dict[str, Any]]) -> None:
    """POST /jobs/{id}/complete: completed with output_url, engine idle and jobs_completed+1."""
    job = job_in("processing")
    engine_id = job["assigned_engine"]
    before = get(f"/engines/{engine_id}")
    assert ("busy", [job["job_id"]]) == (before["status"], before["current_jobs"])
    clock.advance(60)

    body = ok(client.post(f"/jobs/{job['job_id']}/complete",
                          json={"output_url": "s3://out/x.mp4"}, headers=auth))

    assert "completed" == body["status"]
    assert "s3://out/x.mp4" == body["output_url"]
    assert START + 60 == parse_time(body["completed_at"])
    assert START + 60 == parse_time(body["updated_at"])
    assert body == get(f"/jobs/{job['job_id']}")
    after = get(f"/engines/{engine_id}")
    assert ("idle", [], before["jobs_completed"] + 1) == (
        after["status"], after["current_jobs"], after["jobs_completed"])


@pytest.mark.parametrize("action", sorted(REPORTS))
@pytest.mark.parametrize("status", ["assigned", "processing"])
def test_reports_accepted_from_assigned_and_processing(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient, auth: dict[str, str],
        action: str, status: str) -> None:
    """progress, complete and fail are allowed while the job is assigned or processing,
    with or without the holder's engine_id."""
    job = job_in(status)
    body = {**REPORTS[action], "engine_id": job["assigned_engine"]}

    ok(client.post(f"/jobs/{job['job_id']}/{action}", json=body, headers=auth))


@pytest.mark.parametrize("action", sorted(REPORTS))
def test_reports_on_unknown_job_are_404(client: FlaskClient, auth: dict[str, str],
                                        action: str) -> None:
    """progress, complete, fail on an unknown job: 404 not_found."""
    response = client.post(f"/jobs/1704067200000000_7/{action}", json=REPORTS[action],
                           headers=auth)

    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("action", sorted(REPORTS))
@pytest.mark.parametrize("status", ["pending", "completed", "failed", "cancelled"])
def test_reports_are_409_unless_assigned_or_processing(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient, auth: dict[str, str],
        get: Callable[[str], dict[str, Any]], action: str, status: str) -> None:
    """progress, complete, fail on a job not assigned/processing: 409 conflict, unchanged."""
    job = job_in(status)

    response = client.post(f"/jobs/{job['job_id']}/{action}", json=REPORTS[action],
                           headers=auth)

    assert_error(response, 409, "conflict")
    assert job == get(f"/jobs/{job['job_id']}")


@pytest.mark.parametrize("action", sorted(REPORTS))
@pytest.mark.parametrize("other", ["engine-other", "never-seen-engine"])
def test_reports_from_an_engine_not_holding_the_job_are_409(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient, auth: dict[str, str],
        heartbeat: Callable[..., dict[str, Any]], get: Callable[[str], dict[str, Any]],
        action: str, other: str) -> None:
    """engine_id given and not the holder (registered or not): 409, job and engine unchanged."""
    job = job_in("processing")
    heartbeat("engine-other")
    holder = get(f"/engines/{job['assigned_engine']}")

    response = client.post(f"/jobs/{job['job_id']}/{action}",
                           json={**REPORTS[action], "engine_id": other}, headers=auth)

    assert_error(response, 409, "conflict")
    assert job == get(f"/jobs/{job['job_id']}")
    assert holder == get(f"/engines/{job['assigned_engine']}")


def test_fail_requeues_with_exponential_backoff_then_fails(
        submit: Callable[..., dict[str, Any]], heartbeat: Callable[..., dict[str, Any]],
        assign: Callable[..., TestResponse], client: FlaskClient, auth: dict[str, str],
        clock: FakeClock, get: Callable[[str], dict[str, Any]]) -> None:
    """While retries < max_retries a failure re-queues (retries+1, retry_at = now +
    5·2^(retries-1)); the failure after that is final: failed, engine freed each time."""
    job_id = submit(max_retries=3)["job_id"]
    heartbeat("e1")
    for retries, delay in ((1, 5), (2, 10), (3, 20)):
        assert job_id == ok(assign("e1"))["job_id"]
        clock.advance(7)
        now = clock()

        body = ok(client.post(f"/jobs/{job_id}/fail", json={"error_message": f"try {retries}"},
                              headers=auth))

        assert {"status": "pending", "retries": retries, "retry_at": now + delay,
                "error_message": f"try {retries}", "assigned_engine": None,
                "updated_at": now} == {key: normalized(body)[key] for key in (
                    "status", "retries", "retry_at", "error_message", "assigned_engine",
                    "updated_at")}
        engine = get("/engines/e1")
        assert ("idle", []) == (engine["status"], engine["current_jobs"])
        clock.advance(delay)

    assert job_id == ok(assign("e1"))["job_id"]
    body = ok(client.post(f"/jobs/{job_id}/fail", json={"error_message": "last"},
                          headers=auth))

    assert ("failed", 4, "last", None, None) == (
        body["status"], body["retries"], body["error_message"], body["assigned_engine"],
        body["retry_at"])
    engine = get("/engines/e1")
    assert ("idle", []) == (engine["status"], engine["current_jobs"])
    assert 204 == assign("e1").status_code


def test_fail_backoff_is_capped_at_300_seconds(
        submit: Callable[..., dict[str, Any]], heartbeat: Callable[..., dict[str, Any]],
        assign: Callable[..., TestResponse], client: FlaskClient, auth: dict[str, str],
        clock: FakeClock) -> None:
    """retry_at = now + min(5·2^(retries-1), 300): 5, 10, 20, 40, 80, 160, then 300."""
    job_id = submit(max_retries=10)["job_id"]
    heartbeat("e1")
    delays = []
    for _ in range(8):
        assert job_id == ok(assign("e1"))["job_id"]
        now = clock()
        body = ok(client.post(f"/jobs/{job_id}/fail", json={"error_message": "x"},
                              headers=auth))
        delay = parse_time(body["retry_at"]) - now
        delays.append(delay)
        clock.advance(delay)

    assert [5, 10, 20, 40, 80, 160, 300, 300] == delays


def test_fail_with_max_retries_zero_is_final_at_once(
        job_in: Callable[..., dict[str, Any]], client: FlaskClient, auth: dict[str, str],
        clock: FakeClock) -> None:
    """max_retries 0: the first failure is final (failed, retries 1, no retry_at)."""
    job = job_in("assigned", max_retries=0)
    clock.advance(2)

    body = ok(client.post(f"/jobs/{job['job_id']}/fail", json={"error_message": "bad input"},
                          headers=auth))

    assert {**normalized(job), "status": "failed", "retries": 1, "error_message": "bad input",
            "assigned_engine": None, "progress": None, "updated_at": START + 2,
            "completed_at": START + 2} == normalized(body)


def test_job_in_backoff_is_not_assigned_before_retry_at(
        submit: Callable[..., dict[str, Any]], heartbeat: Callable[..., dict[str, Any]],
        assign: Callable[..., TestResponse], client: FlaskClient, auth: dict[str, str],
        clock: FakeClock) -> None:
    """A re-queued job waits for retry_at: assign answers 204 before it, the job after."""
    job_id = submit()["job_id"]
    heartbeat("e1")
    ok(assign("e1"))
    body = ok(client.post(f"/jobs/{job_id}/fail", json={"error_message": "x"}, headers=auth))
    assert START + 5 == parse_time(body["retry_at"])

    first = assign("e1")
    assert (204, b"") == (first.status_code, first.get_data())
    clock.advance(4.9)
    assert 204 == assign("e1").status_code
    clock.advance(0.1)

    job = ok(assign("e1"))
    assert (job_id, "assigned", "e1", 1) == (
        job["job_id"], job["status"], job["assigned_engine"], job["retries"])


def test_job_in_backoff_does_not_block_other_jobs(
        submit: Callable[..., dict[str, Any]], heartbeat: Callable[..., dict[str, Any]],
        assign: Callable[..., TestResponse], client: FlaskClient, auth: dict[str, str]) -> None:
    """While one job waits for its retry_at, another pending job is assigned."""
    waiting = submit(priority=10)["job_id"]
    other = submit()["job_id"]
    heartbeat("e1")
    assert waiting == ok(assign("e1"))["job_id"]
    ok(client.post(f"/jobs/{waiting}/fail", json={"error_message": "x"}, headers=auth))

    assert other == ok(assign("e1"))["job_id"]


# ------------------------------------------------------------- re-delivery

def test_assign_redelivers_the_job_an_engine_already_holds(
        submit: Callable[..., dict[str, Any]], heartbeat: Callable[..., dict[str, Any]],
        assign: Callable[..., TestResponse], client: FlaskClient, auth: dict[str, str]) -> None:
    """An engine asking again while holding an unfinished job gets that same job."""
    first = submit()["job_id"]
    submit()
    heartbeat("e1")
    assert first == ok(assign("e1"))["job_id"]
    assert first == ok(assign("e1"))["job_id"]
    ok(client.post(f"/jobs/{first}/progress", json={"progress": 5}, headers=auth))

    again = ok(assign("e1"))

    assert (first, "processing", "e1") == (
        again["job_id"], again["status"], again["assigned_engine"])


# ------------------------------------------------------------------ cancel

@pytest.mark.parametrize("status", ["pending", "assigned", "processing"])
def test_cancel_unfinished_job(job_in: Callable[..., dict[str, Any]], client: FlaskClient,
                               auth: dict[str, str], clock: FakeClock,
                               get: Callable[[str], dict[str, Any]],
                               assign: Callable[..., TestResponse], status: str) -> None:
    """DELETE /jobs/{id}: 200 cancelled; the engine holding it is freed; it is not served."""
    job = job_in(status)
    engine_id = job["assigned_engine"]
    clock.advance(9)

    body = ok(client.delete(f"/jobs/{job['job_id']}", headers=auth))

    assert ("cancelled", START + 9) == (body["status"], parse_time(body["updated_at"]))
    assert body == get(f"/jobs/{job['job_id']}")
    if engine_id is not None:
        engine = get(f"/engines/{engine_id}")
        assert ("idle", []) == (engine["status"], engine["current_jobs"])
        assert 204 == assign(engine_id).status_code


def test_cancel_pending_job_whole_body(submit: Callable[..., dict[str, Any]],
                                       client: FlaskClient, auth: dict[str, str],
                                       clock: FakeClock) -> None:
    """A cancelled pending job keeps every other field."""
    job = submit()
    clock.advance(1)

    body = ok(client.delete(f"/jobs/{job['job_id']}", headers=auth))

    actual = normalized(body)
    del actual["completed_at"]  # the contract leaves it open for a cancelled job
    expected = normalized(job) | {"status": "cancelled", "updated_at": START + 1,
                                  "waiting_reason": None}
    del expected["completed_at"]
    assert expected == actual


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancel_finished_job_is_409(job_in: Callable[..., dict[str, Any]],
                                    client: FlaskClient, auth: dict[str, str],
                                    get: Callable[[str], dict[str, Any]], status: str) -> None:
    """DELETE on a completed, failed or cancelled job: 409 conflict, job unchanged."""
    job = job_in(status)

    assert_error(client.delete(f"/jobs/{job['job_id']}", headers=auth), 409, "conflict")
    assert job == get(f"/jobs/{job['job_id']}")


def test_cancel_unknown_job_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    """DELETE /jobs/{id} for an unknown id: 404 not_found."""
    assert_error(client.delete("/jobs/nope_0", headers=auth), 404, "not_found")


# ------------------------------------------------------------------- retry

@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_retry_sends_job_back_to_pending(job_in: Callable[..., dict[str, Any]],
                                         client: FlaskClient, auth: dict[str, str],
                                         heartbeat: Callable[..., dict[str, Any]],
                                         assign: Callable[..., TestResponse],
                                         get: Callable[[str], dict[str, Any]],
                                         status: str) -> None:
    """POST /jobs/{id}/retry: 200 pending with retries 0, served again at once."""
    job = job_in(status)

    body = ok(client.post(f"/jobs/{job['job_id']}/retry", headers=auth))

    assert ("pending", 0, None, None) == (
        body["status"], body["retries"], body["assigned_engine"], body["retry_at"])
    assert body == get(f"/jobs/{job['job_id']}")
    heartbeat("fresh", supported_codecs=[job["target_codec"]])
    assert job["job_id"] == ok(assign("fresh"))["job_id"]


@pytest.mark.parametrize("status", ["pending", "assigned", "processing", "completed"])
def test_retry_is_409_unless_failed_or_cancelled(job_in: Callable[..., dict[str, Any]],
                                                 client: FlaskClient, auth: dict[str, str],
                                                 get: Callable[[str], dict[str, Any]],
                                                 status: str) -> None:
    """retry on a job neither failed nor cancelled: 409 conflict, job unchanged."""
    job = job_in(status)

    assert_error(client.post(f"/jobs/{job['job_id']}/retry", headers=auth), 409, "conflict")
    assert job == get(f"/jobs/{job['job_id']}")


def test_retry_unknown_job_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    """POST /jobs/{id}/retry for an unknown id: 404 not_found."""
    assert_error(client.post("/jobs/nope_0/retry", headers=auth), 404, "not_found")
