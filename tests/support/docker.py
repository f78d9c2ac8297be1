"""Docker for the deployment tests (tests/deploy/test_docker*.py): the test images'
names, the `docker` command, containers and volumes removed after each test, waiting
for Docker's health checks. The fixtures that build the images once per session are in
tests/deploy/conftest.py."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.support.helpers import poll as wait_until

REPO = Path(__file__).resolve().parents[2]
SERVER_IMAGE = "distconv-test/dispatch-server:pytest"
ENGINE_IMAGE = "distconv-test/dispatch-engine:pytest"
POSTGRES_IMAGE = "distconv-test/postgres:pytest"
SEAWEEDFS_IMAGE = "distconv-test/seaweedfs:pytest"
API_KEY = "docker-test-key-0123456789abcdef"
KEY_IN_CONTAINER = "/run/secrets/distconv_api_key"


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    """Run a docker command; its stdout. A failure shows the command and its stderr."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True,
                          timeout=30, check=False).returncode == 0


class Containers:
    """Creates containers and volumes with unique distconv-test-* names and removes
    every one of them at the end of the test."""

    def __init__(self) -> None:
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def name(self, what: str) -> str:
        return f"distconv-test-{what}-{uuid.uuid4().hex[:8]}"

    def volume(self) -> str:
        name = self.name("data")
        docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(self, image: str, *args: str, options: tuple[str, ...] = ()) -> str:
        name = self.name("c")
        self.containers.append(name)
        docker("run", "--detach", "--name", name, "--network", "host", *options, image, *args)
        return name

    def cleanup(self) -> None:
        for name in self.containers:
            docker("rm", "--force", "--volumes", name, check=False)
        for name in self.volumes:
            docker("volume", "rm", "--force", name, check=False)


def logs(name: str) -> str:
    """What the container wrote, stdout and stderr."""
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout + done.stderr


def health(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", name).strip()


def wait_healthy(name: str, timeout: float = 60) -> float:
    """Seconds until Docker's health check calls the container healthy."""
    start = time.monotonic()

    def healthy() -> bool:
        status = health(name)
        assert status != "unhealthy", logs(name)[-3000:]
        return status == "healthy"

    wait_until(healthy, timeout, f"{name} to become healthy", interval=0.25)
    return time.monotonic() - start


def api(port: int, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{port}{path}",
                            headers={"X-API-Key": API_KEY}, timeout=10, **kwargs)


def in_engine_image(*command: str, mounts: tuple[str, ...]) -> str:
    """Run ffmpeg or ffprobe from the engine image (so the host needs neither)."""
    options = [opt for mount in mounts for opt in ("--volume", mount)]
    return docker("run", "--rm", "--network", "none", "--entrypoint", command[0],
                  *options, ENGINE_IMAGE, *command[1:])
