"""Issue #8: idempotent submission (``Idempotency-Key``) and batch submission
(``POST /jobs/batch``), through the test client on a real journal."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dispatch.config.settings import Settings
from tests.conftest import BOTH_BACKENDS, JOB, FakeClock

pytestmark = BOTH_BACKENDS

OTHER = {**JOB, "source_url": "http://example.com/other.mp4"}


# ------------------------------------------------------------------ helpers

def ok(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    return response.get_json()


def error_of(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The contract's error object (asserting its shape); returns ``error``."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    error = body["error"]
    expected = {"code": code, "message": error["message"]}
    if "details" in error:
        expected["details"] = error["details"]
    assert {"error": expected} == body
    assert isinstance(error["message"], str) and error["message"]
    return error


def messages(value: Any) -> bool:
    """A non-empty list of non-empty strings: validation messages."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, str) and item for item in value)


def restart(app: Flask, make_app: Callable[..., Flask], settings: Settings) -> FlaskClient:
    """Shut ``app`` down (final snapshot, lock released) and serve the same state file
    from a new app; returns the new app's client."""
    app.extensions["dispatch.runtime"].shutdown()
    return make_app(settings).test_client()


@pytest.fixture
def post(client: FlaskClient, auth: dict[str, str]) -> Callable[..., TestResponse]:
    """POST /jobs/ with ``body`` and, when given, an Idempotency-Key."""

    def do(body: dict[str, Any], key: str | None = None,
           on: FlaskClient | None = None) -> TestResponse:
        headers = dict(auth) if key is None else {**auth, "Idempotency-Key": key}
        return (on or client).post("/jobs/", json=body, headers=headers)

    return do


@pytest.fixture
def all_jobs(client: FlaskClient, auth: dict[str, str]) -> Callable[..., list[dict[str, Any]]]:
    """Every job the server holds, oldest first."""

    def do(on: FlaskClient | None = None) -> list[dict[str, Any]]:
        page = ok((on or client).get("/jobs/?limit=1000", headers=auth), 200)
        assert page["total"] == len(page["jobs"])
        return page["jobs"]

    return do


# ------------------------------------------------------------- idempotency

def test_same_key_same_body_returns_the_original_job_with_200(
        post: Callable[..., TestResponse], all_jobs: Callable[..., list[dict[str, Any]]]
) -> None:
    """A repeat with the same key and body: 200, the same job and Location; no new job."""
    first = post(JOB, "order-42")
    created = ok(first, 201)
    repeat = post(JOB, "order-42")

    assert created == ok(repeat, 200)
    assert f"/jobs/{created['job_id']}" == first.headers["Location"]
    assert first.headers["Location"] == repeat.headers["Location"]
    assert [created] == all_jobs()


def test_same_body_is_judged_by_content_not_key_order_or_spacing(
        client: FlaskClient, auth: dict[str, str], post: Callable[..., TestResponse]) -> None:
    """The same JSON object, keys reordered and spaced differently, is the same body."""
    created = ok(post(JOB, "k-1"), 201)
    raw = b'{ "job_size": 100.5,\n  "target_codec": "h264", "source_url": ' \
          b'"http://example.com/input.mp4" }'

    repeat = client.post("/jobs/", data=raw, headers={**auth, "Idempotency-Key": "k-1"})

    assert created == ok(repeat, 200)


def test_repeat_returns_the_job_as_it_is_now(
        client: FlaskClient, auth: dict[str, str], post: Callable[..., TestResponse],
        heartbeat: Callable[..., dict[str, Any]]) -> None:
    """A repeat after the job moved on answers with its current state, not a stale copy."""
    job_id = ok(post(JOB, "k-2"), 201)["job_id"]
    heartbeat("engine-001", supported_codecs=["h264"])
    assigned = ok(client.post("/assign_job/", json={"engine_id": "engine-001"},
                              headers=auth), 200)
    assigned.pop("output_upload")  # the engine's, beside the job as GET shows it

    repeat = ok(post(JOB, "k-2"), 200)

    assert assigned == repeat
    assert (job_id, "assigned") == (repeat["job_id"], repeat["status"])


