"""The dashboard's page of a chunked job: one bar per chunk, its tasks, and a task's
link back to its job; the jobs list shows the job, not its tasks."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import JOB
from tests.ui.test_ui import (  # noqa: F401 (fixtures)
    Browser,
    admin,
    make_browser,
    settings,
    text,
    visible,
)

KINDS = ["plan", "chunk", "audio", "stitch"]
PROBE = {"duration": 30.0, "frames": 750, "frame_rate": "25/1", "start_time": 0.0,
         "width": 320, "height": 240, "variable_frame_rate": False,
         "audio": {"duration": 30.0, "streams": 1}}


def post(client: FlaskClient, auth: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body, headers=auth)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return response.get_json()


def test_a_chunked_job_page_has_a_bar_per_chunk(admin: Browser,  # noqa: F811
                                                client: FlaskClient,
                                                auth: dict[str, str]) -> None:
    parent = post(client, auth, "/jobs/", {**JOB, "chunk_seconds": 10})
    page = admin.get(f"/ui/jobs/{parent['job_id']}")
    assert "Not planned yet" in visible(page)
    post(client, auth, "/engines/heartbeat", {"engine_id": "py", "task_kinds": KINDS})
    plan = post(client, auth, "/assign_job/", {"engine_id": "py"})
    post(client, auth, f"/jobs/{plan['job_id']}/complete",
         {"engine_id": "py", "output_url": JOB["source_url"], "probe": PROBE})
    first = post(client, auth, "/assign_job/", {"engine_id": "py"})
    post(client, auth, f"/jobs/{first['job_id']}/progress", {"engine_id": "py", "progress": 40})
    page = admin.get(f"/ui/jobs/{parent['job_id']}")
    bars = re.findall(r'<progress max="100" value="([0-9.]+)" aria-label="chunk (\d), (\w+)"',
                      text(page))
    assert bars == [("40.0", "0", "processing"), ("0", "1", "pending"), ("0", "2", "pending")]
    shown = visible(page)
    assert "Chunks (generation 1)" in shown and "0–10 s on py" in shown
    assert "plan : completed · audio : pending" in shown
    task_page = admin.get(f"/ui/jobs/{first['job_id']}")
    assert f'href="/ui/jobs/{parent["job_id"]}" id="job-parent"' in text(task_page)
    listed = visible(admin.get("/ui/jobs"))
    assert parent["job_id"] in listed and first["job_id"] not in listed
