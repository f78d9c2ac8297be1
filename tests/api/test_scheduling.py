"""Scheduling rules beyond the basics, through the test client on a fake clock: retry
backoff from settings, stale reports, restart grace, drain, stall detection, the
heartbeat answer, the limits, retention purges, size-aware placement and aging
(contract §3-§4 and the rules in ``dispatch/domain/scheduler.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from dispatch.service import DispatchService
from tests.conftest import BOTH_BACKENDS, START, FakeClock
from tests.support.helpers import assert_error, epoch, norm

pytestmark = BOTH_BACKENDS

Json = dict[str, Any]

JOB_KEYS = {
    "job_id", "source_url", "target_codec", "job_size", "priority", "status",
    "assigned_engine", "output_url", "progress", "retries", "max_retries", "error_message",
    "retry_at", "created_at", "updated_at", "assigned_at", "completed_at", "attempt",
}
SMALL = 100.0  # MB
LARGE = 2048.0  # MB, above the default large_job_threshold_mb (1024)


def jv(body: Json) -> Json:
    """A job body as the contract's job object (every key present) plus its attempt,
    times as epoch seconds; keys other features add are left to their own tests."""
    assert JOB_KEYS <= set(body), JOB_KEYS - set(body)
    return norm({key: body[key] for key in JOB_KEYS})


class Api:
    """One app on the fake clock, spoken to through its test client."""

    def __init__(self, app: Flask, auth: dict[str, str]) -> None:
        self.app = app
        self.client = app.test_client()
        self.auth = auth

    @property
    def service(self) -> DispatchService:
        return self.app.extensions["dispatch"]

    def call(self, method: str, path: str, body: Json | None = None) -> TestResponse:
        return self.client.open(path, method=method, json=body, headers=self.auth)

    def ok(self, method: str, path: str, body: Json | None = None, status: int = 200) -> Json:
        response = self.call(method, path, body)
        assert status == response.status_code, response.get_data(as_text=True)
        assert "application/json" == response.mimetype
        return response.get_json()

    def heartbeat(self, engine_id: str, **fields: Any) -> Json:
        """The whole heartbeat answer, cancelled_jobs and draining included."""
        return self.ok("POST", "/engines/heartbeat", {"engine_id": engine_id, **fields})

    def submit(self, **fields: Any) -> Json:
        body = {"source_url": "http://example.com/in.mp4", "target_codec": "h264",
                "job_size": SMALL, **fields}
        return self.ok("POST", "/jobs/", body, 201)

    def assign(self, engine_id: str, **fields: Any) -> TestResponse:
        return self.call("POST", "/assign_job/", {"engine_id": engine_id, **fields})

    def assigned(self, engine_id: str, **fields: Any) -> Json:
        return self.ok("POST", "/assign_job/", {"engine_id": engine_id, **fields})

    def nothing_for(self, engine_id: str, **fields: Any) -> None:
        response = self.assign(engine_id, **fields)
        assert (204, b"") == (response.status_code, response.data), \
            response.get_data(as_text=True)

    def job(self, job_id: str) -> Json:
        return self.ok("GET", f"/jobs/{job_id}")

    def engine(self, engine_id: str) -> Json:
        return self.ok("GET", f"/engines/{engine_id}")

    def report(self, job_id: str, action: str, **body: Any) -> TestResponse:
        defaults = {"complete": {"output_url": "http://out.example.com/x.mp4"},
                    "fail": {"error_message": "encoder crashed"},
                    "progress": {"progress": 50}}[action]
        return self.call("POST", f"/jobs/{job_id}/{action}", {**defaults, **body})

    def reported(self, job_id: str, action: str, **body: Any) -> Json:
        response = self.report(job_id, action, **body)
        assert 200 == response.status_code, response.get_data(as_text=True)
        return response.get_json()

    def held(self, engine_id: str, **job: Any) -> Json:
        """Register ``engine_id`` (if needed), submit a job and have the engine take it."""
        self.heartbeat(engine_id)
        job_id = self.submit(**job)["job_id"]
        body = self.assigned(engine_id)
        assert job_id == body["job_id"]
        return body


def pick(body: Json, *keys: str) -> tuple[Any, ...]:
    """Some values of a body, in order, to compare as one tuple."""
    return tuple(body[key] for key in keys)


@pytest.fixture
def make_api(make_app: Callable[..., Flask], make_settings: Callable[..., Any],
             auth: dict[str, str]) -> Callable[..., Api]:
    """An Api on an app built with the given settings overrides."""

    def make(**overrides: Any) -> Api:
        return Api(make_app(make_settings(**overrides)), auth)

    return make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def restart(api: Api, make_app: Callable[..., Flask]) -> Api:
    """Shut the app down and build a new one on the same state file and clock."""
    api.app.extensions["dispatch.runtime"].shutdown()
    return Api(make_app(api.service.settings), api.auth)


# ------------------------------------------------------------ retry backoff


def test_backoff_uses_base_and_cap_from_settings(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """retry_at = now + min(base x 2^(retries-1), cap) with base 2 s and cap 7 s from
    the settings: 2, 4, 7, 7; the first failure's whole body."""
    api = make_api(retry_backoff_seconds=2, retry_backoff_max_seconds=7)
    job = api.held("e1", max_retries=10)
    clock.advance(3)
    body = api.reported(job["job_id"], "fail", error_message="boom")
    assert {**jv(job), "status": "pending", "assigned_engine": None, "retries": 1,
            "error_message": "boom", "retry_at": START + 5, "updated_at": START + 3} \
        == jv(body)

    delays = [epoch(body["retry_at"]) - clock()]
    for _ in range(3):
        clock.advance(delays[-1])
        assert job["job_id"] == api.assigned("e1")["job_id"]
        body = api.reported(job["job_id"], "fail")
        delays.append(epoch(body["retry_at"]) - clock())
    assert [2, 4, 7, 7] == delays