def test_same_key_different_body_is_409_and_creates_nothing(
        post: Callable[..., TestResponse], all_jobs: Callable[..., list[dict[str, Any]]]
) -> None:
    """Reusing a key for another body is a conflict; the original job stays alone."""
    created = ok(post(JOB, "k-3"), 201)

    error_of(post(OTHER, "k-3"), 409, "conflict")
    error_of(post({**JOB, "priority": 5}, "k-3"), 409, "conflict")

    assert [created] == all_jobs()


def test_distinct_keys_and_no_key_each_create_a_job(
        post: Callable[..., TestResponse], all_jobs: Callable[..., list[dict[str, Any]]]
) -> None:
    """Keys are per submission: another key, or none at all, makes a new job."""
    jobs = [ok(post(JOB, "a"), 201), ok(post(JOB, "b"), 201), ok(post(JOB), 201),
            ok(post(JOB), 201)]

    assert 4 == len({job["job_id"] for job in jobs})
    assert jobs == all_jobs()


def test_key_survives_a_restart(
        app: Flask, make_app: Callable[..., Flask], settings: Settings,
        post: Callable[..., TestResponse], all_jobs: Callable[..., list[dict[str, Any]]]
) -> None:
    """Keys are durable: after a restart the same body repeats (200), another conflicts."""
    created = ok(post(JOB, "k-restart"), 201)

    client = restart(app, make_app, settings)

    assert created == ok(post(JOB, "k-restart", on=client), 200)
    error_of(post(OTHER, "k-restart", on=client), 409, "conflict")
    assert [created] == all_jobs(client)


def test_key_expires_after_the_ttl(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        auth: dict[str, str], clock: FakeClock) -> None:
    """Within idempotency_ttl a key repeats; once it has passed the key is free again:
    the same body makes a new job, which the key then protects."""
    client = make_app(make_settings(idempotency_ttl=60)).test_client()
    headers = {**auth, "Idempotency-Key": "k-ttl"}
    first = ok(client.post("/jobs/", json=JOB, headers=headers), 201)

    clock.advance(59)
    assert first == ok(client.post("/jobs/", json=JOB, headers=headers), 200)
    clock.advance(2)
    second = ok(client.post("/jobs/", json=JOB, headers=headers), 201)

    assert first["job_id"] != second["job_id"]
    assert second == ok(client.post("/jobs/", json=JOB, headers=headers), 200)


def test_expired_key_may_carry_another_body(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        auth: dict[str, str], clock: FakeClock) -> None:
    """After the TTL a reused key with a different body is a new job, not a conflict."""
    client = make_app(make_settings(idempotency_ttl=60)).test_client()
    headers = {**auth, "Idempotency-Key": "k-reuse"}
    ok(client.post("/jobs/", json=JOB, headers=headers), 201)

    clock.advance(61)
    other = ok(client.post("/jobs/", json=OTHER, headers=headers), 201)

    assert OTHER["source_url"] == other["source_url"]


def test_expiry_sweep_forgets_old_keys_durably(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        auth: dict[str, str], clock: FakeClock) -> None:
    """expire_idempotency_keys drops only keys past the TTL, and the drop is durable:
    after a restart the old key is free and the young one still protects its job."""
    settings = make_settings(idempotency_ttl=60)
    app = make_app(settings)
    client = app.test_client()
    ok(client.post("/jobs/", json=JOB, headers={**auth, "Idempotency-Key": "old"}), 201)
    clock.advance(30)
    young = ok(client.post("/jobs/", json=JOB, headers={**auth, "Idempotency-Key": "young"}),
               201)
    clock.advance(31)

    assert 1 == app.extensions["dispatch"].maintenance.expire_idempotency_keys()
    assert 0 == app.extensions["dispatch"].maintenance.expire_idempotency_keys()
    client = restart(app, make_app, settings)

    ok(client.post("/jobs/", json=OTHER, headers={**auth, "Idempotency-Key": "old"}), 201)
    assert young == ok(client.post("/jobs/", json=JOB,
                                   headers={**auth, "Idempotency-Key": "young"}), 200)


