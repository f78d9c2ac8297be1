"""Issue #13, item 4: ``dispatch-server import-cpp`` on the C++ server's SQLite state.

The databases are made here with the original's schema, in one file and in the
``dispatch_jobs.db`` + ``dispatch_engines.db`` split; the command runs as a real
process, and the server is then started on what it wrote."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dispatch.domain.models import format_time
from tests.support.server import Server

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).with_name("dispatch-server")
KEY = "import-test-key-0123456789"
CREATED_MS = 1771301536301

JOBS_SCHEMA = ("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, job_data TEXT NOT NULL, "
               "created_at DATETIME DEFAULT CURRENT_TIMESTAMP, "
               "updated_at DATETIME DEFAULT CURRENT_TIMESTAMP)")
ENGINES_SCHEMA = ("CREATE TABLE engines (engine_id TEXT PRIMARY KEY, "
                  "engine_data TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP, "
                  "updated_at DATETIME DEFAULT CURRENT_TIMESTAMP)")


def cpp_job(n: int, **fields: Any) -> dict[str, Any]:
    job_id = f"{(CREATED_MS + n) * 1000}_{n}"
    return {"job_id": job_id, "source_url": f"http://example.com/{n}.mp4",
            "target_codec": "libx264", "job_size": 10.0 + n, "priority": 0,
            "status": "pending", "assigned_engine": "", "output_url": "",
            "error_message": "", "retries": 0, "max_retries": 3,
            "created_at": CREATED_MS + n, "updated_at": CREATED_MS + n,
            "metadata": {"n": n}, **fields}


ENGINE = {"engine_id": "engine-old", "engine_type": "transcoder",
          "supported_codecs": ["h264"], "status": "idle", "storage_capacity_gb": 100.0,
          "streaming_support": False, "last_heartbeat": CREATED_MS, "encoders": "libx264",
          "local_job_queue": "[]"}

GOOD_JOBS = [cpp_job(0), cpp_job(1, status="completed", output_url="http://o/1.mp4",
                                 completed_at=CREATED_MS + 60000), cpp_job(2)]
# (SQL id, job_data, the reason the import must give)
BAD_ROWS = [
    ("broken_json", "{not json", "not valid JSON"),
    ("no_codec", orjson.dumps(cpp_job(3, job_id="no_codec", target_codec="")).decode(),
     "target_codec"),
    ("bad_status", orjson.dumps(cpp_job(4, job_id="bad_status", status="exploded")).decode(),
     "exploded"),
]


def make_db(path: Path, jobs: list[tuple[str, str]] | None,
            engines: list[tuple[str, str]] | None) -> Path:
    connection = sqlite3.connect(path)
    with connection:
        if jobs is not None:
            connection.execute(JOBS_SCHEMA)
            # The SQL created_at was reset on every save: a time the import must not use.
            connection.executemany(
                "INSERT INTO jobs (job_id, job_data, created_at) "
                "VALUES (?, ?, '2030-01-01 00:00:00')", jobs)
        if engines is not None:
            connection.execute(ENGINES_SCHEMA)
            connection.executemany("INSERT INTO engines (engine_id, engine_data) VALUES (?, ?)",
                                   engines)
    connection.close()
    path.chmod(0o444)  # read-only: the import must not need to write
    return path


def job_rows(jobs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(job["job_id"], orjson.dumps(job).decode()) for job in jobs]


ENGINE_ROWS = [("engine-old", orjson.dumps(ENGINE).decode())]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def import_cpp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")}
    return subprocess.run([str(BIN), "import-cpp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "cpp"
    folder.mkdir()
    return folder


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.stop()


def serve(started: list[Server], workdir: Path, state: Path) -> Server:
    server = Server(workdir, KEY, "--state-file", str(state))
    started.append(server)
    return server.start()


def test_one_database_imports_jobs_and_engines_and_they_run(
        tmp_path: Path, sources: Path, started: list[Server]) -> None:
    db = make_db(sources / "dispatch.db", job_rows(GOOD_JOBS) + [r[:2] for r in BAD_ROWS],
                 ENGINE_ROWS)
    before = digest(sources)
    state = tmp_path / "server_state.json"
    result = import_cpp(tmp_path, str(db), "--state-file", str(state))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"imported 3 jobs and 1 engines into {state} (3 skipped)"
    for key, _, reason in BAD_ROWS:
        assert any(line.startswith(f"skipped job {key!r}: ") and reason in line
                   for line in lines), (key, lines)
    assert digest(sources) == before, "the source database was changed"

    saved = orjson.loads(state.read_bytes())
    assert saved["version"] == 2 and len(saved["jobs"]) == 3
    assert saved["jobs"][GOOD_JOBS[0]["job_id"]]["extra"] == {"metadata": {"n": 0}}

    server = serve(started, tmp_path, state)
    job = server.request("GET", f"/jobs/{GOOD_JOBS[0]['job_id']}").json()
    # The job JSON's own millisecond time, not the SQL column's 2030.
    assert job["created_at"] == format_time(CREATED_MS / 1000)
    assert (job["target_codec"], job["assigned_engine"], job["output_url"]) == (
        "libx264", None, None)
    done = server.request("GET", f"/jobs/{GOOD_JOBS[1]['job_id']}").json()
    assert (done["status"], done["completed_at"]) == (
        "completed", format_time(CREATED_MS / 1000 + 60))
    engine = server.request("GET", "/engines/engine-old").json()
    assert engine["telemetry"] == {"encoders": "libx264"}
    # An h264 engine runs the imported libx264 jobs, oldest first.
    server.request("POST", "/engines/heartbeat",
                   json={"engine_id": "engine-new", "supported_codecs": ["h264"]})
    for expected in (GOOD_JOBS[0], GOOD_JOBS[2]):
        got = server.request("POST", "/assign_job/", json={"engine_id": "engine-new"})
        assert got.status_code == 200 and got.json()["job_id"] == expected["job_id"]
        done = server.request("POST", f"/jobs/{expected['job_id']}/complete",
                              json={"output_url": "http://out/x.mp4"})
        assert done.json()["status"] == "completed"


def test_split_databases_import_in_either_order(tmp_path: Path, sources: Path,
                                                started: list[Server]) -> None:
    jobs_db = make_db(sources / "dispatch_jobs.db", job_rows(GOOD_JOBS), None)
    engines_db = make_db(sources / "dispatch_engines.db", None, ENGINE_ROWS)
    state = tmp_path / "data" / "server_state.json"
    state.parent.mkdir()
    env_state = {"DISTCONV_STATE_FILE": str(state)}
    result = subprocess.run(
        [str(BIN), "import-cpp", str(engines_db), str(jobs_db)], cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")},
             **env_state}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"imported 3 jobs and 1 engines into {state} (0 skipped)"]
    server = serve(started, tmp_path, state)
    listed = server.request("GET", "/jobs/").json()
    assert [j["job_id"] for j in listed["jobs"]] == [j["job_id"] for j in GOOD_JOBS]
    assert server.request("GET", "/engines/engine-old").status_code == 200


def test_refuses_a_state_that_holds_jobs_and_merge_never_overwrites(
        tmp_path: Path, sources: Path, started: list[Server]) -> None:
    state = tmp_path / "server_state.json"
    server = serve(started, tmp_path, state)
    mine = server.request("POST", "/jobs/", json={
        "source_url": "http://example.com/mine.mp4", "target_codec": "vp9", "job_size": 1})
    assert mine.status_code == 201
    # An id of ours that the database also has: the database's must not replace it.
    clash = cpp_job(7, job_id=mine.json()["job_id"], source_url="http://cpp/clash.mp4")
    assert server.terminate() == 0
    db = make_db(sources / "dispatch.db", job_rows([*GOOD_JOBS, clash]), ENGINE_ROWS)

    before = digest(tmp_path)
    refused = import_cpp(tmp_path, str(db), "--state-file", str(state))
    assert refused.returncode == 1
    assert "already holds 1 jobs" in refused.stderr and "--merge" in refused.stderr
    after = digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == \
        {k: v for k, v in before.items() if not k.endswith(".lock")}

    merged = import_cpp(tmp_path, str(db), "--state-file", str(state), "--merge")
    assert merged.returncode == 0, merged.stderr
    assert f"skipped job {mine.json()['job_id']!r}: id already in the state" in merged.stdout
    assert merged.stdout.splitlines()[-1].startswith("imported 3 jobs and 1 engines")

    again = serve(started, tmp_path, state)
    kept = again.request("GET", f"/jobs/{mine.json()['job_id']}").json()
    assert kept["source_url"] == "http://example.com/mine.mp4"
    assert again.request("GET", "/jobs/").json()["total"] == 4


def test_refused_while_a_server_owns_the_state_and_on_a_bad_source(
        tmp_path: Path, sources: Path, started: list[Server]) -> None:
    state = tmp_path / "server_state.json"
    db = make_db(sources / "dispatch.db", job_rows(GOOD_JOBS), ENGINE_ROWS)
    serve(started, tmp_path, state)
    busy = import_cpp(tmp_path, str(db), "--state-file", str(state))
    assert busy.returncode == 1 and "in use by another dispatch-server" in busy.stderr

    other = tmp_path / "other_state.json"
    not_db = sources / "notes.txt"
    not_db.write_text("hello")
    empty = make_db(sources / "empty.db", None, None)
    for path, message in ((not_db, "not an SQLite database"), (empty, "no 'jobs' or"),
                          (sources / "missing.db", "no such file")):
        result = import_cpp(tmp_path, str(path), "--state-file", str(other))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not other.exists()


def test_help_and_existing_invocations(tmp_path: Path) -> None:
    """``import-cpp --help`` documents the subcommand; ``dispatch-server --help`` still
    shows the server's flags and points at it."""
    result = import_cpp(tmp_path, "--help")
    assert result.returncode == 0
    assert "PATH" in result.stdout and "--merge" in result.stdout
    assert "--state-file" in result.stdout
    top = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "--port" in top.stdout and "import-cpp" in top.stdout


