"""Issue #16, the container: the images from the Dockerfile (built here, by
docker/build.sh), a server container on a named volume, the engine image transcoding a
clip against it, and docker-compose.yml with Debian's docker-compose, its `postgres`
profile too (the PostgreSQL image of docker/postgres.Dockerfile).

Needs docker, mmdebstrap and docker-compose (scripts/test-deps.sh installs them). When no
Docker daemon answers, one is started for the session and stopped afterwards. Containers
use the host's network and listen on 127.0.0.1 only; compose publishes on 127.0.0.1.
Everything created here is named distconv-test-* and removed afterwards, except the base
image (python:3.11-slim, or its stand-in), kept so the next run is faster. The images
are built once per session (tests/deploy/conftest.py) and shared with
test_docker_storage.py."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.docker import (
    API_KEY,
    ENGINE_IMAGE,
    KEY_IN_CONTAINER,
    POSTGRES_IMAGE,
    REPO,
    SERVER_IMAGE,
    Containers,
    api,
    docker,
    in_engine_image,
    logs,
    wait_healthy,
)
from tests.support.helpers import poll as wait_until
from tests.support.server import free_port

pytestmark = pytest.mark.docker

ENGINE_KEY = "docker-engine-key-0123456789abcdef"
DB_PASSWORD = "docker-db-password-0123456789abcdef"
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10}
DISTCONV_UID = 10001  # the Dockerfile's fixed uid for the distconv user
# README "Docker", live backup: a consistent copy of /app/data as a tarball on stdout.
BACKUP = "/app/docker/backup-state.sh /app/data /tmp/backup >&2 && tar -C /tmp/backup -czf - ."


def run_server(containers: Containers, volume: str, port: int, key_file: Path,
               *options: str) -> str:
    return containers.run(SERVER_IMAGE, options=(
        "--env", "DISTCONV_HOST=127.0.0.1", "--env", f"DISTCONV_PORT={port}",
        "--env", f"DISTCONV_API_KEY_FILE={KEY_IN_CONTAINER}",
        "--volume", f"{key_file}:{KEY_IN_CONTAINER}:ro",
        "--volume", f"{volume}:/app/data", *options))


def test_server_container_keeps_jobs_on_its_volume(
        images: None, containers: Containers, key_file: Path, tmp_path: Path) -> None:
    volume = containers.volume()
    port = free_port()
    started = time.monotonic()
    first = run_server(containers, volume, port, key_file)
    wait_healthy(first)
    print(f"\ndocker run to healthy: {time.monotonic() - started:.1f}s")
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] \
        == "healthy"

    # The server process (PID 1, exec'd by the entry script) is distconv's, not root's.
    status = docker("exec", first, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(DISTCONV_UID)] * 4
    assert docker("exec", first, "getent", "passwd", str(DISTCONV_UID)).startswith("distconv:")
    assert "dispatch-server" in docker("exec", first, "cat", "/proc/1/cmdline")

    submitted = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "-H", f"X-API-Key: {API_KEY}",
         "-H", "Content-Type: application/json", "-d", json.dumps(JOB),
         f"http://127.0.0.1:{port}/jobs/"], capture_output=True, text=True, timeout=30,
        check=True)
    job = json.loads(submitted.stdout)
    assert job["status"] == "pending"

    docker("restart", first)
    wait_healthy(first)
    assert api(port, "GET", f"/jobs/{job['job_id']}").json() == job

    # A live backup taken as README "Docker" takes it; restored at the end.
    backup = tmp_path / "backup.tar.gz"
    with open(backup, "wb") as out:
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--volumes-from", first,
                        "--entrypoint", "sh", SERVER_IMAGE, "-c", BACKUP], stdout=out,
                       timeout=60, check=True)

    stop_started = time.monotonic()
    docker("stop", first)
    stop_seconds = time.monotonic() - stop_started
    print(f"docker stop: {stop_seconds:.2f}s")
    assert stop_seconds < 10
    assert docker("inspect", "--format", "{{.State.ExitCode}}", first).strip() == "0"
    assert "state saved, shut down" in logs(first)
    docker("rm", "--volumes", first)

    # A new container on the same volume, reading /app/config/server.conf: the job
    # is still there, and the file's queue size (1) is in force.
    config = tmp_path / "config"
    config.mkdir()
    (config / "server.conf").write_text("job_queue_max_size = 1\n")
    config.chmod(0o755)
    second = run_server(containers, volume, port, key_file,
                        "--volume", f"{config}:/app/config:ro")
    wait_healthy(second)
    assert api(port, "GET", f"/jobs/{job['job_id']}").json() == job
    full = api(port, "POST", "/jobs/", json=JOB)
    assert full.status_code == 503
    assert full.json()["error"]["code"] == "queue_full"
    docker("stop", second)

    # The backup restored into a fresh volume serves the job too.
    restored = containers.volume()
    with open(backup, "rb") as source:
        subprocess.run(["docker", "run", "--rm", "-i", "--network", "none", "--volume",
                        f"{restored}:/app/data", "--entrypoint", "tar", SERVER_IMAGE,
                        "-C", "/app/data", "-xzf", "-"], stdin=source, timeout=60, check=True)
    third = run_server(containers, restored, port, key_file,
                       "--env", "DISTCONV_LOG_FILE=/app/logs/server.log")
    wait_healthy(third)
    assert api(port, "GET", f"/jobs/{job['job_id']}").json() == job
    # Logs into the logs volume when asked to, as README "Docker" says.
    assert f"GET /jobs/{job['job_id']}" in docker("exec", third, "cat", "/app/logs/server.log")


def test_a_bad_setting_stops_the_container_with_its_reason(
        images: None, containers: Containers) -> None:
    name = containers.run(SERVER_IMAGE, options=("--env", "DISTCONV_PORT=eighty"))
    wait_until(lambda: docker("inspect", "--format", "{{.State.Status}}", name).strip()
               == "exited", 30, "the container to exit")
    assert docker("inspect", "--format", "{{.State.ExitCode}}", name).strip() == "2"
    assert "invalid value for DISTCONV_PORT" in logs(name)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A loopback HTTP server for source clips: (its folder, its port)."""
    folder = tmp_path / "sources"
    folder.mkdir()
    folder.chmod(0o777)  # the clip is written by a container's ffmpeg
    handler: Callable[..., Any] = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_engine_image_transcodes_a_clip_against_the_server_container(
        images: None, containers: Containers, key_file: Path, tmp_path: Path,
        file_server: tuple[Path, int]) -> None:
    sources, source_port = file_server
    in_engine_image("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=duration=2:size=160x120:rate=10", "-c:v", "mpeg4",
                    "/sources/clip.avi", mounts=(f"{sources}:/sources",))
    output = tmp_path / "output"
    output.mkdir()
    output.chmod(0o777)

    # Least privilege: the engine holds an engine key bound to its id, not the admin key
    # (its health check then only sees that the server answers).
    engine_id = "docker-engine-1"
    engine_key = tmp_path / "engine_key"
    engine_key.write_text(ENGINE_KEY + "\n")
    engine_key.chmod(0o644)
    port = free_port()
    server = run_server(containers, containers.volume(), port, key_file,
                        "--env", f"DISTCONV_ENGINE_KEYS={ENGINE_KEY}@{engine_id}")
    wait_healthy(server)
    engine = containers.run(
        ENGINE_IMAGE, "--codecs", "h264", "--heartbeat-interval", "1",
        options=("--env", f"DISTCONV_ENGINE_ID={engine_id}",
                 "--env", f"DISTCONV_SERVER=http://127.0.0.1:{port}",
                 "--env", f"DISTCONV_API_KEY_FILE={KEY_IN_CONTAINER}",
                 "--volume", f"{engine_key}:{KEY_IN_CONTAINER}:ro",
                 "--volume", f"{output}:/app/output"))
    wait_healthy(engine, timeout=90)
    wait_until(lambda: api(port, "GET", f"/engines/{engine_id}").ok, 60,
               "the engine's first heartbeat")
    assert api(port, "GET", f"/engines/{engine_id}").json()["supported_codecs"] == ["h264"]

    job = api(port, "POST", "/jobs/", json={
        "source_url": f"http://127.0.0.1:{source_port}/clip.avi",
        "target_codec": "h264", "job_size": 1}).json()

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = api(port, "GET", f"/jobs/{job['job_id']}").json()
        assert body["status"] not in ("failed", "cancelled"), body
        return body if body["status"] == "completed" else None

    done = wait_until(finished, 120, "the job to complete", interval=0.5)
    prefix = "file:///app/output/"
    assert done["output_url"].startswith(prefix), done["output_url"]
    name = done["output_url"][len(prefix):]
    assert (output / name).is_file()
    probe = json.loads(in_engine_image(
        "ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
        f"/output/{name}", mounts=(f"{output}:/output:ro",)))
    assert [s["codec_name"] for s in probe["streams"]] == ["h264"]
    assert abs(float(probe["format"]["duration"]) - 2.0) < 0.3

    # An idle engine stops at once on docker stop, with status 0.
    docker("stop", engine)
    assert docker("inspect", "--format", "{{.State.ExitCode}}", engine).strip() == "0"