def test_a_key_reused_after_expiry_does_not_hold_back_older_keys(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        auth: dict[str, str], clock: FakeClock) -> None:
    """A key used again after its TTL counts from its new use: the keys used in
    between still expire on time behind it."""
    settings = make_settings(idempotency_ttl=60)
    service = make_app(settings).extensions["dispatch"]
    service.commands.submit_once(JOB, "a")
    clock.advance(10)
    service.commands.submit_once(JOB, "b")
    clock.advance(55)  # a: 65 s old (expired), b: 55 s
    assert service.commands.submit_once(OTHER, "a")[1]  # a new job: the key counts from now
    assert 0 == service.maintenance.expire_idempotency_keys()
    clock.advance(10)  # b: 65 s old, the new a: 10 s
    assert 1 == service.maintenance.expire_idempotency_keys()
    assert not service.commands.submit_once(OTHER, "a")[1]
    assert service.commands.submit_once(OTHER, "b")[1]


@pytest.mark.parametrize("key", [
    pytest.param("", id="empty"),
    pytest.param("k" * 256, id="256-chars"),
    pytest.param("bad\x01key", id="control-char"),
    pytest.param("tab\tkey", id="tab"),
    pytest.param("del\x7fkey", id="del"),
])
def test_invalid_idempotency_key_is_400(
        post: Callable[..., TestResponse], all_jobs: Callable[..., list[dict[str, Any]]],
        key: str) -> None:
    """The key must be 1-255 printable characters: otherwise 400 and no job."""
    error_of(post(JOB, key), 400, "validation_error")

    assert [] == all_jobs()


def test_invalid_idempotency_key_details_name_the_header(
        post: Callable[..., TestResponse]) -> None:
    """The 400's details follow the contract's shape (field -> messages), the field
    being the header: ``{"Idempotency-Key": ["..."]}``."""
    error = error_of(post(JOB, "k" * 256), 400, "validation_error")

    assert {"Idempotency-Key"} == set(error["details"]), error
    assert messages(error["details"]["Idempotency-Key"])


@pytest.mark.parametrize("key", [
    pytest.param("k", id="1-char"),
    pytest.param("k" * 255, id="255-chars"),
    pytest.param(" !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~", id="every-kind-printable"),
    pytest.param("3f2b8c1e-5d4a-4e6f-9a7b-0c1d2e3f4a5b", id="uuid"),
])
def test_valid_idempotency_keys_are_accepted_and_repeat(
        post: Callable[..., TestResponse], key: str) -> None:
    """Keys at the edges of the rule are accepted and work as keys."""
    created = ok(post(JOB, key), 201)

    assert created == ok(post(JOB, key), 200)


def test_refused_submission_does_not_use_up_its_key(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        auth: dict[str, str]) -> None:
    """A 400 or a 503 queue_full records nothing: the key then works with its body."""
    client = make_app(make_settings(job_queue_max_size=1)).test_client()
    keyed = {**auth, "Idempotency-Key": "k-refused"}
    error_of(client.post("/jobs/", json={**JOB, "job_size": -1}, headers=keyed), 400,
             "validation_error")
    blocker = ok(client.post("/jobs/", json=OTHER, headers=auth), 201)
    full = client.post("/jobs/", json=JOB, headers=keyed)
    error_of(full, 503, "queue_full")
    assert full.headers["Retry-After"].isdigit()
    ok(client.delete(f"/jobs/{blocker['job_id']}", headers=auth), 200)

    created = ok(client.post("/jobs/", json=JOB, headers=keyed), 201)

    assert created == ok(client.post("/jobs/", json=JOB, headers=keyed), 200)