def test_jobs_in_hand_are_on_attempt_1_and_a_benchmark_seeds_the_average(
        tmp_path: Path, sources: Path, started: list[Server]) -> None:
    """The original kept no attempt and no assignment time: a job it had given out is
    on its first attempt, assigned at its last update, so its holder's reports (which
    name attempt 1) are taken. An engine's benchmark time seeds its average, as its
    first heartbeat with one would."""
    updated_ms = CREATED_MS + 5000
    held = [cpp_job(n, status=status, assigned_engine="engine-old", updated_at=updated_ms)
            for n, status in ((0, "assigned"), (1, "processing"))]
    engine = {**ENGINE, "benchmark_time": 12.5}
    db = make_db(sources / "dispatch.db", job_rows(held),
                 [("engine-old", orjson.dumps(engine).decode())])
    state = tmp_path / "server_state.json"
    result = import_cpp(tmp_path, str(db), "--state-file", str(state))
    assert result.returncode == 0, result.stderr

    server = serve(started, tmp_path, state)
    for job in held:
        got = server.request("GET", f"/jobs/{job['job_id']}").json()
        assert (got["status"], got["attempt"], got["assigned_at"]) == (
            job["status"], 1, format_time(updated_ms / 1000))
    got = server.request("GET", "/engines/engine-old").json()
    assert (got["benchmark_time"], got["avg_benchmark_time"]) == (12.5, 12.5)
    done = server.request("POST", f"/jobs/{held[0]['job_id']}/complete", json={
        "output_url": "http://out/0.mp4", "engine_id": "engine-old", "attempt": 1})
    assert done.status_code == 200, done.text
    # The imported time counts as the first benchmark: a second one is averaged with it.
    recorded = server.request("POST", "/engines/benchmark_result",
                              json={"engine_id": "engine-old", "benchmark_time": 7.5})
    assert recorded.status_code == 200, recorded.text
    assert server.request("GET", "/engines/engine-old").json()["avg_benchmark_time"] == 10.0