@pytest.fixture
def compose_project(tmp_path: Path) -> Iterator[tuple[list[str], int]]:
    """docker-compose.yml in a folder of its own, with a key file, a database password
    file, an empty config folder, and an override naming the test images: (the
    docker-compose command to use, the published port). Brought down afterwards, the
    postgres profile's services and every volume included."""
    project = tmp_path / "project"
    (project / "secrets").mkdir(parents=True)
    (project / "config").mkdir()
    shutil.copy(REPO / "docker-compose.yml", project / "docker-compose.yml")
    key = project / "secrets" / "api_key"
    key.write_text(API_KEY + "\n")
    key.chmod(0o644)
    password = project / "secrets" / "db_password"
    password.write_text(DB_PASSWORD + "\n")
    password.chmod(0o644)  # read by the server's distconv user and by postgres
    (project / "test-override.yml").write_text(
        f"services:\n  server:\n    image: {SERVER_IMAGE}\n"
        f"  engine:\n    image: {ENGINE_IMAGE}\n    command: [\"--codecs\", \"h264\"]\n"
        f"  postgres:\n    image: {POSTGRES_IMAGE}\n"
        f"  server-postgres:\n    image: {SERVER_IMAGE}\n")
    port = free_port()
    command = ["docker-compose", "--project-name", f"distconv-test-{uuid.uuid4().hex[:8]}",
               "--project-directory", str(project),
               "-f", str(project / "docker-compose.yml"),
               "-f", str(project / "test-override.yml")]
    try:
        yield command, port
    finally:
        subprocess.run([*command, "--profile", "postgres", "down", "--volumes",
                        "--timeout", "20"], capture_output=True, timeout=120, check=False,
                       env={**os.environ, "DISTCONV_HOST_PORT": str(port)})