def test_concurrent_repeats_create_one_job(app: Flask) -> None:
    """Sixteen threads submitting the same key and body at once: one job, one creator."""
    service = app.extensions["dispatch"]
    barrier = threading.Barrier(16)
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def submit() -> None:
        barrier.wait()
        job, created = service.commands.submit_once(dict(JOB), "k-race")
        with lock:
            results.append((job.job_id, created))

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert 16 == len(results)
    assert 1 == len({job_id for job_id, _ in results})
    assert 1 == sum(created for _, created in results)
    assert 1 == service.queries.stats()["jobs"]["total"]


# ------------------------------------------------------------------- batch

def test_batch_creates_every_job_in_order(
        client: FlaskClient, auth: dict[str, str],
        all_jobs: Callable[..., list[dict[str, Any]]]) -> None:
    """201 {"jobs": [...]}: each item a pending job as submitted, in the batch's order."""
    items = [JOB, {**OTHER, "priority": 7}, {**JOB, "target_codec": "vp9", "max_retries": 0}]

    body = ok(client.post("/jobs/batch", json={"jobs": items}, headers=auth), 201)

    assert ["jobs"] == list(body)
    assert body["jobs"] == all_jobs()
    for item, job in zip(items, body["jobs"], strict=True):
        assert item == {key: job[key] for key in item}
        assert "pending" == job["status"]
    assert [job["job_id"] for job in body["jobs"]] == sorted(
        (job["job_id"] for job in body["jobs"]), key=lambda j: tuple(map(int, j.split("_"))))


def test_batch_of_1000_is_accepted(client: FlaskClient, auth: dict[str, str],
                                   all_jobs: Callable[..., list[dict[str, Any]]]) -> None:
    """The largest batch (1000 jobs, the default queue size) is created whole."""
    items = [{**JOB, "source_url": f"http://example.com/{n}.mp4"} for n in range(1000)]

    body = ok(client.post("/jobs/batch", json={"jobs": items}, headers=auth), 201)

    assert [item["source_url"] for item in items] == [job["source_url"] for job in body["jobs"]]
    assert 1000 == len(all_jobs())


@pytest.mark.parametrize("jobs", [
    pytest.param([], id="empty"),
    pytest.param([JOB] * 1001, id="1001-jobs"),
    pytest.param(None, id="null"),
    pytest.param("jobs", id="not-a-list"),
    pytest.param({"0": JOB}, id="object"),
])
def test_batch_outside_1_to_1000_or_not_a_list_is_400(
        client: FlaskClient, auth: dict[str, str],
        all_jobs: Callable[..., list[dict[str, Any]]], jobs: Any) -> None:
    """``jobs`` must be a list of 1-1000 items: else 400 naming ``jobs``, nothing created."""
    error = error_of(client.post("/jobs/batch", json={"jobs": jobs}, headers=auth), 400,
                     "validation_error")

    assert {"jobs"} == set(error["details"])
    assert messages(error["details"]["jobs"])
    assert [] == all_jobs()


@pytest.mark.parametrize("body", [
    pytest.param({}, id="missing-jobs"),
    pytest.param({"jobs": [JOB], "extra": 1}, id="unknown-field"),
])
def test_batch_body_errors_are_400(client: FlaskClient, auth: dict[str, str],
                                   all_jobs: Callable[..., list[dict[str, Any]]],
                                   body: dict[str, Any]) -> None:
    """A batch body without ``jobs`` or with an unknown field is a 400, creating nothing."""
    error = error_of(client.post("/jobs/batch", json=body, headers=auth), 400,
                     "validation_error")

    assert set(error["details"]) <= {"jobs", "extra"} and error["details"]
    assert [] == all_jobs()


def test_batch_with_invalid_items_creates_none_and_names_each(
        client: FlaskClient, auth: dict[str, str],
        all_jobs: Callable[..., list[dict[str, Any]]]) -> None:
    """Any invalid item: 400 whose details give, under ``jobs``, the index of each invalid
    item with its field errors; valid items are not created either."""
    items = [JOB, {**JOB, "job_size": -1}, OTHER,
             {**JOB, "target_codec": "", "max_retires": 5}, "not an object"]

    error = error_of(client.post("/jobs/batch", json={"jobs": items}, headers=auth), 400,
                     "validation_error")

    details = error["details"]
    assert {"jobs"} == set(details)
    assert {"1", "3", "4"} == set(details["jobs"])
    assert {"job_size"} == set(details["jobs"]["1"])
    assert {"target_codec", "max_retires"} == set(details["jobs"]["3"])
    for item_errors in details["jobs"].values():
        assert all(messages(value) for value in item_errors.values()), item_errors
    assert [] == all_jobs()


