"""The one real-time liveness test (contract §4, Liveness): a real ``dispatch-server``
with a 1-second heartbeat timeout notices on its own that an engine went silent and
returns the engine's job to the queue. It polls against a deadline; it never sleeps a
fixed time expecting the server to be done."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import API_KEY
from tests.support.helpers import poll
from tests.support.server import Server

pytestmark = pytest.mark.e2e

ENGINE = "e2e-engine"
DEADLINE = 20.0  # seconds; the server sweeps every 0.25 s with a 1 s timeout


def ok(response: requests.Response, status: int = 200) -> Any:
    assert status == response.status_code, response.text
    return response.json()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server with a 1 s heartbeat timeout, unaffected by DISTCONV_* variables of the
    environment running the tests."""
    for name in list(os.environ):
        if name.startswith("DISTCONV_"):
            monkeypatch.delenv(name)
    server = Server(tmp_path, API_KEY, "--engine-timeout", "1")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_silent_engine_goes_offline_and_its_job_is_pending_again(server: Server) -> None:
    """An engine that holds a job and stops heartbeating is offline one timeout (1 s)
    after its last heartbeat, not before; its job is pending again with retries 1, a
    retry_at and an error_message saying the engine was lost."""
    sent = time.monotonic()
    engine = ok(server.request("POST", "/engines/heartbeat",
                               json={"engine_id": ENGINE, "supported_codecs": ["h264"]}))
    assert (ENGINE, "idle") == (engine["engine_id"], engine["status"])
    job = ok(server.request("POST", "/jobs/", json={
        "source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10,
    }), 201)
    assigned = ok(server.request("POST", "/assign_job/", json={"engine_id": ENGINE}))
    assert (job["job_id"], "assigned", ENGINE) == (
        assigned["job_id"], assigned["status"], assigned["assigned_engine"])

    def lost() -> tuple[dict[str, Any], dict[str, Any]] | None:
        engine = ok(server.request("GET", f"/engines/{ENGINE}"))
        current = ok(server.request("GET", f"/jobs/{job['job_id']}"))
        if engine["status"] == "offline" and current["status"] == "pending":
            return engine, current
        return None

    engine, requeued = poll(lost, DEADLINE, "engine offline and its job pending again")
    assert time.monotonic() - sent >= 1.0
    assert [] == engine["current_jobs"]
    assert (None, 1, None) == (requeued["assigned_engine"], requeued["retries"],
                               requeued["progress"])
    assert requeued["retry_at"] is not None
    assert re.fullmatch(rf"engine {ENGINE} lost \(no heartbeat for 1 s\)",
                        requeued["error_message"]), requeued["error_message"]

    back = ok(server.request("POST", "/engines/heartbeat", json={"engine_id": ENGINE}))
    assert ("idle", [], []) == (back["status"], back["current_jobs"], back["cancelled_jobs"])
    assert 0 == server.terminate()