def compose(command: list[str], *args: str, port: int = 8080, postgres_port: int = 8081,
            timeout: float = 300) -> str:
    """Run docker-compose, publishing the server on 127.0.0.1:port (and the postgres
    profile's server on postgres_port); its stdout."""
    done = subprocess.run([*command, *args], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "DISTCONV_HOST_PORT": str(port),
                               "DISTCONV_POSTGRES_HOST_PORT": str(postgres_port)})
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "docker-compose.yml", project / "docker-compose.yml")
    command = ["docker-compose", "-f", str(project / "docker-compose.yml")]
    compose(command, "config", "--quiet")
    compose(command, "--profile", "postgres", "config", "--quiet")
    compose(command, "--profile", "storage", "config", "--quiet")
    assert compose(command, "--profile", "postgres", "config", "--services").split() == [
        "server", "engine", "postgres", "server-postgres", "seaweedfs", "server-s3",
        "engine-s3"]
    assert set(compose(command, "config", "--volumes").split()) == {
        "distconv-data", "distconv-logs", "distconv-output", "distconv-work",
        "distconv-postgres", "distconv-postgres-logs", "distconv-seaweedfs",
        "distconv-s3-data", "distconv-s3-work"}
    # The server of the profile keeps its state in the profile's PostgreSQL.
    resolved = compose(command, "--profile", "postgres", "config")
    assert "DISTCONV_DATABASE_URL: postgresql://distconv@postgres:5432/distconv" in resolved
    # The storage profile's server keeps files in SeaweedFS's bucket (issue #21).
    stored = compose(command, "--profile", "storage", "config")
    assert "DISTCONV_STORAGE: s3://distconv/farm" in stored
    assert "dockerfile: docker/seaweedfs.Dockerfile" in stored


