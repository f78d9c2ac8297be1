"""Issue #8: signed webhooks. A job with a ``callback_url`` is POSTed, signed, to a
receiver when it completes, fails or is cancelled; failed deliveries are retried with
backoff, survive restarts, and a dead receiver never holds up the API.

The receivers are real HTTP servers on 127.0.0.1 started by the tests. In-process apps
have no background threads: the tests drive the sender with ``run_once(wait=True)``
and move the fake clock for backoff; two end-to-end tests use a real server process.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dispatch.config.settings import Settings, SettingsError, load_settings
from tests.conftest import API_KEY, BOTH_BACKENDS, JOB, START, FakeClock
from tests.support.helpers import poll
from tests.support.server import Server

pytestmark = BOTH_BACKENDS

SECRET = "whsec-0123456789abcdef"
WEBHOOK_ENV = {"DISTCONV_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "DISTCONV_WEBHOOK_SECRET": SECRET}
OUTPUT = "http://example.com/out.mp4"


# ------------------------------------------------- the receiver's side: verify

def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float,
           tolerance: float = 300) -> bool:
    """Whether a request is a genuine, fresh DistConv webhook.

    ``X-DistConv-Signature`` must be ``sha256=`` + the hex HMAC-SHA256, keyed with the
    shared secret, of ``"<X-DistConv-Timestamp>." + body`` (the raw body bytes), and the
    timestamp (Unix seconds) at most ``tolerance`` seconds from ``now``, so that a
    captured request cannot be replayed later. Header names are case-insensitive.
    """
    fields = {name.lower(): value for name, value in headers.items()}
    timestamp = fields.get("x-distconv-timestamp", "")
    signature = fields.get("x-distconv-signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(f"sha256={mac.hexdigest()}".encode(), signature.encode())


# ------------------------------------------------------------------ receivers

@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int  # what the receiver answered
    at: float  # time.time() on arrival


class Receiver:
    """An HTTP receiver on 127.0.0.1 that records every request. It answers 500 to the
    first ``fail_first`` requests, then ``status`` (changeable while it runs), with a
    ``Location`` header when given."""

    def __init__(self, fail_first: int = 0, status: int = 200,
                 location: str | None = None) -> None:
        self.fail_first = fail_first
        self.status = status
        self.location = location
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    failing = len(receiver.requests) < receiver.fail_first
                    status = 500 if failing else receiver.status
                    receiver.requests.append(Received(
                        self.command, self.path,
                        {name.lower(): value for name, value in self.headers.items()},
                        body, status, time.time()))
                self.send_response(status)
                if receiver.location is not None:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # a followed redirect would be recorded too

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       name="receiver",
                                       daemon=True)
        self.thread.start()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class DeadReceiver:
    """A receiver that accepts connections on 127.0.0.1 and never reads nor answers;
    ``held`` counts the connections it is sitting on."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="dead-receiver",
                                       daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.connections.append(conn)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self.connections)

    def close(self) -> None:
        self._stopped.set()
        self.thread.join(10)
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Start receivers (arguments as Receiver's); all are closed after the test."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture
def dead_receiver() -> Iterator[DeadReceiver]:
    dead = DeadReceiver()
    yield dead
    dead.close()


# ------------------------------------------------------------------ helpers

@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """This module's default app: callbacks to 127.0.0.1 allowed, signed with SECRET."""
    return make_settings(webhook_allowed_hosts=("127.0.0.1",), webhook_secret=SECRET,
                         webhook_timeout=5.0)


def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_json()


def seconds(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def webhook(url: str, state: str, attempts: int, next_at: float | None,
            last_error: str | None = None, delivered_at: float | None = None
            ) -> dict[str, Any]:
    """An expected ``webhook`` object, its times as seconds after START."""
    return {"url": url, "state": state, "attempts": attempts,
            "next_attempt_at": None if next_at is None else START + next_at,
            "last_error": last_error,
            "delivered_at": None if delivered_at is None else START + delivered_at}


def webhook_of(job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's ``webhook`` with its times as epoch seconds."""
    state = job["webhook"]
    if state is None:
        return None
    assert {"url", "state", "attempts", "next_attempt_at", "last_error",
            "delivered_at"} == set(state)
    return {**state, "next_attempt_at": seconds(state["next_attempt_at"]),
            "delivered_at": seconds(state["delivered_at"])}


def payload(job: dict[str, Any]) -> dict[str, Any]:
    """What a webhook carries: the job's fields as the finishing answer gave them."""
    return {key: value for key, value in job.items() if key not in ("waiting_reason",
                                                                     "webhook")}


def deliver(app: Flask) -> int:
    """One round of the sender, waiting for its attempts; how many it started."""
    return app.extensions["dispatch.runtime"].sender.run_once(wait=True)


def finish(client: FlaskClient, job_id: str, how: str) -> dict[str, Any]:
    """Bring a pending job to its end: ``complete``, ``fail`` (for good: submit it with
    max_retries 0) or ``cancel``; returns the answer."""
    headers = {"X-API-Key": API_KEY}
    if how == "cancel":
        return ok(client.delete(f"/jobs/{job_id}", headers=headers))
    ok(client.post("/engines/heartbeat", json={"engine_id": "e1", "supported_codecs": ["h264"]},
                   headers=headers))
    assert job_id == ok(client.post("/assign_job/", json={"engine_id": "e1"},
                                    headers=headers))["job_id"]
    if how == "complete":
        return ok(client.post(f"/jobs/{job_id}/complete", json={"output_url": OUTPUT},
                              headers=headers))
    return ok(client.post(f"/jobs/{job_id}/fail", json={"error_message": "boom"},
                          headers=headers))


def get_job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    return ok(client.get(f"/jobs/{job_id}", headers={"X-API-Key": API_KEY}))


# ------------------------------------------------------- signing and content

def test_completed_job_is_posted_signed_to_its_callback(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver], clock: FakeClock) -> None:
    """On completion the job's JSON is POSTed once to its callback with the three
    headers; the signature verifies with the secret; the job shows the delivery."""
    hook = receiver()
    job = submit(callback_url=hook.url)
    assert (hook.url, None) == (job["callback_url"], job["webhook"])
    clock.advance(5)

    done = finish(client, job["job_id"], "complete")
    assert webhook(hook.url, "pending", 0, 5) == webhook_of(done)

    assert 1 == deliver(app)

    [request] = hook.received()
    assert ("POST", "/hook", 200) == (request.method, request.path, request.status)
    assert "application/json" == request.headers["content-type"]
    assert str(int(clock.now)) == request.headers["x-distconv-timestamp"]
    assert f"{job['job_id']}.1.1" == request.headers["x-distconv-delivery"]
    assert verify(SECRET, request.headers, request.body, now=clock.now)
    assert payload(done) == orjson.loads(request.body)
    assert "completed" == orjson.loads(request.body)["status"]
    assert webhook(hook.url, "delivered", 1, None, None, 5) == webhook_of(
        get_job(client, job["job_id"]))
    assert 0 == deliver(app)


def test_verify_refuses_forgeries_and_stale_requests(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver], clock: FakeClock) -> None:
    """The receiver-side helper accepts the genuine request only: not another secret, a
    changed body or timestamp, a missing or unprefixed signature, nor a timestamp more
    than 5 minutes off."""
    hook = receiver()
    finish(client, submit(callback_url=hook.url)["job_id"], "cancel")
    deliver(app)
    [request] = hook.received()
    headers, body, sent = request.headers, request.body, clock.now
    stamp = int(headers["x-distconv-timestamp"])
    bare = headers["x-distconv-signature"].removeprefix("sha256=")

    assert verify(SECRET, headers, body, now=sent)
    assert verify(SECRET, {name.upper(): value for name, value in headers.items()}, body,
                  now=sent)
    assert verify(SECRET, headers, body, now=sent + 299)
    assert verify(SECRET, headers, body, now=sent - 299)
    assert not verify("another-secret-0123", headers, body, now=sent)
    assert not verify(SECRET, headers, body + b" ", now=sent)
    assert not verify(SECRET, headers, body.replace(b"cancelled", b"completed"), now=sent)
    assert not verify(SECRET, {**headers, "x-distconv-timestamp": str(stamp + 1)}, body,
                      now=sent)
    assert not verify(SECRET, {**headers, "x-distconv-signature": bare}, body, now=sent)
    assert not verify(SECRET, {k: v for k, v in headers.items()
                               if k != "x-distconv-signature"}, body, now=sent)
    assert not verify(SECRET, headers, body, now=sent + 301)
    assert not verify(SECRET, headers, body, now=sent - 301)


@pytest.mark.parametrize(("how", "status"), [("fail", "failed"), ("cancel", "cancelled")])
def test_failed_and_cancelled_jobs_are_posted_too(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver], clock: FakeClock, how: str, status: str) -> None:
    """A job that fails for good or is cancelled is POSTed as well, with its status."""
    hook = receiver()
    job = submit(callback_url=hook.url, max_retries=0)

    done = finish(client, job["job_id"], how)
    assert 1 == deliver(app)

    [request] = hook.received()
    assert status == done["status"]
    assert payload(done) == orjson.loads(request.body)
    assert verify(SECRET, request.headers, request.body, now=clock.now)
    assert "delivered" == get_job(client, job["job_id"])["webhook"]["state"]


