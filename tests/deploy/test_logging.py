"""Issue #5, operations: the log file and its rotation, lifecycle events as their own
lines with their ids, no API key in any log line, and /metrics for Prometheus."""

from __future__ import annotations

import logging
import logging.handlers
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatch.config.settings import Settings
from dispatch.runtime.logs import configure_logging
from tests.conftest import API_KEY, FakeClock
from tests.support.helpers import metric_value, scrape
from tests.support.server import Server

Json = dict[str, Any]
AUTH = {"X-API-Key": API_KEY}
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10}
CONFIGURED = ("dispatch", "gunicorn.error")  # the loggers configure_logging takes over


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers; put them back (and close the
    files it opened) so later tests see the logging they expect."""
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                    logging.getLogger(name).level) for name in CONFIGURED}
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.propagate, logger.level = propagate, level


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def wait_for_line(path: Path, pattern: str, timeout: float = 10.0) -> str:
    """The first line of ``path`` matching ``pattern``, polling until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        for line in lines(path):
            if re.search(pattern, line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} in {path}:\n"
                                 + "\n".join(lines(path)))
        time.sleep(0.05)


# ------------------------------------------------------------------ rotation

def test_hourly_rotation_keeps_at_most_log_max_files(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """log_rotation = hourly rotates the log file each hour (forced here by moving the
    handler's next rollover into the past) and keeps log_max_files rotated files."""
    log_file = tmp_path / "dispatch.log"
    settings = make_settings(log_file=str(log_file), log_rotation="hourly", log_max_files=3)
    handler = configure_logging(settings)
    assert isinstance(handler, logging.handlers.TimedRotatingFileHandler)
    assert handler.backupCount == 3
    log = logging.getLogger("dispatch.test")

    log.info("line 0")
    now = int(time.time())
    for hour in range(1, 7):
        # Each forced rollover names the rotated file after a different past hour.
        handler.rolloverAt = now - (10 - hour) * 3600
        log.info("line %d", hour)
        rotated = sorted(tmp_path.glob("dispatch.log.*"))
        assert len(rotated) == min(hour, 3), rotated
        for path in rotated:
            assert re.fullmatch(r"dispatch\.log\.\d{4}-\d{2}-\d{2}_\d{2}", path.name)

    # The live file holds only the line after the last rollover; the newest rotated
    # files hold the lines just before it, the oldest ones are gone.
    assert [line.split()[-1] for line in lines(log_file)] == ["6"]
    kept = [lines(path) for path in sorted(tmp_path.glob("dispatch.log.*"))]
    assert [[line.split()[-1] for line in content] for content in kept] == [["3"], ["4"], ["5"]]


def test_daily_rotation_and_none(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """daily rotates at midnight UTC; none (the default) writes one plain file."""
    daily = configure_logging(make_settings(log_file=str(tmp_path / "daily.log"),
                                            log_rotation="daily", log_max_files=7))
    assert isinstance(daily, logging.handlers.TimedRotatingFileHandler)
    assert (daily.when, daily.backupCount, daily.utc) == ("MIDNIGHT", 7, True)

    plain = configure_logging(make_settings(log_file=str(tmp_path / "plain.log")))
    # One plain file, reopened when moved away (an external logrotate works too).
    assert type(plain) is logging.handlers.WatchedFileHandler
    # Reconfiguring replaced (and closed) the previous handler: one file handler left.
    assert [h for h in logging.getLogger("dispatch").handlers
            if getattr(h, "_dispatch", False)] == [plain]
    logging.getLogger("dispatch.test").info("hello")
    assert lines(tmp_path / "plain.log")[-1].endswith("INFO dispatch.test hello")


def test_only_the_serving_process_rotates(make_settings: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    """gunicorn's master logs to the same file without rotating it (rotate=False), so
    two processes never rotate one file; it follows the file the worker rotated."""
    settings = make_settings(log_file=str(tmp_path / "d.log"), log_rotation="hourly")
    master = configure_logging(settings, rotate=False)
    assert type(master) is logging.handlers.WatchedFileHandler


# ----------------------------------------------------------- lifecycle events

@pytest.fixture
def logged_app(make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
               tmp_path: Path) -> tuple[Flask, Path]:
    log_file = tmp_path / "dispatch.log"
    settings = make_settings(log_file=str(log_file), retry_backoff_seconds=5,
                             engine_heartbeat_timeout=60)
    configure_logging(settings)
    return make_app(settings), log_file


def post(client: FlaskClient, path: str, body: Json | None = None, status: int = 200) -> Json:
    response = client.post(path, json=body or {}, headers=AUTH)
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json() if status != 204 else {}


def event_lines(log_file: Path) -> list[str]:
    return [line for line in lines(log_file) if " dispatch.events " in line]


def test_lifecycle_events_are_lines_with_their_ids(
        logged_app: tuple[Flask, Path], clock: FakeClock) -> None:
    """Assigned, completed, re-queued, failed and engine offline: each its own line, in
    order, naming the job and the engine it concerns."""
    app, log_file = logged_app
    client = app.test_client()
    post(client, "/engines/heartbeat", {"engine_id": "enc-1"})

    done = post(client, "/jobs/", JOB, 201)["job_id"]
    post(client, "/assign_job/", {"engine_id": "enc-1"})
    post(client, f"/jobs/{done}/complete", {"output_url": "http://out/a.mp4"})

    flaky = post(client, "/jobs/", {**JOB, "max_retries": 1}, 201)["job_id"]
    post(client, "/assign_job/", {"engine_id": "enc-1"})
    post(client, f"/jobs/{flaky}/fail", {"error_message": "encoder crashed"})  # re-queued
    clock.advance(6)  # past the 5 s backoff
    post(client, "/assign_job/", {"engine_id": "enc-1"})
    post(client, f"/jobs/{flaky}/fail", {"error_message": "encoder crashed"})  # failed

    lost = post(client, "/jobs/", JOB, 201)["job_id"]
    post(client, "/assign_job/", {"engine_id": "enc-1"})
    clock.advance(61)
    assert app.extensions["dispatch"].maintenance.sweep() == 1

    expected = [
        ("job submitted", f"job={done}$"),
        ("job assigned", f"job={done} engine=enc-1$"),
        ("job completed", f"job={done} engine=enc-1$"),
        ("job submitted", f"job={flaky}$"),
        ("job assigned", f"job={flaky} engine=enc-1$"),
        ("job re-queued", f"job={flaky} engine=enc-1$"),
        ("job assigned", f"job={flaky} engine=enc-1$"),
        ("job failed", f"job={flaky} engine=enc-1$"),
        ("job submitted", f"job={lost}$"),
        ("job assigned", f"job={lost} engine=enc-1$"),
        ("engine offline", "engine=enc-1$"),
        ("job re-queued", f"job={lost}$"),
    ]
    events = [line for line in event_lines(log_file) if "engine registered" not in line]
    assert len(events) == len(expected), "\n".join(events)
    for line, (what, ids) in zip(events, expected, strict=True):
        assert f" dispatch.events {what}" in line, line
        assert re.search(ids, line), line
    # The engine's loss says why its job went back to the queue.
    assert "engine enc-1 lost" in events[-1]
    assert " WARNING " in events[-2] and " WARNING " in events[-1]


def test_access_log_line_names_client_request_status_and_ids(
        logged_app: tuple[Flask, Path]) -> None:
    """Every request gets one access line: client, method and path, status, duration,
    and the job or engine it concerns."""
    app, log_file = logged_app
    client = app.test_client()
    job_id = post(client, "/jobs/", JOB, 201)["job_id"]
    assert client.get(f"/jobs/{job_id}", headers=AUTH).status_code == 200
    assert client.get("/jobs/nope", headers=AUTH).status_code == 404
    post(client, "/engines/heartbeat", {"engine_id": "enc-9"})

    access = [line for line in lines(log_file) if " dispatch.access " in line]
    pattern = r' dispatch\.access 127\.0\.0\.1 "{} {}" {} \d+\.\dms {}$'
    assert re.search(pattern.format("POST", "/jobs/", 201, f"job={job_id}"), access[0]), access
    assert re.search(pattern.format("GET", f"/jobs/{job_id}", 200, f"job={job_id}"),
                     access[1]), access
    assert re.search(pattern.format("GET", "/jobs/nope", 404, "job=nope"), access[2]), access
    assert re.search(pattern.format("POST", "/engines/heartbeat", 200, "engine=enc-9"),
                     access[3]), access


# ----------------------------------------------------------------- secrets

@pytest.mark.e2e
def test_no_log_line_contains_the_api_key(tmp_path: Path) -> None:
    """A real server at DEBUG with a log file: requests with the right key, wrong keys
    and the key where it does not belong (path, field name, query) never put the key
    in the log file or on the server's stderr."""
    key = "s3cret-" + "k" * 40
    log_file = tmp_path / "dispatch.log"
    server = Server(tmp_path, key, "--log-file", str(log_file), "--log-level", "DEBUG")
    server.start()
    try:
        right = {"X-API-Key": key}
        assert server.request("POST", "/jobs/", json=JOB, headers=right).status_code == 201
        assert server.request("GET", "/jobs/", headers=right).status_code == 200
        for wrong in ("wrong-key", key + "x", key[:-1]):
            assert server.request("GET", "/jobs/", headers={"X-API-Key": wrong}
                                  ).status_code == 401
        assert server.request("GET", "/stats", headers={}).status_code == 401
        assert server.request("GET", f"/jobs/{key}", headers=right).status_code == 404
        assert server.request("GET", f"/jobs/{key}", headers={}).status_code == 401
        assert server.request("POST", "/jobs/", json={**JOB, key: 1},
                              headers=right).status_code == 400
        assert server.request("POST", "/jobs/", json={**JOB, "job_size": key},
                              headers=right).status_code == 400
        assert server.request("GET", f"/jobs/?api_key={key}", headers=right
                              ).status_code == 400  # an unknown query parameter
        assert server.request("POST", "/engines/heartbeat", json={"engine_id": "e1",
                              "hostname": key}, headers=right).status_code == 200
        # The last request's access line is there: the file holds everything above.
        wait_for_line(log_file, r'"POST /engines/heartbeat" 200 .* engine=e1$')
        assert server.terminate() == 0
    finally:
        server.stop()

    text = log_file.read_text(encoding="utf-8")
    assert len(text.splitlines()) >= 11
    assert " DEBUG " in text or " INFO " in text
    assert key not in text
    assert key[:-1] not in text  # nor most of it
    assert '"GET /jobs/***" 404' in text  # the key in the path was redacted, not dropped
    assert key not in server.output()


# ------------------------------------------------------------------ metrics


def test_metrics_parse_and_move_with_the_jobs(
        make_app: Callable[..., Flask], settings: Settings, clock: FakeClock) -> None:
    """/metrics parses as Prometheus text and has request counts by endpoint, method
    and status, request latency by endpoint, persistence sync latency, job and engine
    counts by status and the oldest pending job's age; they change as jobs move."""
    client = make_app(settings).test_client()
    families = scrape(client)
    for name, kind in (("distconv_http_requests", "counter"),
                       ("distconv_http_request_duration_seconds", "histogram"),
                       ("distconv_persistence_sync_seconds", "histogram"),
                       ("distconv_jobs", "gauge"), ("distconv_engines", "gauge"),
                       ("distconv_oldest_pending_job_age_seconds", "gauge")):
        assert families[name].type == kind, name
    assert metric_value(families, "distconv_oldest_pending_job_age_seconds") == 0
    syncs_before = metric_value(families, "distconv_persistence_sync_seconds_count")

    post(client, "/engines/heartbeat", {"engine_id": "enc-1"})
    first = post(client, "/jobs/", JOB, 201)["job_id"]
    clock.advance(30)
    post(client, "/jobs/", JOB, 201)
    clock.advance(12)
    assert client.get("/jobs/nope", headers=AUTH).status_code == 404
    assert client.get("/jobs/", headers={"X-API-Key": "wrong"}).status_code == 401

    families = scrape(client)
    assert metric_value(families, "distconv_jobs", status="pending") == 2
    assert metric_value(families, "distconv_engines", status="idle") == 1
    assert metric_value(families, "distconv_oldest_pending_job_age_seconds") == 42
    assert metric_value(families, "distconv_http_requests_total", endpoint="/jobs/",
                        method="POST", status="201") == 2
    assert metric_value(families, "distconv_http_requests_total", endpoint="/jobs/<job_id>",
                        method="GET", status="404") == 1
    assert metric_value(families, "distconv_http_requests_total", endpoint="/jobs/",
                        method="GET", status="401") == 1
    assert metric_value(families, "distconv_http_request_duration_seconds_count",
                        endpoint="/jobs/", status="201") == 2
    assert metric_value(families, "distconv_http_request_duration_seconds_count",
                        endpoint="/jobs/", status="401") == 1
    assert metric_value(families, "distconv_http_request_duration_seconds_bucket",
                        endpoint="/jobs/", status="201", le="+Inf") == 2
    # Every acknowledged change waited for a sync: heartbeat and two submissions.
    assert metric_value(families, "distconv_persistence_sync_seconds_count") >= syncs_before + 3
    assert metric_value(families, "distconv_persistence_sync_seconds_sum") >= 0

    post(client, "/assign_job/", {"engine_id": "enc-1"})
    families = scrape(client)
    assert metric_value(families, "distconv_jobs", status="pending") == 1
    assert metric_value(families, "distconv_jobs", status="assigned") == 1
    assert metric_value(families, "distconv_engines", status="busy") == 1
    assert metric_value(families, "distconv_oldest_pending_job_age_seconds") == 12

    post(client, f"/jobs/{first}/complete", {"output_url": "http://out/a.mp4"})
    families = scrape(client)
    assert metric_value(families, "distconv_jobs", status="assigned") == 0
    assert metric_value(families, "distconv_jobs", status="completed") == 1
    assert metric_value(families, "distconv_engines", status="idle") == 1
    assert metric_value(families, "distconv_http_requests_total",
                        endpoint="/jobs/<job_id>/complete", method="POST", status="200") == 1
    # Scrapes are requests too: the three before this one are counted.
    assert metric_value(families, "distconv_http_requests_total", endpoint="/metrics",
                        method="GET", status="200") == 3