def test_batch_refuses_callbacks_by_index_when_not_allowed(
        client: FlaskClient, auth: dict[str, str],
        all_jobs: Callable[..., list[dict[str, Any]]]) -> None:
    """Without webhook_allowed_hosts an item's callback_url is a 400 at its index."""
    items = [JOB, {**OTHER, "callback_url": "http://127.0.0.1:9/hook"}]

    error = error_of(client.post("/jobs/batch", json={"jobs": items}, headers=auth), 400,
                     "validation_error")

    assert {"jobs": {"1": {"callback_url": error["details"]["jobs"]["1"]["callback_url"]}}} \
        == error["details"]
    assert messages(error["details"]["jobs"]["1"]["callback_url"])
    assert [] == all_jobs()


def test_batch_names_every_invalid_item_whichever_rule_it_breaks(
        client: FlaskClient, auth: dict[str, str],
        all_jobs: Callable[..., list[dict[str, Any]]]) -> None:
    """One item breaks a field rule, another the callback rule: both indexes are named
    in the one 400, so a client can fix the batch in one go."""
    items = [{**JOB, "job_size": -1}, JOB, {**OTHER, "callback_url": "http://127.0.0.1:9/h"}]

    error = error_of(client.post("/jobs/batch", json={"jobs": items}, headers=auth), 400,
                     "validation_error")

    assert {"0", "2"} == set(error["details"]["jobs"]), error
    assert {"job_size"} == set(error["details"]["jobs"]["0"])
    assert {"callback_url"} == set(error["details"]["jobs"]["2"])
    assert [] == all_jobs()


def test_batch_counts_against_the_queue_limit_as_a_whole(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        auth: dict[str, str]) -> None:
    """Pending + batch > queue size: 503 queue_full with Retry-After and no job created;
    a batch that fits exactly is created whole."""
    client = make_app(make_settings(job_queue_max_size=5)).test_client()
    ok(client.post("/jobs/batch", json={"jobs": [JOB] * 3}, headers=auth), 201)

    full = client.post("/jobs/batch", json={"jobs": [OTHER] * 3}, headers=auth)
    error_of(full, 503, "queue_full")
    assert full.headers["Retry-After"].isdigit() and int(full.headers["Retry-After"]) > 0
    assert 3 == ok(client.get("/jobs/", headers=auth), 200)["total"]

    ok(client.post("/jobs/batch", json={"jobs": [OTHER] * 2}, headers=auth), 201)
    error_of(client.post("/jobs/batch", json={"jobs": [OTHER]}, headers=auth), 503,
             "queue_full")
    assert 5 == ok(client.get("/jobs/", headers=auth), 200)["total"]


def test_batch_jobs_survive_a_restart(
        app: Flask, client: FlaskClient, auth: dict[str, str], settings: Settings,
        make_app: Callable[..., Flask], all_jobs: Callable[..., list[dict[str, Any]]]) -> None:
    """A 201 batch is durable: every job is there, unchanged, after a restart."""
    created = ok(client.post("/jobs/batch", json={"jobs": [JOB, OTHER]}, headers=auth), 201)

    client = restart(app, make_app, settings)

    assert created["jobs"] == all_jobs(client)


def test_batch_body_is_read_whatever_the_content_type(
        client: FlaskClient, auth: dict[str, str]) -> None:
    """As every endpoint (contract §2), the batch body is JSON even when sent as a form."""
    raw = orjson.dumps({"jobs": [JOB]})

    body = ok(client.post("/jobs/batch", data=raw, headers=auth,
                          content_type="application/x-www-form-urlencoded"), 201)

    assert 1 == len(body["jobs"])