def test_no_delivery_without_callback_or_before_the_end(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver]) -> None:
    """Jobs without a callback are never POSTed (``webhook`` stays null), nor is a job
    with one before it finishes, nor a failed attempt that is retried."""
    hook = receiver()
    plain = submit()
    waiting = submit(callback_url=hook.url, target_codec="vp9")
    retried = submit(callback_url=hook.url, max_retries=3)

    plain_done = finish(client, plain["job_id"], "complete")
    requeued = finish(client, retried["job_id"], "fail")

    assert 0 == deliver(app)
    assert [] == hook.received()
    assert (None, None) == (plain_done["webhook"], requeued["webhook"])
    assert "pending" == requeued["status"]
    assert None is get_job(client, waiting["job_id"])["webhook"]


def test_a_retried_job_notifies_its_new_outcome(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver], clock: FakeClock) -> None:
    """Failed (notified), retried by hand, then completed: a second delivery carries the
    completion."""
    hook = receiver()
    job_id = submit(callback_url=hook.url, max_retries=0)["job_id"]
    finish(client, job_id, "fail")
    deliver(app)
    ok(client.post(f"/jobs/{job_id}/retry", headers={"X-API-Key": API_KEY}))
    clock.advance(1)

    done = finish(client, job_id, "complete")
    assert webhook(hook.url, "pending", 0, 1) == webhook_of(done)
    assert 1 == deliver(app)

    assert ["failed", "completed"] == [orjson.loads(r.body)["status"]
                                       for r in hook.received()]
    # Distinct notification numbers: a receiver that drops repeated ids keeps both.
    assert [f"{job_id}.1.1", f"{job_id}.2.1"] == [r.headers["x-distconv-delivery"]
                                                  for r in hook.received()]
    assert payload(done) == orjson.loads(hook.received()[-1].body)
    assert webhook(hook.url, "delivered", 1, None, None, 1) == webhook_of(
        get_job(client, job_id))


