"""The ``dispatch-server`` console script, run as a real subprocess (contract §1, §6).

Exit status 0 for --help/--version and after SIGTERM, 1 when the state file is held by
another process, 2 for bad settings; plus the README story end to end over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

import dispatch
from tests.support.server import Server

BIN = Path(sys.executable).with_name("dispatch-server")
KEY = "cli-test-key-0123456789abcdef"

pytestmark = pytest.mark.e2e


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any DISTCONV_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")}
    env.update(extra)
    return env


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run dispatch-server to completion in tmp_path and capture its output."""
    return subprocess.run(
        [str(BIN), *args], cwd=tmp_path, env=clean_env() if env is None else env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def start_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[..., Server]]:
    """Start real servers (no inherited DISTCONV_* variables); all are stopped afterwards."""
    for name in list(os.environ):
        if name.startswith("DISTCONV_"):
            monkeypatch.delenv(name)
    servers: list[Server] = []

    def start(*args: str, wait: bool = True) -> Server:
        server = Server(tmp_path, KEY, *args)
        servers.append(server)
        return server.start(wait=wait)

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
            server.session.close()


# ------------------------------------------------------------------- help and version


def test_help_exits_zero(tmp_path: Path) -> None:
    """--help prints usage with the documented flags and exits 0, with no API key set."""
    result = run(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--api-key", "--state-file", "--config", "--log-level",
                 "--max-jobs", "--threads"):
        assert flag in result.stdout


def test_version_exits_zero(tmp_path: Path) -> None:
    """--version prints dispatch.__version__ and exits 0, with no API key set."""
    result = run(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert dispatch.__version__ in result.stdout + result.stderr


# ----------------------------------------------------------------- bad settings: exit 2


def test_no_api_key_exits_2_and_says_how(tmp_path: Path) -> None:
    """Without a key the server refuses to start (exit 2) and says to set DISTCONV_API_KEY."""
    result = run(tmp_path)
    assert result.returncode == 2
    assert "DISTCONV_API_KEY" in result.stderr
    assert not (tmp_path / "server_state.json").exists()


def test_unknown_config_key_exits_2_naming_it(tmp_path: Path) -> None:
    """An unknown key in the config file: exit 2 and the message names the key."""
    conf = tmp_path / "server.conf"
    conf.write_text("port = 8080\nmax_retires = 3\n", encoding="utf-8")
    result = run(tmp_path, "--config", str(conf), env=clean_env(DISTCONV_API_KEY=KEY))
    assert result.returncode == 2
    assert "max_retires" in result.stderr


def test_unreadable_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    """A config file that cannot be read: exit 2 and the message names the file."""
    result = run(tmp_path, "--config", str(tmp_path / "absent.conf"),
                 env=clean_env(DISTCONV_API_KEY=KEY))
    assert result.returncode == 2
    assert "absent.conf" in result.stderr


def test_bad_port_exits_2(tmp_path: Path) -> None:
    """--port abc: exit 2 with a message naming the port."""
    result = run(tmp_path, "--port", "abc", env=clean_env(DISTCONV_API_KEY=KEY))
    assert result.returncode == 2
    assert "port" in result.stderr


# --------------------------------------------------------------------- running server


def test_server_answers_health_and_exits_0_on_sigterm(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """A started server answers /health 200 without a key; SIGTERM snapshots and exits 0."""
    state = tmp_path / "state.json"
    server = start_server("--state-file", str(state))
    response = server.request("GET", "/health", headers={})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["version"] == dispatch.__version__
    response = server.request("POST", "/jobs/", json={
        "source_url": "http://example.com/a.mp4", "target_codec": "h264", "job_size": 1})
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    assert server.terminate() == 0, server.output()
    snapshot = json.loads(state.read_text(encoding="utf-8"))
    assert job_id in snapshot["jobs"], "final snapshot written on SIGTERM"


def test_second_server_on_same_state_file_exits_1(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """While one server holds the state file, a second refuses: exit 1 naming the file."""
    state = tmp_path / "shared_state.json"
    first = start_server("--state-file", str(state))
    second = start_server("--state-file", str(state), wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=30) == 1, second.output()
    assert "shared_state.json" in second.output()
    # The first one is unharmed.
    assert first.request("GET", "/health").status_code == 200
    assert first.terminate() == 0, first.output()


def test_readme_story_end_to_end(start_server: Callable[..., Server], tmp_path: Path) -> None:
    """Submit (curl -d style), heartbeat, assign, complete, read back; openapi needs no key."""
    server = start_server("--state-file", str(tmp_path / "state.json"))
    job_in = {"source_url": "http://example.com/input.mp4", "target_codec": "h264",
              "job_size": 100.5, "max_retries": 3}

    # curl -d sends the JSON body as application/x-www-form-urlencoded.
    response = server.request(
        "POST", "/jobs/", data=json.dumps(job_in),
        headers={**server.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    job_id = job["job_id"]
    assert job["status"] == "pending"
    assert job["source_url"] == job_in["source_url"]
    assert job["job_size"] == 100.5
    assert response.headers["Location"].endswith(f"/jobs/{job_id}")

    response = server.request("POST", "/engines/heartbeat", json={
        "engine_id": "engine-001", "engine_type": "transcoder",
        "supported_codecs": ["h264", "h265", "vp9"], "status": "idle",
        "storage_capacity_gb": 500.0, "streaming_support": True,
        "hostname": "worker-01.example.com", "benchmark_time": 125.5,
        "local_job_queue": [],
    })
    assert response.status_code == 200, response.text
    assert response.json()["engine_id"] == "engine-001"

    response = server.request("POST", "/assign_job/",
                              json={"engine_id": "engine-001", "capabilities": ["h264", "h265"]})
    assert response.status_code == 200, response.text
    assigned = response.json()
    assert assigned["job_id"] == job_id
    assert assigned["status"] == "assigned"
    assert assigned["assigned_engine"] == "engine-001"

    output_url = "http://storage.example.com/output.mp4"
    response = server.request("POST", f"/jobs/{job_id}/complete",
                              json={"output_url": output_url})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"

    response = server.request("GET", f"/jobs/{job_id}")
    assert response.status_code == 200
    final = response.json()
    assert final["status"] == "completed"
    assert final["output_url"] == output_url
    assert final["completed_at"] is not None

    # Nothing left to hand out.
    response = server.request("POST", "/assign_job/", json={"engine_id": "engine-001"})
    assert response.status_code == 204

    # The key is enforced on the API, but the OpenAPI document is public.
    assert server.request("GET", f"/jobs/{job_id}", headers={}).status_code == 401
    with requests.get(server.url + "/openapi.json", timeout=10) as response:
        assert response.status_code == 200
        spec = response.json()
    assert "paths" in spec
    assert any(path.startswith("/jobs") for path in spec["paths"])

    assert server.terminate() == 0, server.output()