def test_lost_engine_backoff_uses_settings(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """A job re-queued because its engine was lost waits base seconds (3 s here): 204
    before retry_at, assigned after."""
    api = make_api(retry_backoff_seconds=3, engine_heartbeat_timeout=60)
    job = api.held("e1")
    clock.advance(61)
    api.heartbeat("e2")
    api.service.maintenance.sweep()
    requeued = api.job(job["job_id"])
    assert ("pending", 1, START + 64) == (
        requeued["status"], requeued["retries"], epoch(requeued["retry_at"]))
    clock.advance(2.9)
    api.nothing_for("e2")
    clock.advance(0.1)
    assert (job["job_id"], 2) == pick(api.assigned("e2"), "job_id", "attempt")


def test_zero_backoff_requeues_for_immediate_assignment(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """retry_backoff_seconds 0: a failed attempt can be assigned again at once."""
    api = make_api(retry_backoff_seconds=0)
    job = api.held("e1")
    clock.advance(1)
    body = api.reported(job["job_id"], "fail")
    assert ("pending", START + 1) == (body["status"], epoch(body["retry_at"]))
    again = api.assigned("e1")
    assert (job["job_id"], "assigned", 1) == (again["job_id"], again["status"], again["retries"])


def test_auto_retry_off_makes_a_reported_failure_final(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """auto_retry_failed_jobs = false: the first failed attempt is final, whatever
    max_retries says; the engine is freed and nothing is left to assign."""
    api = make_api(auto_retry_failed_jobs=False)
    job = api.held("e1", max_retries=5)
    clock.advance(4)
    body = api.reported(job["job_id"], "fail", error_message="bad input")
    assert {**jv(job), "status": "failed", "assigned_engine": None, "retries": 1,
            "error_message": "bad input", "retry_at": None, "completed_at": START + 4,
            "updated_at": START + 4} == jv(body)
    engine = api.engine("e1")
    assert ("idle", [], 1) == (engine["status"], engine["current_jobs"], engine["jobs_failed"])
    api.nothing_for("e1")


def test_auto_retry_off_makes_a_lost_engine_final(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """auto_retry_failed_jobs = false: the job of a lost engine fails for good."""
    api = make_api(auto_retry_failed_jobs=False, engine_heartbeat_timeout=60)
    job = api.held("e1", max_retries=5)
    clock.advance(61)
    api.service.maintenance.sweep()
    assert {**jv(job), "status": "failed", "assigned_engine": None, "retries": 1,
            "error_message": "engine e1 lost (no heartbeat for 60 s)", "retry_at": None,
            "completed_at": START + 61, "updated_at": START + 61} == jv(api.job(job["job_id"]))


def test_max_job_retries_sets_the_default_max_retries(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """max_job_retries = 1: a submission without max_retries gets 1 (one re-queue, then
    final); an explicit max_retries still wins."""
    api = make_api(max_job_retries=1, retry_backoff_seconds=0)
    explicit = api.submit(max_retries=4)
    assert 4 == explicit["max_retries"]
    api.ok("DELETE", f"/jobs/{explicit['job_id']}")
    job = api.held("e1")
    assert 1 == job["max_retries"]
    assert ("pending", 1) == pick(api.reported(job["job_id"], "fail"), "status", "retries")
    assert job["job_id"] == api.assigned("e1")["job_id"]
    final = api.reported(job["job_id"], "fail")
    assert ("failed", 2, None) == (final["status"], final["retries"], final["retry_at"])


# ---------------------------------------------------------- stale reports


@pytest.mark.parametrize(
    "late",
    [{"engine_id": "e1"}, {"attempt": 1}, {"engine_id": "e1", "attempt": 1}],
    ids=["by-engine-id", "by-attempt", "by-both"],
)
def test_late_report_from_replaced_engine_is_409_and_second_result_counts(
    make_api: Callable[..., Api], clock: FakeClock, late: Json
) -> None:
    """e1 is lost, its job re-queued and given to e2: e1's late complete/fail/progress
    are 409 and change nothing; e2's completion is the one that counts, and a late
    complete after it is still 409."""
    api = make_api(engine_heartbeat_timeout=60, retry_backoff_seconds=5)
    job = api.held("e1")
    assert 1 == job["attempt"]
    clock.advance(61)
    api.service.maintenance.sweep()
    clock.advance(5)
    api.heartbeat("e2")
    second = api.assigned("e2")
    assert (job["job_id"], "e2", 2) == (second["job_id"], second["assigned_engine"],
                                        second["attempt"])

    for action in ("complete", "fail", "progress"):
        assert_error(api.report(job["job_id"], action, **late), 409, "conflict")
        assert jv(second) == jv(api.job(job["job_id"]))

    clock.advance(10)
    done = api.reported(job["job_id"], "complete", engine_id="e2", attempt=2,
                        output_url="http://out.example.com/e2.mp4")
    assert {**jv(second), "status": "completed", "progress": 100.0,
            "output_url": "http://out.example.com/e2.mp4", "completed_at": START + 76,
            "updated_at": START + 76} == jv(done)
    assert_error(api.report(job["job_id"], "complete", **late), 409, "conflict")
    assert jv(done) == jv(api.job(job["job_id"]))
    assert (0, 1) == (api.engine("e1")["jobs_completed"], api.engine("e2")["jobs_completed"])


def test_report_from_an_earlier_attempt_of_the_same_engine_is_409(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """When the same engine gets a job again, a delayed report naming the earlier
    attempt is 409; the current attempt's report is accepted."""
    api = make_api(retry_backoff_seconds=0)
    job = api.held("e1")
    api.reported(job["job_id"], "fail", engine_id="e1", attempt=1)
    again = api.assigned("e1")
    assert 2 == again["attempt"]
    assert_error(api.report(job["job_id"], "complete", engine_id="e1", attempt=1),
                 409, "conflict")
    assert jv(again) == jv(api.job(job["job_id"]))
    assert "completed" == api.reported(job["job_id"], "complete", engine_id="e1",
                                       attempt=2)["status"]


# ------------------------------------------------------------ restart grace


def test_restart_gives_loaded_engines_a_full_timeout_from_the_start(
    make_api: Callable[..., Api], make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    """After a restart, engines read from the state file are declared offline only a
    full heartbeat timeout after the service started, however old their last heartbeat;
    an engine that heartbeats after the restart is timed from that heartbeat."""
    api = make_api(engine_heartbeat_timeout=60)
    job = api.held("e1")
    api.heartbeat("e2")
    clock.advance(30)
    clock.advance(3600)  # the server is down for an hour
    api = restart(api, make_app)
    restarted = clock()

    api.service.maintenance.sweep()
    assert ("busy", "idle") == (api.engine("e1")["status"], api.engine("e2")["status"])
    assert ("assigned", "e1") == pick(api.job(job["job_id"]), "status", "assigned_engine")
    clock.advance(30)
    api.heartbeat("e2")
    clock.advance(30)  # exactly the timeout since the start
    api.service.maintenance.sweep()
    assert ("busy", "idle") == (api.engine("e1")["status"], api.engine("e2")["status"])

    clock.advance(1)
    api.service.maintenance.sweep()
    assert ("offline", "idle") == (api.engine("e1")["status"], api.engine("e2")["status"])
    assert {**jv(job), "status": "pending", "assigned_engine": None, "retries": 1,
            "error_message": "engine e1 lost (no heartbeat for 60 s)",
            "retry_at": restarted + 66, "updated_at": restarted + 61} \
        == jv(api.job(job["job_id"]))

    clock.advance(30)
    api.service.maintenance.sweep()
    assert "offline" == api.engine("e2")["status"]


# -------------------------------------------------------------------- drain


def test_operator_drain_holds_across_idle_heartbeats_until_deleted(api: Api) -> None:
    """POST /engines/{id}/drain answers the engine, status draining; idle heartbeats do
    not end it (answer draining: true) and assign is 204 with work pending; DELETE ends
    it and the engine gets work again."""
    registered = api.heartbeat("e1", supported_codecs=["h264"])
    del registered["cancelled_jobs"], registered["draining"]
    body = api.ok("POST", "/engines/e1/drain")
    assert {**registered, "status": "draining"} == body
    job = api.submit()

    for status in ("idle", "busy", "idle"):
        answer = api.heartbeat("e1", status=status)
        assert ("draining", True, []) == (answer["status"], answer["draining"],
                                          answer["cancelled_jobs"])
        api.nothing_for("e1")
    assert "pending" == api.job(job["job_id"])["status"]
    assert "draining" == api.engine("e1")["status"]

    assert {**registered, "status": "idle"} == api.ok("DELETE", "/engines/e1/drain")
    assert False is api.heartbeat("e1")["draining"]
    assert job["job_id"] == api.assigned("e1")["job_id"]


def test_draining_engine_still_gets_its_held_job_redelivered(api: Api) -> None:
    """A draining engine holding a job gets that job again on assign (status
    draining, the job still listed in current_jobs); once done it gets 204."""
    job = api.held("e1")
    api.submit()
    drained = api.ok("POST", "/engines/e1/drain")
    assert ("draining", [job["job_id"]]) == (drained["status"], drained["current_jobs"])
    assert jv(job) == jv(api.assigned("e1"))
    api.reported(job["job_id"], "complete", engine_id="e1")
    api.nothing_for("e1")
    assert ("draining", []) == pick(api.engine("e1"), "status", "current_jobs")


@pytest.mark.parametrize("resume", ["idle", "busy"])
def test_engine_announced_drain_ends_when_it_reports_idle_or_busy(
    api: Api, resume: str
) -> None:
    """A heartbeat with status draining starts a drain (kept by heartbeats without a
    status); the engine ends it itself by reporting idle or busy."""
    job = api.submit()
    answer = api.heartbeat("e1", status="draining")
    assert ("draining", True) == (answer["status"], answer["draining"])
    api.nothing_for("e1")
    answer = api.heartbeat("e1")
    assert ("draining", True) == (answer["status"], answer["draining"])
    api.nothing_for("e1")

    answer = api.heartbeat("e1", status=resume)
    assert ("idle", False) == (answer["status"], answer["draining"])
    assert job["job_id"] == api.assigned("e1")["job_id"]


def test_engine_cannot_end_an_operator_drain(api: Api) -> None:
    """An operator drain on an engine that announced its own drain is not ended by the
    engine's idle heartbeat; only DELETE ends it."""
    api.submit()
    api.heartbeat("e1", status="draining")
    api.ok("POST", "/engines/e1/drain")
    answer = api.heartbeat("e1", status="idle")
    assert ("draining", True) == (answer["status"], answer["draining"])
    api.nothing_for("e1")
    api.ok("DELETE", "/engines/e1/drain")
    assert 200 == api.assign("e1").status_code


def test_operator_drain_survives_a_restart(
    api: Api, make_app: Callable[..., Flask]
) -> None:
    """An operator drain is kept in the state file: after a restart the engine is still
    draining, also after an idle heartbeat."""
    api.heartbeat("e1")
    api.ok("POST", "/engines/e1/drain")
    api.submit()
    api = restart(api, make_app)
    assert "draining" == api.engine("e1")["status"]
    assert True is api.heartbeat("e1", status="idle")["draining"]
    api.nothing_for("e1")


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_drain_of_unknown_engine_is_404(api: Api, method: str) -> None:
    """Starting or ending a drain of an engine the server does not know is 404."""
    assert_error(api.call(method, "/engines/ghost/drain"), 404, "not_found")


# -------------------------------------------------------------------- stall


def test_job_whose_progress_does_not_change_stalls(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """job_stall_timeout 100: progress reported again with the same value does not
    count; 100 s after the last change the job is still held, after that the sweep
    makes it a failed attempt 'stalled', although its engine keeps heartbeating."""
    api = make_api(job_stall_timeout=100, engine_heartbeat_timeout=1000)
    job = api.held("e1")
    clock.advance(50)
    api.reported(job["job_id"], "progress", progress=10)
    clock.advance(90)
    same = api.reported(job["job_id"], "progress", progress=10)
    clock.advance(10)  # 100 s since progress last changed
    api.heartbeat("e1")
    assert 0 == api.service.maintenance.sweep()
    assert jv(same) == jv(api.job(job["job_id"]))

    clock.advance(1)
    api.heartbeat("e1")
    assert 1 == api.service.maintenance.sweep()
    assert {**jv(same), "status": "pending", "assigned_engine": None, "progress": None,
            "retries": 1, "error_message": "stalled: no progress for 100 s on engine e1",
            "retry_at": START + 156, "updated_at": START + 151} == jv(api.job(job["job_id"]))
    assert ("idle", []) == pick(api.engine("e1"), "status", "current_jobs")


def test_assigned_job_without_any_progress_stalls(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """A job that never got a progress report stalls job_stall_timeout after it was
    assigned; with auto_retry_failed_jobs false that is final."""
    api = make_api(job_stall_timeout=100, engine_heartbeat_timeout=1000,
                   auto_retry_failed_jobs=False)
    job = api.held("e1")
    clock.advance(100)
    api.service.maintenance.sweep()
    assert "assigned" == api.job(job["job_id"])["status"]
    clock.advance(1)
    api.service.maintenance.sweep()
    body = api.job(job["job_id"])
    assert ("failed", 1, "stalled: no progress for 100 s on engine e1") == (
        body["status"], body["retries"], body["error_message"])


def test_changing_progress_keeps_a_job_from_stalling(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """Each change of progress restarts the stall clock."""
    api = make_api(job_stall_timeout=100, engine_heartbeat_timeout=1000)
    job = api.held("e1")
    for percent in (10, 20, 30, 40, 50):
        clock.advance(90)
        api.reported(job["job_id"], "progress", progress=percent)
        api.service.maintenance.sweep()
    body = api.job(job["job_id"])
    assert ("processing", "e1", 50) == (body["status"], body["assigned_engine"],
                                        body["progress"])


def test_stall_detection_is_off_by_default(api: Api, clock: FakeClock) -> None:
    """job_stall_timeout 0 (the default): a held job never stalls while its engine
    heartbeats."""
    job = api.held("e1")
    for _ in range(10):
        clock.advance(150)
        api.heartbeat("e1")
        api.service.maintenance.sweep()
    assert ("assigned", "e1") == pick(api.job(job["job_id"]), "status", "assigned_engine")


# ----------------------------------------------------- the heartbeat answer


def test_heartbeat_answer_lists_a_cancelled_job(api: Api) -> None:
    """A job in the engine's local_job_queue that was cancelled is in cancelled_jobs of
    the next heartbeat answer, also when that heartbeat leaves local_job_queue out."""
    job = api.held("e1")
    before = api.heartbeat("e1", local_job_queue=[job["job_id"]])
    assert ([], "busy") == (before["cancelled_jobs"], before["status"])
    api.ok("DELETE", f"/jobs/{job['job_id']}")

    answer = api.heartbeat("e1", local_job_queue=[job["job_id"]])
    assert {**before, "status": "idle", "current_jobs": [],
            "cancelled_jobs": [job["job_id"]]} == answer
    assert [job["job_id"]] == api.heartbeat("e1")["cancelled_jobs"]


def test_heartbeat_answer_lists_a_job_given_to_another_engine(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """A lost engine that comes back still listing its old job is told to drop it, both
    while the job waits in the queue and once another engine holds it; the new holder
    is not told."""
    api = make_api(engine_heartbeat_timeout=60, retry_backoff_seconds=5)
    job = api.held("e1")
    api.heartbeat("e1", local_job_queue=[job["job_id"]])
    clock.advance(61)
    api.service.maintenance.sweep()
    answer = api.heartbeat("e1", local_job_queue=[job["job_id"]])
    assert ([job["job_id"]], "idle") == (answer["cancelled_jobs"], answer["status"])

    clock.advance(5)
    api.heartbeat("e2")
    assert job["job_id"] == api.assigned("e2")["job_id"]
    assert [job["job_id"]] == api.heartbeat("e1", local_job_queue=[job["job_id"]])[
        "cancelled_jobs"]
    assert [] == api.heartbeat("e2", local_job_queue=[job["job_id"]])["cancelled_jobs"]


def test_heartbeat_answer_leaves_out_own_finished_and_unknown_jobs(api: Api) -> None:
    """Jobs the engine still holds, jobs it completed and ids the server does not know
    are not in cancelled_jobs."""
    done = api.held("e1")
    api.reported(done["job_id"], "complete")
    mine = api.held("e1")
    answer = api.heartbeat("e1", local_job_queue=[mine["job_id"], done["job_id"], "local-9"])
    assert ([], False, [mine["job_id"]]) == (answer["cancelled_jobs"], answer["draining"],
                                             answer["current_jobs"])


# ------------------------------------------------------------------- limits


def test_queue_full_is_503_with_retry_after_for_submit_and_retry(
    make_api: Callable[..., Api]
) -> None:
    """With job_queue_max_size pending jobs, submit and retry answer 503 queue_full (the
    contract's error body) with Retry-After: 5 (the README's hint); once a job leaves the
    queue a submission is accepted again."""
    api = make_api(job_queue_max_size=2)
    cancelled = api.submit()
    api.ok("DELETE", f"/jobs/{cancelled['job_id']}")
    api.submit()
    api.submit()

    for method, path, body in (
        ("POST", "/jobs/", {"source_url": "http://a.example.com/b.mp4",
                            "target_codec": "h264", "job_size": 1}),
        ("POST", f"/jobs/{cancelled['job_id']}/retry", None),
    ):
        response = api.call(method, path, body)
        assert_error(response, 503, "queue_full")
        assert "5" == response.headers["Retry-After"]
    assert "cancelled" == api.job(cancelled["job_id"])["status"]
    assert 3 == api.ok("GET", "/jobs/")["total"]

    api.heartbeat("e1")
    api.assigned("e1")
    api.submit()


def test_concurrency_limit_is_204_but_the_holder_still_gets_its_job(
    make_api: Callable[..., Api]
) -> None:
    """max_concurrent_jobs 1: a processing job counts; other engines get 204 with an
    empty body, the holder still gets its job re-delivered; cancelling it frees the
    slot."""
    api = make_api(max_concurrent_jobs=1)
    job = api.held("e1")
    waiting = api.submit()
    processing = api.reported(job["job_id"], "progress", progress=5)
    api.heartbeat("e2")
    api.nothing_for("e2")
    assert jv(processing) == jv(api.assigned("e1"))
    api.ok("DELETE", f"/jobs/{job['job_id']}")
    assert waiting["job_id"] == api.assigned("e2")["job_id"]
    api.nothing_for("e1")


# ---------------------------------------------------------------- retention


def test_retention_purges_old_finished_jobs_and_the_purge_survives_restart(
    make_api: Callable[..., Api], make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    """finished_job_retention 3600: completed, failed and cancelled jobs finished more
    than 3600 s ago are deleted by the purge, unfinished ones never; a purged job stays
    gone after a restart and the new service keeps purging."""
    api = make_api(finished_job_retention=3600)
    completed = api.held("e1")
    api.reported(completed["job_id"], "complete")
    clock.advance(100)
    failed = api.held("e1", max_retries=0)
    api.reported(failed["job_id"], "fail")
    clock.advance(100)
    cancelled = api.submit()
    api.ok("DELETE", f"/jobs/{cancelled['job_id']}")
    active = api.held("e1")
    pending = api.submit()

    clock.advance(3400)  # the completed job finished exactly 3600 s ago
    assert 0 == api.service.maintenance.purge()
    clock.advance(1)
    assert 1 == api.service.maintenance.purge()
    assert_error(api.call("GET", f"/jobs/{completed['job_id']}"), 404, "not_found")
    assert 4 == api.ok("GET", "/jobs/")["total"]

    api = restart(api, make_app)
    assert_error(api.call("GET", f"/jobs/{completed['job_id']}"), 404, "not_found")
    clock.advance(200)
    assert 2 == api.service.maintenance.purge()
    assert [active["job_id"], pending["job_id"]] == [
        j["job_id"] for j in api.ok("GET", "/jobs/")["jobs"]]

    api = restart(api, make_app)
    assert [active["job_id"], pending["job_id"]] == [
        j["job_id"] for j in api.ok("GET", "/jobs/")["jobs"]]
    clock.advance(10**6)
    assert 0 == api.service.maintenance.purge()


def test_retention_zero_keeps_finished_jobs_forever(api: Api, clock: FakeClock) -> None:
    """finished_job_retention 0 (the default): nothing is ever purged."""
    job = api.held("e1")
    api.reported(job["job_id"], "complete")
    clock.advance(10**8)
    assert 0 == api.service.maintenance.purge()
    assert "completed" == api.job(job["job_id"])["status"]


# -------------------------------------------------- size-aware placement


def fast_and_slow(api: Api, **slow: Any) -> None:
    """Register 'fast' (benchmark 10 s) and 'slow' (benchmark 50 s): the median is
    30 s, so one is fast and the other slow."""
    api.heartbeat("fast", benchmark_time=10.0)
    api.heartbeat("slow", benchmark_time=50.0, **slow)


def test_fast_engine_takes_the_oldest_large_job(api: Api) -> None:
    """A fast engine passes over older small jobs for the oldest large one; with no
    large job left it takes the oldest small one."""
    fast_and_slow(api)
    small = [api.submit(job_size=SMALL)["job_id"] for _ in range(3)]
    large = [api.submit(job_size=LARGE)["job_id"] for _ in range(2)]
    served = []
    for _ in range(5):
        job_id = api.assigned("fast")["job_id"]
        served.append(job_id)
        api.reported(job_id, "complete")
    assert large + small == served


def test_streaming_engine_counts_as_fast(api: Api) -> None:
    """An engine with streaming_support is fast even with the slowest benchmark."""
    api.heartbeat("streamer", benchmark_time=100.0, streaming_support=True)
    api.heartbeat("other", benchmark_time=10.0)
    api.submit(job_size=SMALL)
    large = api.submit(job_size=LARGE)
    assert large["job_id"] == api.assigned("streamer")["job_id"]


def test_large_threshold_comes_from_settings(make_api: Callable[..., Api]) -> None:
    """large_job_threshold_mb decides what is large: with 500, a 600 MB job is large
    (the fast engine prefers it) and a 499 MB job is not."""
    api = make_api(large_job_threshold_mb=500)
    fast_and_slow(api)
    small = api.submit(job_size=499)
    large = api.submit(job_size=600)
    assert large["job_id"] == api.assigned("fast")["job_id"]
    assert small["job_id"] == api.assigned("slow")["job_id"]


def test_slow_engine_passes_over_large_jobs_for_a_small_one(api: Api) -> None:
    """While a fast engine is active a slow engine takes a younger small job over an
    older large one; with only large jobs left it gets 204, and the fast engine takes
    the large job."""
    fast_and_slow(api)
    large = api.submit(job_size=LARGE)
    small = api.submit(job_size=SMALL)
    assert small["job_id"] == api.assigned("slow")["job_id"]
    api.reported(small["job_id"], "complete")
    api.nothing_for("slow")
    assert large["job_id"] == api.assigned("fast")["job_id"]


@pytest.mark.parametrize("absence", ["drained", "offline"])
def test_slow_engine_takes_large_job_when_no_fast_engine_is_active(
    make_api: Callable[..., Api], clock: FakeClock, absence: str
) -> None:
    """A slow engine takes a large job when no fast engine is active (drained, or
    offline after missing its heartbeats)."""
    api = make_api(engine_heartbeat_timeout=60)
    fast_and_slow(api)
    large = api.submit(job_size=LARGE)
    api.nothing_for("slow")
    if absence == "drained":
        api.ok("POST", "/engines/fast/drain")
    else:
        clock.advance(61)
        api.heartbeat("slow", benchmark_time=50.0)
        api.service.maintenance.sweep()
        assert "offline" == api.engine("fast")["status"]
    assert large["job_id"] == api.assigned("slow")["job_id"]


def test_slow_engine_takes_a_large_job_that_waited_the_aging_time(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """A slow engine passes over a large job only while it has waited less than
    priority_aging_seconds: at 599 s it takes a small job, at 600 s the large one."""
    api = make_api(priority_aging_seconds=600, engine_heartbeat_timeout=3600)
    fast_and_slow(api)
    large = api.submit(job_size=LARGE)
    first = api.submit(job_size=SMALL)
    second = api.submit(job_size=SMALL)
    clock.advance(599)
    assert first["job_id"] == api.assigned("slow")["job_id"]
    api.reported(first["job_id"], "complete")
    clock.advance(1)
    assert large["job_id"] == api.assigned("slow")["job_id"]
    assert "pending" == api.job(second["job_id"])["status"]


def test_size_placement_stays_within_the_best_priority(api: Api) -> None:
    """Size-aware placement never jumps a priority: the fast engine takes a small
    priority-1 job over a large priority-0 one, and a slow engine facing only a large
    job at the best priority gets 204 rather than a lower-priority small job."""
    fast_and_slow(api)
    low_large = api.submit(job_size=LARGE, priority=0)
    high_small = api.submit(job_size=SMALL, priority=1)
    assert high_small["job_id"] == api.assigned("fast")["job_id"]
    api.reported(high_small["job_id"], "complete")

    api.submit(job_size=LARGE, priority=2)
    api.nothing_for("slow")
    assert "pending" == api.job(low_large["job_id"])["status"]


@pytest.mark.parametrize(
    "fast_engine",
    [{"supported_codecs": ["vp9"]}, {"storage_capacity_gb": 1.0}],
    ids=["other-codec", "too-little-storage"],
)
def test_slow_engine_takes_large_job_no_active_fast_engine_can_take(
    api: Api, fast_engine: Json
) -> None:
    """The docstring: a slow engine passes over large jobs 'only while a fast engine is
    active to take them'. A fast engine that cannot take the job (other codec, too
    little storage) does not count: the slow engine gets the large job."""
    api.heartbeat("fast", benchmark_time=10.0, **fast_engine)
    api.heartbeat("slow", benchmark_time=50.0, supported_codecs=["h264"])
    large = api.submit(job_size=LARGE, target_codec="h264")
    api.nothing_for("fast")
    assert large["job_id"] == api.assigned("slow")["job_id"]


def test_engine_of_unknown_speed_takes_jobs_in_plain_order(api: Api) -> None:
    """An engine with neither a benchmark nor streaming has no speed class: it takes
    the oldest job of the best priority, large or small."""
    api.heartbeat("fast", benchmark_time=10.0)
    api.heartbeat("plain")
    small = api.submit(job_size=SMALL)
    api.submit(job_size=LARGE)
    assert small["job_id"] == api.assigned("plain")["job_id"]


# -------------------------------------------------------------------- aging


def test_aged_job_outranks_newer_jobs_one_priority_below_its_age(
    make_api: Callable[..., Api], clock: FakeClock
) -> None:
    """priority_aging_seconds 100: a priority-0 job that waited 300 s (effective 3)
    goes before newer priority-2 jobs, which then follow oldest first."""
    api = make_api(priority_aging_seconds=100, engine_heartbeat_timeout=3600)
    api.heartbeat("e1")
    old = api.submit(priority=0)
    clock.advance(300)
    newer = [api.submit(priority=2)["job_id"] for _ in range(3)]
    served = []
    for _ in range(4):
        job_id = api.assigned("e1")["job_id"]
        served.append(job_id)
        api.reported(job_id, "complete")
    assert [old["job_id"], *newer] == served


@pytest.mark.parametrize(
    ("waited", "expected"),
    [(299, ["p4", "p3", "old", "p2"]), (300, ["p4", "old", "p3", "p2"])],
    ids=["299s-effective-2", "300s-effective-3"],
)
def test_aging_adds_one_point_per_full_period(
    make_api: Callable[..., Api], clock: FakeClock, waited: int, expected: list[str]
) -> None:
    """Effective priority = priority + whole periods waited: after 299 s a priority-0
    job ranks 2 (behind a new priority 3), after 300 s it ranks 3 and, being older,
    goes before a new priority 3, never before a new priority 4."""
    api = make_api(priority_aging_seconds=100, engine_heartbeat_timeout=3600)
    api.heartbeat("e1")
    names = {api.submit(priority=0)["job_id"]: "old"}
    clock.advance(waited)
    for priority in (2, 3, 4):
        names[api.submit(priority=priority)["job_id"]] = f"p{priority}"
    served = []
    for _ in range(4):
        job_id = api.assigned("e1")["job_id"]
        served.append(names[job_id])
        api.reported(job_id, "complete")
    assert expected == served


def test_aging_zero_turns_aging_off(make_api: Callable[..., Api], clock: FakeClock) -> None:
    """priority_aging_seconds 0: however long a low-priority job waits, a newer
    higher-priority job goes first."""
    api = make_api(priority_aging_seconds=0, engine_heartbeat_timeout=10**7)
    api.heartbeat("e1")
    low = api.submit(priority=-5)
    clock.advance(10**6)
    high = api.submit(priority=0)
    assert high["job_id"] == api.assigned("e1")["job_id"]
    api.reported(high["job_id"], "complete")
    assert low["job_id"] == api.assigned("e1")["job_id"]