# ----------------------------------------------------------------- retries

def test_failing_receiver_is_retried_with_backoff_then_succeeds(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver], clock: FakeClock) -> None:
    """500, 500, then 200: attempts 1 s then 2 s apart (nothing is sent before it is
    due); the job shows each failure, then the delivery; every attempt is signed."""
    hook = receiver(fail_first=2)
    job_id = submit(callback_url=hook.url)["job_id"]
    done = finish(client, job_id, "cancel")

    assert 1 == deliver(app)
    assert webhook(hook.url, "pending", 1, 1, "HTTP 500") == webhook_of(
        get_job(client, job_id))
    assert 0 == deliver(app)  # not due yet
    clock.advance(1)
    assert 1 == deliver(app)
    assert webhook(hook.url, "pending", 2, 3, "HTTP 500") == webhook_of(
        get_job(client, job_id))
    clock.advance(1)
    assert 0 == deliver(app)
    clock.advance(1)
    assert 1 == deliver(app)

    assert webhook(hook.url, "delivered", 3, None, None, 3) == webhook_of(
        get_job(client, job_id))
    requests_ = hook.received()
    assert [500, 500, 200] == [r.status for r in requests_]
    assert [f"{job_id}.1.{n}" for n in (1, 2, 3)] == [
        r.headers["x-distconv-delivery"] for r in requests_]
    assert all(r.body == requests_[0].body for r in requests_)
    assert payload(done) == orjson.loads(requests_[0].body)
    assert all(verify(SECRET, r.headers, r.body, now=clock.now) for r in requests_)