def test_compose_up_brings_server_and_engine_up_healthy(
        images: None, compose_project: tuple[list[str], int]) -> None:
    command, port = compose_project
    compose(command, "up", "--detach", "--no-build", port=port)
    server = compose(command, "ps", "--quiet", "server", port=port).strip()
    engine = compose(command, "ps", "--quiet", "engine", port=port).strip()
    assert server and engine
    wait_healthy(server, timeout=90)
    wait_healthy(engine, timeout=120)
    for container in (server, engine):
        assert docker("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}",
                      container).strip() == "unless-stopped"

    # Reached from the host through the port compose published on loopback.
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] \
        == "healthy"
    engines = api(port, "GET", "/engines/").json()["engines"]
    assert [e["status"] for e in engines] == ["idle"]
    assert engines[0]["supported_codecs"] == ["h264"]
    job = api(port, "POST", "/jobs/", json=JOB)
    assert job.status_code == 201
    mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", server))
    assert {m["Destination"] for m in mounts} >= {"/app/config", "/app/logs", "/app/data"}


def test_compose_postgres_profile_keeps_jobs_in_postgresql(
        images: None, compose_project: tuple[list[str], int]) -> None:
    command, port = compose_project
    postgres_port = free_port()
    started = time.monotonic()
    compose(command, "--profile", "postgres", "up", "--detach", "--no-build", port=port,
            postgres_port=postgres_port)

    def container(service: str) -> str:
        name = compose(command, "--profile", "postgres", "ps", "--quiet", service,
                       port=port, postgres_port=postgres_port).strip()
        assert name, f"no {service} container"
        return name

    database, server = container("postgres"), container("server-postgres")
    wait_healthy(database, timeout=60)
    wait_healthy(server, timeout=90)
    print(f"\ncompose up --profile postgres to healthy: {time.monotonic() - started:.1f}s")
    # PostgreSQL runs as its own unprivileged user, not root.
    assert docker("exec", database, "id", "-un").strip() == "postgres"
    # The server refuses a database it cannot reach at start, so healthy means on it.
    assert requests.get(f"http://127.0.0.1:{postgres_port}/health", timeout=5).json()[
        "status"] == "healthy"

    submitted = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "-H", f"X-API-Key: {API_KEY}",
         "-H", "Content-Type: application/json", "-d", json.dumps(JOB),
         f"http://127.0.0.1:{postgres_port}/jobs/"], capture_output=True, text=True,
        timeout=30, check=True)
    job = json.loads(submitted.stdout)
    assert job["status"] == "pending"
    # The job is a row of PostgreSQL's, and not in the file-backed server's farm.
    rows = docker("exec", database, "psql", "--username=distconv", "--dbname=distconv",
                  "--tuples-only", "--no-align", "--command", "SELECT job_id FROM jobs")
    assert rows.split() == [job["job_id"]]
    assert api(port, "GET", f"/jobs/{job['job_id']}").status_code == 404

    # The password from the secret file is required over the network.
    refused = subprocess.run(
        ["docker", "exec", "--env", "PGPASSWORD=wrong", database, "psql",
         "--host=127.0.0.1", "--username=distconv", "--dbname=distconv", "--command",
         "SELECT 1"], capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0
    assert "password authentication failed" in refused.stderr

    # A restarted server container reads the job back from the database.
    docker("restart", server)
    wait_healthy(server, timeout=60)
    assert api(postgres_port, "GET", f"/jobs/{job['job_id']}").json() == job
