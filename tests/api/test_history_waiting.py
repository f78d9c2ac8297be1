"""Issue #8: a job's history (``GET /jobs/{id}/events``), one event per transition,
bounded and durable; and ``waiting_reason``, why a pending job is not running yet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dispatch.config.settings import Settings
from dispatch.http.schemas import JobEventsSchema
from tests.conftest import API_KEY, BOTH_BACKENDS, JOB, START, FakeClock

pytestmark = BOTH_BACKENDS

OUTPUT = "http://example.com/out.mp4"


# ------------------------------------------------------------------ helpers

def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_json()


def seconds(text: str) -> float:
    """An RFC 3339 UTC time ending in Z, as epoch seconds."""
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def event(at: float, name: str, engine: str | None = None, attempt: int = 0,
          detail: str | None = None) -> dict[str, Any]:
    """An expected event, its time as seconds after START."""
    return {"time": START + at, "event": name, "engine_id": engine, "attempt": attempt,
            "detail": detail}


class Farm:
    """One app's API as the tests drive it: a client, engines and jobs."""

    def __init__(self, client: FlaskClient, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock
        self.headers = {"X-API-Key": API_KEY}

    def post(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        return ok(self.client.post(path, json=body or {}, headers=self.headers), status)

    def submit(self, **fields: Any) -> str:
        return self.post("/jobs/", {**JOB, **fields}, 201)["job_id"]

    def engine(self, engine_id: str = "e1", **fields: Any) -> None:
        fields.setdefault("supported_codecs", ["h264"])
        self.post("/engines/heartbeat", {"engine_id": engine_id, **fields})

    def assign(self, engine_id: str = "e1") -> dict[str, Any]:
        return self.post("/assign_job/", {"engine_id": engine_id})

    def progress(self, job_id: str, value: float) -> dict[str, Any]:
        return self.post(f"/jobs/{job_id}/progress", {"progress": value})

    def complete(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/jobs/{job_id}/complete", {"output_url": OUTPUT})

    def fail(self, job_id: str, message: str) -> dict[str, Any]:
        return self.post(f"/jobs/{job_id}/fail", {"error_message": message})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return ok(self.client.delete(f"/jobs/{job_id}", headers=self.headers))

    def retry(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/jobs/{job_id}/retry")

    def job(self, job_id: str) -> dict[str, Any]:
        return ok(self.client.get(f"/jobs/{job_id}", headers=self.headers))

    def reason(self, job_id: str) -> dict[str, Any] | None:
        return self.job(job_id)["waiting_reason"]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events (checked against the response schema), times as seconds."""
        body = ok(self.client.get(f"/jobs/{job_id}/events", headers=self.headers))
        assert {} == JobEventsSchema().validate(body)
        assert job_id == body["job_id"] and ["job_id", "events"] == list(body)
        return [{**item, "time": seconds(item["time"])} for item in body["events"]]

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)


@pytest.fixture
def farm(client: FlaskClient, clock: FakeClock) -> Farm:
    return Farm(client, clock)


@pytest.fixture
def farm_with(make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
              clock: FakeClock) -> Callable[..., tuple[Flask, Farm]]:
    """An app on settings with ``overrides``, and its Farm."""

    def make(**overrides: Any) -> tuple[Flask, Farm]:
        app = make_app(make_settings(**overrides))
        return app, Farm(app.test_client(), clock)

    return make


# ------------------------------------------------------------------ events

def test_a_new_job_has_its_submitted_event(client: FlaskClient, auth: dict[str, str],
                                           farm: Farm) -> None:
    """GET /jobs/{id}/events: the whole body for a fresh job, one ``submitted`` event."""
    job_id = farm.submit()

    body = ok(client.get(f"/jobs/{job_id}/events", headers=auth))

    stamp = body["events"][0]["time"]
    assert {"job_id": job_id, "events": [
        {"time": stamp, "event": "submitted", "engine_id": None, "attempt": 0,
         "detail": None}]} == body
    assert START == seconds(stamp)


def test_events_of_unknown_job_are_404(client: FlaskClient, auth: dict[str, str]) -> None:
    """An unknown job id: 404 not_found in the contract's shape."""
    response = client.get("/jobs/1_0/events", headers=auth)

    assert 404 == response.status_code
    assert "not_found" == response.get_json()["error"]["code"]
    assert {"error"} == set(response.get_json())


def test_a_completed_job_tells_its_story_oldest_first(farm: Farm) -> None:
    """submitted, assigned, processing, one ``progress`` per milestone (25/50/75) crossed,
    completed (with the output URL): each with its time, engine and attempt."""
    farm.engine("e1")
    job_id = farm.submit()
    for step in (lambda: farm.assign("e1"), lambda: farm.progress(job_id, 10),
                 lambda: farm.progress(job_id, 20), lambda: farm.progress(job_id, 30),
                 lambda: farm.progress(job_id, 40), lambda: farm.progress(job_id, 55),
                 lambda: farm.progress(job_id, 80), lambda: farm.progress(job_id, 95),
                 lambda: farm.complete(job_id)):
        farm.tick()
        step()

    assert [
        event(0, "submitted"),
        event(1, "assigned", "e1", 1),
        event(2, "processing", "e1", 1),
        event(4, "progress", "e1", 1, "30%"),
        event(6, "progress", "e1", 1, "55%"),
        event(7, "progress", "e1", 1, "80%"),
        event(9, "completed", "e1", 1, OUTPUT),
    ] == farm.events(job_id)


def test_failed_attempts_requeue_then_fail_the_job(farm: Farm) -> None:
    """A failed attempt with retries left: ``failed_attempt`` (the engine's reason) and
    ``requeued`` (retry n of m after retry_at); the last one: ``failed_attempt`` and
    ``failed``."""
    farm.engine("e1")
    job_id = farm.submit(max_retries=1)
    farm.tick()
    farm.assign("e1")
    farm.tick()
    requeued = farm.fail(job_id, "encoder crashed")
    farm.tick(10)
    farm.assign("e1")
    farm.tick()
    failed = farm.fail(job_id, "out of memory")

    assert ("pending", "failed") == (requeued["status"], failed["status"])
    assert [
        event(0, "submitted"),
        event(1, "assigned", "e1", 1),
        event(2, "failed_attempt", "e1", 1, "encoder crashed"),
        event(2, "requeued", None, 1, f"retry 1 of 1 after {requeued['retry_at']}"),
        event(12, "assigned", "e1", 2),
        event(13, "failed_attempt", "e1", 2, "out of memory"),
        event(13, "failed", None, 2, "no retries left"),
    ] == farm.events(job_id)


def test_a_lost_engine_is_an_event(farm_with: Callable[..., tuple[Flask, Farm]]) -> None:
    """The liveness sweep fails the job of a silent engine: ``engine_lost`` with the
    job's error message, then ``requeued``."""
    app, farm = farm_with(engine_heartbeat_timeout=10)
    farm.engine("e1")
    job_id = farm.submit()
    farm.assign("e1")
    farm.tick(11)

    assert 1 == app.extensions["dispatch"].maintenance.sweep()

    job = farm.job(job_id)
    assert "pending" == job["status"] and "e1" in job["error_message"]
    assert [
        event(0, "submitted"),
        event(0, "assigned", "e1", 1),
        event(11, "engine_lost", "e1", 1, job["error_message"]),
        event(11, "requeued", None, 1, f"retry 1 of 3 after {job['retry_at']}"),
    ] == farm.events(job_id)


def test_a_stalled_job_is_an_event(farm_with: Callable[..., tuple[Flask, Farm]]) -> None:
    """A job whose progress has not moved for job_stall_timeout: ``stalled`` with the
    job's error message, then ``requeued``."""
    app, farm = farm_with(job_stall_timeout=30)
    farm.engine("e1")
    job_id = farm.submit()
    farm.assign("e1")
    farm.progress(job_id, 10)
    farm.tick(20)
    farm.engine("e1")  # the engine is alive; only the job is stuck
    farm.tick(11)

    assert 1 == app.extensions["dispatch"].maintenance.sweep()

    job = farm.job(job_id)
    assert "pending" == job["status"] and job["error_message"].startswith("stalled")
    assert [
        event(0, "submitted"),
        event(0, "assigned", "e1", 1),
        event(0, "processing", "e1", 1),
        event(31, "stalled", "e1", 1, job["error_message"]),
        event(31, "requeued", None, 1, f"retry 1 of 3 after {job['retry_at']}"),
    ] == farm.events(job_id)


def test_an_engine_reason_that_reads_like_a_server_one_is_a_plain_failure(
        farm: Farm, app: Flask, make_app: Callable[..., Flask], settings: Settings,
        clock: FakeClock) -> None:
    """The kind of a failed attempt comes from who ended it, not from its text: an
    engine reporting "engine overheated" or "stalled: ..." is a ``failed_attempt``,
    also after a restart."""
    farm.engine("e1")
    job_id = farm.submit()
    farm.assign("e1")
    first = farm.fail(job_id, "engine overheated")
    farm.tick(10)  # past the backoff
    farm.assign("e1")
    second = farm.fail(job_id, "stalled: the source stopped sending")
    story = [
        ("submitted", 0, None),
        ("assigned", 1, None),
        ("failed_attempt", 1, "engine overheated"),
        ("requeued", 1, f"retry 1 of 3 after {first['retry_at']}"),
        ("assigned", 2, None),
        ("failed_attempt", 2, "stalled: the source stopped sending"),
        ("requeued", 2, f"retry 2 of 3 after {second['retry_at']}"),
    ]

    def told(farm: Farm) -> list[tuple[str, int, str | None]]:
        return [(e["event"], e["attempt"], e["detail"]) for e in farm.events(job_id)]

    assert story == told(farm)

    app.extensions["dispatch.runtime"].shutdown()
    assert story == told(Farm(make_app(settings).test_client(), clock))


def test_cancel_retry_and_release_are_events(farm: Farm, client: FlaskClient,
                                             auth: dict[str, str]) -> None:
    """Cancelling (a pending or a held job), retrying a cancelled job, and removing the
    engine that holds a job are each recorded."""
    farm.engine("e1")
    job_id = farm.submit()
    farm.tick()
    farm.cancel(job_id)
    farm.tick()
    farm.retry(job_id)
    farm.tick()
    farm.assign("e1")
    farm.tick()
    ok(client.delete("/engines/e1", headers=auth))
    farm.engine("e2")
    farm.tick()
    farm.assign("e2")
    farm.tick()
    farm.cancel(job_id)

    assert [
        event(0, "submitted"),
        event(1, "cancelled"),
        event(2, "retried"),
        event(3, "assigned", "e1", 1),
        event(4, "released", "e1", 1, "the engine was removed"),
        event(5, "assigned", "e2", 2),
        event(6, "cancelled", "e2", 2),
    ] == farm.events(job_id)


def test_history_is_bounded_to_the_first_and_latest_events(farm: Farm) -> None:
    """A job keeps at most 100 events: its first (``submitted``) and the latest 99,
    oldest first."""
    job_id = farm.submit()
    story = [event(0, "submitted")]
    for n in range(60):
        farm.tick()
        farm.cancel(job_id)
        story.append(event(2 * n + 1, "cancelled"))
        farm.tick()
        farm.retry(job_id)
        story.append(event(2 * n + 2, "retried"))

    events = farm.events(job_id)

    assert 100 == len(events)
    assert story[:1] + story[-99:] == events


def test_history_survives_a_restart(app: Flask, make_app: Callable[..., Flask],
                                    settings: Settings, farm: Farm, clock: FakeClock) -> None:
    """Events are durable: after a restart a job's history is unchanged, and new
    transitions are appended to it."""
    farm.engine("e1")
    job_id = farm.submit()
    farm.tick()
    farm.assign("e1")
    farm.tick()
    farm.progress(job_id, 30)
    before = farm.events(job_id)

    app.extensions["dispatch.runtime"].shutdown()
    farm = Farm(make_app(settings).test_client(), clock)

    assert before == farm.events(job_id)
    farm.tick()
    farm.complete(job_id)
    assert [*before, event(3, "completed", "e1", 1, OUTPUT)] == farm.events(job_id)


def test_every_job_of_a_batch_has_its_submitted_event(farm: Farm) -> None:
    """Jobs created by a batch record ``submitted`` like single submissions."""
    body = farm.post("/jobs/batch", {"jobs": [JOB, JOB]}, 201)

    for job in body["jobs"]:
        assert [event(0, "submitted")] == farm.events(job["job_id"])


def test_purged_job_takes_its_history_with_it(
        farm_with: Callable[..., tuple[Flask, Farm]]) -> None:
    """Once a finished job is purged (finished_job_retention) its events are gone: 404."""
    app, farm = farm_with(finished_job_retention=60)
    job_id = farm.submit()
    farm.cancel(job_id)
    farm.tick(61)

    assert 1 == app.extensions["dispatch"].maintenance.purge()

    response = farm.client.get(f"/jobs/{job_id}/events", headers=farm.headers)
    assert 404 == response.status_code


# ---------------------------------------------------------- waiting reasons

def reason(code: str, message: str, position: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "position": position}


NO_ENGINE = reason("no_engine_for_codec", "no active engine supports codec 'h264'")


def test_no_engine_for_codec(farm_with: Callable[..., tuple[Flask, Farm]]) -> None:
    """No engine at all, engines of other codecs only, or the only able engine gone
    offline: ``no_engine_for_codec``."""
    app, farm = farm_with(engine_heartbeat_timeout=10)
    job_id = farm.submit()
    assert NO_ENGINE == farm.reason(job_id)

    farm.engine("e-vp9", supported_codecs=["vp9"])
    assert NO_ENGINE == farm.reason(job_id)

    farm.engine("e-h264")
    assert "queued" == farm.reason(job_id)["code"]
    farm.tick(11)
    app.extensions["dispatch"].maintenance.sweep()
    assert NO_ENGINE == farm.reason(job_id)


def test_no_engine_with_room(farm: Farm) -> None:
    """Engines support the codec but none has storage for the job's size."""
    farm.engine("e1", storage_capacity_gb=0.05)  # 51.2 MB
    job_id = farm.submit(job_size=100.5)

    assert reason("no_engine_with_room",
                  "no active engine supporting 'h264' has storage for 100.5 MB") \
        == farm.reason(job_id)


def test_engines_draining(farm: Farm) -> None:
    """Every engine that could take the job is draining (operator drain or the engine's
    own): ``engines_draining``; one engine taking work again makes it ``queued``."""
    farm.engine("e1")
    farm.engine("e2", status="draining")
    farm.post("/engines/e1/drain")
    job_id = farm.submit()

    assert reason("engines_draining", "every engine that could take it is draining") \
        == farm.reason(job_id)

    farm.engine("e2", status="idle")
    assert "queued" == farm.reason(job_id)["code"]


def test_concurrency_limit(farm_with: Callable[..., tuple[Flask, Farm]]) -> None:
    """max_concurrent_jobs jobs are running: ``concurrency_limit`` even with an idle
    engine able to take it."""
    _, farm = farm_with(max_concurrent_jobs=1)
    farm.engine("e1")
    farm.engine("e2")
    running = farm.submit()
    farm.assign("e1")
    job_id = farm.submit()

    assert reason("concurrency_limit", "1 jobs are running, the limit "
                  "(max_concurrent_jobs); it starts when one finishes") == farm.reason(job_id)
    farm.complete(running)
    assert reason("queued", "number 1 in line for codec 'h264'", 1) == farm.reason(job_id)


def test_backoff(farm: Farm) -> None:
    """A job re-queued after a failed attempt waits in ``backoff`` until its retry_at,
    then is ``queued``."""
    farm.engine("e1")
    job_id = farm.submit()
    farm.assign("e1")
    job = farm.fail(job_id, "encoder crashed")

    assert reason("backoff", f"in backoff after a failed attempt until {job['retry_at']}") \
        == job["waiting_reason"] == farm.reason(job_id)
    farm.tick(seconds(job["retry_at"]) - START)
    assert reason("queued", "number 1 in line for codec 'h264'", 1) == farm.reason(job_id)


def test_queued_with_position_in_line_for_its_codec(farm: Farm, client: FlaskClient,
                                                    auth: dict[str, str]) -> None:
    """A job that can run is ``queued`` with its position: higher priority first, then
    older first, counted among jobs of its codec."""
    farm.engine("e1", supported_codecs=["h264", "vp9"])
    first = farm.submit()
    second = farm.submit()
    urgent = farm.submit(priority=5)
    other_codec = farm.submit(target_codec="vp9")

    assert {
        urgent: reason("queued", "number 1 in line for codec 'h264'", 1),
        first: reason("queued", "number 2 in line for codec 'h264'", 2),
        second: reason("queued", "number 3 in line for codec 'h264'", 3),
        other_codec: reason("queued", "number 1 in line for codec 'vp9'", 1),
    } == {job_id: farm.reason(job_id) for job_id in (urgent, first, second, other_codec)}
    listed = ok(client.get("/jobs/", headers=auth))["jobs"]
    assert [farm.job(job["job_id"]) for job in listed] == listed

    farm.assign("e1")
    assert reason("queued", "number 1 in line for codec 'h264'", 1) == farm.reason(first)


def test_position_counts_jobs_whose_backoff_has_ended(farm: Farm) -> None:
    """An older job back from backoff is ahead in line again as soon as its retry_at has
    passed (before any engine asks), so a younger job's position counts it."""
    farm.engine("e1")
    older = farm.submit()
    farm.assign("e1")
    retry_at = seconds(farm.fail(older, "encoder crashed")["retry_at"])
    younger = farm.submit()
    assert reason("queued", "number 1 in line for codec 'h264'", 1) == farm.reason(younger)

    farm.tick(retry_at - START + 1)

    assert reason("queued", "number 1 in line for codec 'h264'", 1) == farm.reason(older)
    assert reason("queued", "number 2 in line for codec 'h264'", 2) == farm.reason(younger)
    assert older == farm.assign("e1")["job_id"]


def test_only_pending_jobs_have_a_waiting_reason(farm: Farm) -> None:
    """Assigned, processing, completed and cancelled jobs: ``waiting_reason`` is null."""
    farm.engine("e1")
    job_id = farm.submit()
    assert farm.assign("e1")["waiting_reason"] is None
    assert farm.progress(job_id, 10)["waiting_reason"] is None
    assert farm.complete(job_id)["waiting_reason"] is None
    cancelled = farm.submit(target_codec="av1")
    assert farm.cancel(cancelled)["waiting_reason"] is None
    assert farm.job(job_id)["waiting_reason"] is None