def test_delivery_gives_up_after_webhook_retry_for(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        receiver: Callable[..., Receiver], clock: FakeClock) -> None:
    """A receiver that always fails: retried (1 s, 2 s, 4 s ...) until webhook_retry_for
    has passed since the first attempt, then ``failed`` and never sent again."""
    app = make_app(make_settings(webhook_allowed_hosts=("127.0.0.1",), webhook_secret=SECRET,
                                 webhook_retry_for=5))
    client = app.test_client()
    hook = receiver(fail_first=1_000)
    job_id = ok(client.post("/jobs/", json={**JOB, "callback_url": hook.url},
                            headers={"X-API-Key": API_KEY}), 201)["job_id"]
    finish(client, job_id, "cancel")

    for wait in (0, 1, 2, 4):  # attempts at 0, 1, 3 and 7 s
        clock.advance(wait)
        assert 1 == deliver(app)
    clock.advance(3600)

    assert 0 == deliver(app)
    assert webhook(hook.url, "failed", 4, None, "HTTP 500") == webhook_of(
        get_job(client, job_id))
    assert 4 == len(hook.received())


def test_pending_delivery_survives_a_restart(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        settings: Settings, make_app: Callable[..., Flask],
        receiver: Callable[..., Receiver], clock: FakeClock) -> None:
    """A delivery whose first attempt failed is durable: a restarted app sends the next
    attempt when it is due, and it is delivered."""
    hook = receiver(fail_first=1)
    job_id = submit(callback_url=hook.url)["job_id"]
    finish(client, job_id, "cancel")
    deliver(app)
    app.extensions["dispatch.runtime"].shutdown()

    app = make_app(settings)
    client = app.test_client()
    assert webhook(hook.url, "pending", 1, 1, "HTTP 500") == webhook_of(
        get_job(client, job_id))
    clock.advance(1)
    assert 1 == deliver(app)

    assert webhook(hook.url, "delivered", 2, None, None, 1) == webhook_of(
        get_job(client, job_id))
    assert [f"{job_id}.1.1", f"{job_id}.1.2"] == [
        r.headers["x-distconv-delivery"] for r in hook.received()]


def test_redirects_are_not_followed(
        app: Flask, client: FlaskClient, submit: Callable[..., dict[str, Any]],
        receiver: Callable[..., Receiver]) -> None:
    """A 3xx answer is a failed attempt; the server never goes where it points."""
    target = receiver()
    hook = receiver(status=307, location=target.url + "/elsewhere")
    job_id = submit(callback_url=hook.url)["job_id"]
    finish(client, job_id, "cancel")

    deliver(app)

    assert [307] == [r.status for r in hook.received()]
    assert [] == target.received()
    assert webhook(hook.url, "pending", 1, 1, "HTTP 307") == webhook_of(
        get_job(client, job_id))


