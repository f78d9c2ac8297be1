"""Fixtures of the Docker tests (tests/deploy/test_docker*.py): a daemon, and the
images built once per session for every module that uses them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker import (
    API_KEY,
    ENGINE_IMAGE,
    POSTGRES_IMAGE,
    REPO,
    SEAWEEDFS_IMAGE,
    SERVER_IMAGE,
    Containers,
    daemon_answers,
    docker,
)
from tests.support.helpers import poll as wait_until


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker daemon that answers: the machine's, or one started here as root.
    Ours runs without iptables rules and without the default bridge (it must work in a
    sandbox, and it changes nothing on the host's firewall); builds and test containers
    use the host network, compose its own user-defined bridge."""
    if shutil.which("docker") is None:
        pytest.fail("docker is not installed: run scripts/test-deps.sh as root")
    if daemon_answers():
        yield
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail("no Docker daemon answers and this user cannot start dockerd")
    root = tmp_path_factory.mktemp("dockerd")
    command = ["dockerd", "--iptables=false", "--bridge=none"]
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        # DOCKER_HOST names a socket nobody serves: a daemon of its own there, beside
        # the machine's (how this fixture is tried on a machine that has a daemon).
        command += ["--host", host, "--data-root", str(root / "data"),
                    "--exec-root", str(root / "exec"), "--pidfile", str(root / "pid")]
    log_path = root / "dockerd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or daemon_answers(), 60,
                   "dockerd to answer", interval=0.5)
        if process.poll() is not None:
            pytest.fail(f"dockerd exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def images(docker_daemon: None) -> Iterator[None]:
    """The four images, built from this checkout by docker/build.sh under test tags;
    removed afterwards (with the build stage they leave behind)."""
    started = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), SERVER_IMAGE,
                           ENGINE_IMAGE, POSTGRES_IMAGE, SEAWEEDFS_IMAGE],
                          capture_output=True, text=True,
                          timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-5000:]
    print(f"\ndocker/build.sh: {time.monotonic() - started:.1f}s")
    try:
        yield
    finally:
        docker("rmi", SERVER_IMAGE, ENGINE_IMAGE, POSTGRES_IMAGE, SEAWEEDFS_IMAGE,
               check=False)
        docker("image", "prune", "--force", "--filter", "label=distconv.stage=build",
               check=False)


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    yield made
    made.cleanup()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The API key in a file, mounted read-only into containers at KEY_IN_CONTAINER."""
    path = tmp_path / "api_key"
    path.write_text(API_KEY + "\n")
    path.chmod(0o644)  # the container's distconv user reads it
    return path
