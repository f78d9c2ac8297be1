"""Issue #13, item 3: state files written by the C++ server.

Both of its layouts (the benchmark one with ``id``/``codec``, and the README's with
``job_id``/``target_codec``) use epoch milliseconds and ``""`` for none. They load,
their jobs run, and the fields this server does not know survive snapshots and
restarts. A job that could never run stops the start, naming the job and field."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask

from dispatch.config.settings import Settings
from dispatch.domain.errors import StateError
from dispatch.domain.models import format_time

Json = dict[str, Any]
BIN = Path(sys.executable).with_name("dispatch-server")
CREATED_MS = 1771301536301  # 2026-02-17, as the original wrote it

BENCHMARK_LAYOUT: Json = {
    "engines": {},
    "jobs": {
        "job_0": {"id": "job_0", "codec": "h264", "source_url": "http://example.com/0.mp4",
                  "job_size": 10, "priority": 0, "status": "pending", "assigned_engine": "",
                  "output_url": "", "error_message": "", "retries": 0, "max_retries": 3,
                  "created_at": CREATED_MS, "updated_at": CREATED_MS,
                  "metadata": '{"run":"bench-7","frames":1200}'},
        "job_1": {"id": "job_1", "codec": "libx265", "source_url": "http://example.com/1.mp4",
                  "job_size": 20, "priority": 0, "status": "pending", "assigned_engine": "",
                  "output_url": "", "error_message": "", "retries": 0, "max_retries": 3,
                  "created_at": CREATED_MS + 1, "updated_at": CREATED_MS + 1,
                  "metadata": {"run": "bench-7", "tags": ["a", "b"]}},
    },
}

README_LAYOUT: Json = {
    "jobs": {
        "1771301536301000_0": {
            "job_id": "1771301536301000_0", "source_url": "http://example.com/r.mp4",
            "target_codec": "vp9", "job_size": 5.5, "priority": 2, "status": "pending",
            "assigned_engine": "", "output_url": "", "error_message": "", "retries": 1,
            "max_retries": 3, "created_at": CREATED_MS, "updated_at": CREATED_MS + 5000,
            "customer": "acme",
        },
        "1771301536200000_1": {
            "job_id": "1771301536200000_1", "source_url": "http://example.com/done.mp4",
            "target_codec": "h264", "job_size": 1, "status": "completed",
            "assigned_engine": "engine-old", "output_url": "http://out/done.mp4",
            "error_message": "", "created_at": CREATED_MS - 100,
            "completed_at": CREATED_MS + 60000,
        },
    },
    "engines": {
        "engine-old": {"engine_id": "engine-old", "supported_codecs": ["libvpx-vp9", "h264"],
                       "status": "idle", "storage_capacity_gb": 100.0,
                       "streaming_support": False, "last_heartbeat": CREATED_MS + 1000,
                       "local_job_queue": "[]", "encoders": "libx264 libvpx-vp9",
                       "cpu_temperature": 51.0, "jobs_completed": 1},
    },
}


@pytest.fixture
def state_file(settings: Settings) -> Path:
    return Path(settings.state_file)


def write(path: Path, document: Json) -> bytes:
    raw = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    path.write_bytes(raw)
    return raw


def restart(app: Flask, make_app: Callable[..., Flask], settings: Settings) -> Flask:
    """A clean stop (final snapshot) and a new start on the same files."""
    app.extensions["dispatch.runtime"].shutdown()
    return make_app(settings)


def crashed_copy(state_file: Path, make_app: Callable[..., Flask], settings: Settings,
                 ) -> Flask:
    """A start on a copy of the files as a crash would leave them: the state file as
    it was, the journal holding the changes since."""
    copy = state_file.parent / "crashed"
    copy.mkdir()
    for name in ("server_state.json", "server_state.json.wal"):
        shutil.copyfile(state_file.parent / name, copy / name)
    return make_app(dataclasses.replace(settings, state_file=str(copy / state_file.name)))


def get(app: Flask, auth: dict[str, str], path: str) -> Json:
    response = app.test_client().get(path, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def post(app: Flask, auth: dict[str, str], path: str, body: Json) -> Any:
    return app.test_client().post(path, json=body, headers=auth)


def run_job(app: Flask, auth: dict[str, str], engine_id: str, job_id: str) -> None:
    got = post(app, auth, "/assign_job/", {"engine_id": engine_id})
    assert got.status_code == 200, got.get_data(as_text=True)
    assert got.get_json()["job_id"] == job_id
    done = post(app, auth, f"/jobs/{job_id}/complete",
                {"output_url": f"http://out.example.com/{job_id}.mp4"})
    assert done.status_code == 200 and done.get_json()["status"] == "completed"


def saved_jobs(path: Path) -> Json:
    document = orjson.loads(path.read_bytes())
    assert document["version"] == 2
    return document["jobs"]


def test_benchmark_layout_loads_runs_and_keeps_unknown_fields(
        make_app: Callable[..., Flask], settings: Settings, state_file: Path,
        auth: dict[str, str]) -> None:
    write(state_file, BENCHMARK_LAYOUT)
    app = make_app(settings)
    job = get(app, auth, "/jobs/job_0")
    assert (job["target_codec"], job["created_at"], job["updated_at"]) == (
        "h264", format_time(CREATED_MS / 1000), format_time(CREATED_MS / 1000))
    assert job["created_at"].startswith("2026-02-17T")
    assert (job["assigned_engine"], job["output_url"], job["error_message"]) == (None,) * 3
    assert "metadata" not in job and "extra" not in job
    listed = get(app, auth, "/jobs/")
    assert [j["job_id"] for j in listed["jobs"]] == ["job_0", "job_1"]

    post(app, auth, "/engines/heartbeat", {"engine_id": "e1", "supported_codecs": ["h264"]})
    run_job(app, auth, "e1", "job_0")
    # A start on the original file plus our journal.
    assert b'"version"' not in state_file.read_bytes()
    copy = crashed_copy(state_file, make_app, settings)
    assert get(copy, auth, "/jobs/job_0")["status"] == "completed"
    assert get(copy, auth, "/jobs/job_1")["status"] == "pending"
    app = restart(app, make_app, settings)
    jobs = saved_jobs(state_file)
    assert jobs["job_0"]["extra"] == {"metadata": '{"run":"bench-7","frames":1200}'}
    assert jobs["job_1"]["extra"] == {"metadata": {"run": "bench-7", "tags": ["a", "b"]}}
    assert (jobs["job_1"]["target_codec"], jobs["job_1"]["created_at"]) == (
        "libx265", (CREATED_MS + 1) / 1000)

    # Our own layout now: the job changes through the journal and a second snapshot.
    app = restart(app, make_app, settings)
    post(app, auth, "/engines/heartbeat", {"engine_id": "e2", "supported_codecs": ["hevc"]})
    run_job(app, auth, "e2", "job_1")
    app = restart(app, make_app, settings)
    jobs = saved_jobs(state_file)
    assert jobs["job_1"]["extra"] == {"metadata": {"run": "bench-7", "tags": ["a", "b"]}}
    assert jobs["job_1"]["status"] == "completed"


def test_readme_layout_loads_with_millisecond_times_and_runs(
        make_app: Callable[..., Flask], settings: Settings, state_file: Path,
        auth: dict[str, str]) -> None:
    write(state_file, README_LAYOUT)
    app = make_app(settings)
    pending = get(app, auth, "/jobs/1771301536301000_0")
    assert (pending["created_at"], pending["updated_at"]) == (
        format_time(CREATED_MS / 1000), format_time(CREATED_MS / 1000 + 5))
    assert (pending["assigned_engine"], pending["retries"], pending["priority"]) == (None, 1, 2)
    done = get(app, auth, "/jobs/1771301536200000_1")
    assert (done["status"], done["completed_at"], done["error_message"]) == (
        "completed", format_time(CREATED_MS / 1000 + 60), None)
    listed = get(app, auth, "/jobs/")
    assert [j["job_id"] for j in listed["jobs"]] == ["1771301536200000_1",
                                                     "1771301536301000_0"]
    engine = get(app, auth, "/engines/engine-old")
    assert engine["last_heartbeat"] == format_time(CREATED_MS / 1000 + 1)
    assert engine["local_job_queue"] == []
    assert engine["telemetry"] == {"encoders": "libx264 libvpx-vp9", "cpu_temperature": 51.0}

    run_job(app, auth, "engine-old", "1771301536301000_0")
    app = restart(app, make_app, settings)
    jobs = saved_jobs(state_file)
    assert jobs["1771301536301000_0"]["extra"] == {"customer": "acme"}
    assert "extra" not in jobs["1771301536200000_1"]
    document = orjson.loads(state_file.read_bytes())
    assert document["engines"]["engine-old"]["telemetry"]["encoders"] == "libx264 libvpx-vp9"
    assert get(app, auth, "/engines/engine-old")["jobs_completed"] == 2


BROKEN = [
    ("job_0", "codec", "", "target_codec"),
    ("job_0", "codec", None, "target_codec"),
    ("job_1", "source_url", "", "source_url"),
    ("job_1", "source_url", None, "source_url"),
]


@pytest.mark.parametrize(("job_id", "field", "value", "named"), BROKEN)
def test_a_job_that_cannot_run_stops_the_start_and_changes_nothing(
        make_app: Callable[..., Flask], settings: Settings, state_file: Path,
        job_id: str, field: str, value: Any, named: str) -> None:
    document = orjson.loads(orjson.dumps(BENCHMARK_LAYOUT))
    if value is None:
        del document["jobs"][job_id][field]
    else:
        document["jobs"][job_id][field] = value
    raw = write(state_file, document)
    with pytest.raises(StateError) as raised:
        make_app(settings)
    assert f"job {job_id!r}" in str(raised.value) and named in str(raised.value)
    assert state_file.read_bytes() == raw
    assert sorted(p.name for p in state_file.parent.iterdir()) == [
        "server_state.json", "server_state.json.lock"]


@pytest.mark.e2e
def test_dispatch_server_exits_1_naming_the_job_and_field(tmp_path: Path) -> None:
    document = orjson.loads(orjson.dumps(BENCHMARK_LAYOUT))
    document["jobs"]["job_1"]["codec"] = ""
    state = tmp_path / "server_state.json"
    raw = write(state, document)
    result = subprocess.run(
        [str(BIN), "--api-key", "k" * 20, "--state-file", str(state), "--port", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "job 'job_1'" in result.stderr and "target_codec" in result.stderr
    assert state.read_bytes() == raw


def test_jobs_in_hand_are_on_attempt_1_and_a_benchmark_seeds_the_average(
        make_app: Callable[..., Flask], settings: Settings, state_file: Path,
        auth: dict[str, str]) -> None:
    """The same rule as ``import-cpp``: a job the original had given out is on its
    first attempt, assigned at its last update; an engine's benchmark time seeds its
    average."""
    document = orjson.loads(orjson.dumps(README_LAYOUT))
    held = document["jobs"]["1771301536301000_0"]
    held.update(status="processing", assigned_engine="engine-old")
    document["engines"]["engine-old"]["benchmark_time"] = 12.5
    write(state_file, document)
    app = make_app(settings)
    job = get(app, auth, "/jobs/1771301536301000_0")
    assert (job["status"], job["attempt"], job["assigned_at"]) == (
        "processing", 1, format_time(CREATED_MS / 1000 + 5))
    engine = get(app, auth, "/engines/engine-old")
    assert (engine["benchmark_time"], engine["avg_benchmark_time"]) == (12.5, 12.5)
    done = post(app, auth, "/jobs/1771301536301000_0/complete",
                {"output_url": "http://out/r.mp4", "engine_id": "engine-old", "attempt": 1})
    assert done.status_code == 200, done.get_data(as_text=True)