def test_dead_receiver_times_out_without_holding_the_api(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        dead_receiver: DeadReceiver) -> None:
    """While an attempt hangs on a receiver that never answers, the API keeps serving;
    the attempt ends at webhook_timeout as a failure, to be retried."""
    app = make_app(make_settings(webhook_allowed_hosts=("127.0.0.1",), webhook_secret=SECRET,
                                 webhook_timeout=3.0))
    client = app.test_client()
    headers = {"X-API-Key": API_KEY}
    job_id = ok(client.post("/jobs/", json={**JOB, "callback_url": dead_receiver.url},
                            headers=headers), 201)["job_id"]
    finish(client, job_id, "cancel")

    assert 1 == app.extensions["dispatch.runtime"].sender.run_once()  # does not wait
    poll(lambda: dead_receiver.held, 10, "connection to the dead receiver")
    other = ok(client.post("/jobs/", json=JOB, headers=headers), 201)
    ok(client.delete(f"/jobs/{other['job_id']}", headers=headers))
    assert 0 == get_job(client, job_id)["webhook"]["attempts"]  # still hanging

    state = poll(lambda: webhook_of(get_job(client, job_id)) if get_job(
        client, job_id)["webhook"]["attempts"] else None, 15, "recorded attempt")
    assert "timed out" in state["last_error"]
    assert webhook(dead_receiver.url, "pending", 1, 1, state["last_error"]) == state


# ------------------------------------------------------------- refusals

def test_callback_refused_when_no_hosts_are_allowed(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings]) -> None:
    """Without webhook_allowed_hosts every callback_url is a 400 naming the field."""
    client = make_app(make_settings()).test_client()

    response = client.post("/jobs/", json={**JOB, "callback_url": "http://127.0.0.1:9/hook"},
                           headers={"X-API-Key": API_KEY})

    body = ok(response, 400)
    error = body["error"]
    assert {"error": {"code": "validation_error", "message": error["message"],
                      "details": {"callback_url": error["details"]["callback_url"]}}} == body
    assert [str] == [type(m) for m in error["details"]["callback_url"]]
    assert 0 == ok(client.get("/jobs/", headers={"X-API-Key": API_KEY}))["total"]


@pytest.mark.parametrize("url", [
    "http://example.com/hook",
    "http://127.0.0.2/hook",
    "http://localhost/hook",
    "http://127.0.0.1.example.com/hook",
    "http://127.0.0.1@example.com/hook",
    "http://user:secret@127.0.0.1/hook",
    "ftp://127.0.0.1/hook",
    "file:///etc/passwd",
    "http:///hook",
    "not a url",
])
def test_callback_to_a_host_outside_the_list_is_400(
        client: FlaskClient, auth: dict[str, str], url: str) -> None:
    """Only http(s) URLs to a listed host, without credentials, may be called back."""
    body = ok(client.post("/jobs/", json={**JOB, "callback_url": url}, headers=auth), 400)

    assert "validation_error" == body["error"]["code"]
    assert ["callback_url"] == list(body["error"]["details"])
    assert 0 == ok(client.get("/jobs/", headers=auth))["total"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook",
    "https://127.0.0.1/hook",
    "http://127.0.0.1:8443/hooks/distconv?team=video",
    "HTTP://127.0.0.1/hook",
])
def test_callback_to_a_listed_host_is_accepted(
        submit: Callable[..., dict[str, Any]], url: str) -> None:
    """Any http(s) URL on a listed host (any port when the entry has none) is kept."""
    assert url == submit(callback_url=url)["callback_url"]


def test_a_listed_host_with_port_allows_that_port_only(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings]) -> None:
    """An allowed-hosts entry ``host:port`` allows that port and no other."""
    client = make_app(make_settings(webhook_allowed_hosts=("127.0.0.1:8443",),
                                    webhook_secret=SECRET)).test_client()
    headers = {"X-API-Key": API_KEY}

    ok(client.post("/jobs/", json={**JOB, "callback_url": "https://127.0.0.1:8443/h"},
                   headers=headers), 201)
    ok(client.post("/jobs/", json={**JOB, "callback_url": "https://127.0.0.1:9443/h"},
                   headers=headers), 400)


def test_allowed_hosts_without_a_secret_refuse_to_start() -> None:
    """Callbacks must be signed: allowed hosts without webhook_secret is a settings error."""
    with pytest.raises(SettingsError, match="webhook_secret"):
        load_settings([], {"DISTCONV_API_KEY": API_KEY,
                           "DISTCONV_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"})


# ------------------------------------------------------ a real server process

def _config(folder: Path, text: str) -> str:
    path = folder / "server.conf"
    path.write_text(text)
    return str(path)


@pytest.mark.e2e
def test_restart_between_attempts_still_delivers(
        tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    """The receiver fails; the server is stopped (SIGTERM) after the first failed attempt
    shows on the job; the receiver recovers; the restarted server delivers, continuing
    the attempt count, with a valid signature."""
    hook = receiver(status=500)
    server = Server(tmp_path, API_KEY, "--config", _config(tmp_path, "webhook_timeout = 1\n"),
                    env=WEBHOOK_ENV).start()
    try:
        job = server.request("POST", "/jobs/", json={**JOB, "callback_url": hook.url})
        assert 201 == job.status_code, job.text
        job_id = job.json()["job_id"]
        cancelled = server.request("DELETE", f"/jobs/{job_id}").json()

        def state() -> dict[str, Any]:
            return server.request("GET", f"/jobs/{job_id}").json()["webhook"]

        failed = poll(lambda: state() if state()["attempts"] >= 1 else None, 20,
                      "failed first attempt")
        assert ("pending", "HTTP 500") == (failed["state"], failed["last_error"])
        assert 0 == server.terminate()
        hook.status = 200
        restarted_at = time.time()
        server.start()

        delivered = poll(lambda: (lambda s: s if s["state"] == "delivered" else None)(
            state()), 30, "delivery after the restart")
    finally:
        server.stop()

    sent = hook.received()
    assert [500] * (len(sent) - 1) + [200] == [r.status for r in sent]
    assert sent[-1].at > restarted_at
    assert {"url": hook.url, "state": "delivered", "attempts": len(sent),
            "next_attempt_at": None, "last_error": None,
            "delivered_at": delivered["delivered_at"]} == delivered
    assert [f"{job_id}.1.{n}" for n in range(1, len(sent) + 1)] == [
        r.headers["x-distconv-delivery"] for r in sent]
    assert all(verify(SECRET, r.headers, r.body, now=r.at) for r in sent)
    assert payload(cancelled) == orjson.loads(sent[-1].body)


@pytest.mark.e2e
def test_dead_receiver_never_slows_post_jobs(tmp_path: Path,
                                             dead_receiver: DeadReceiver) -> None:
    """With every sender thread hung on a receiver that never answers, POST /jobs/ (with
    callbacks to that receiver) and DELETE answer as fast as with no callbacks at all
    (p95 well under half a second)."""
    timeout = 30
    server = Server(tmp_path, API_KEY, "--config",
                    _config(tmp_path, f"webhook_timeout = {timeout}\n"),
                    env=WEBHOOK_ENV).start()

    def timed(method: str, path: str, **kwargs: Any) -> tuple[float, requests.Response]:
        started = time.perf_counter()
        response = server.request(method, path, **kwargs)
        return time.perf_counter() - started, response

    def p95(samples: list[float]) -> float:
        return statistics.quantiles(samples, n=20)[-1]

    try:
        plain = []
        for _ in range(40):
            took, response = timed("POST", "/jobs/", json=JOB)
            assert 201 == response.status_code
            plain.append(took)
        for _ in range(8):  # more deliveries than the sender has threads
            job_id = server.request("POST", "/jobs/", json={
                **JOB, "callback_url": dead_receiver.url}).json()["job_id"]
            assert 200 == server.request("DELETE", f"/jobs/{job_id}").status_code
        poll(lambda: dead_receiver.held >= 4, 20, "sender threads hung on the receiver")
        hung_at = time.monotonic()

        hooked, cancels = [], []
        for _ in range(40):
            took, response = timed("POST", "/jobs/",
                                   json={**JOB, "callback_url": dead_receiver.url})
            assert 201 == response.status_code
            hooked.append(took)
            took, response = timed("DELETE", f"/jobs/{response.json()['job_id']}")
            assert 200 == response.status_code
            cancels.append(took)
        measured_for = time.monotonic() - hung_at
    finally:
        server.stop()

    assert measured_for < timeout, "the senders were released before the measurement ended"
    assert p95(plain) < 0.5, plain
    assert p95(hooked) < 0.5, hooked
    assert p95(cancels) < 0.5, cancels
