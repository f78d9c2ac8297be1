"""Issue #21, deployment: docker-compose.yml's `storage` profile brought up for real with
Debian's docker-compose (SeaweedFS from its image, the server keeping files in its
bucket, the engine that uploads its outputs there), and a file sent in from this host
with `distconv submit` as README "Docker" shows, its result fetched back.

The images are the session's (tests/deploy/conftest.py, built once for every Docker
test). Presigned URLs name DISTCONV_S3_URL, which this host and the containers must both
reach: the address of the bridge network the test makes for the project (this host's
side of it), so SeaweedFS is published there and not beyond this machine. Project,
network and volumes are named distconv-test-* and removed afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from tests.support.docker import (
    API_KEY,
    ENGINE_IMAGE,
    REPO,
    SEAWEEDFS_IMAGE,
    SERVER_IMAGE,
    api,
    docker,
    health,
    in_engine_image,
    logs,
    wait_healthy,
)
from tests.support.server import free_port

pytestmark = pytest.mark.docker

DISTCONV = Path(sys.executable).with_name("distconv")
SERVICES = ("seaweedfs", "server-s3", "engine-s3")
S3_ACCESS_KEY = "distconv"
S3_SECRET_KEY = "docker-s3-secret-0123456789abcdef"
BUCKET, PREFIX = "distconv", "farm"  # the profile's DISTCONV_STORAGE=s3://distconv/farm


class StorageProject:
    """docker-compose.yml in a folder of its own with the profile's secrets, on a
    network of its own, the server and SeaweedFS published on free ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"distconv-test-{uuid.uuid4().hex[:8]}"
        self.network = f"{self.name}-net"
        self.server_port = free_port()
        self.s3_port = free_port()
        self.gateway = ""

    def create(self) -> None:
        (self.root / "secrets").mkdir(parents=True)
        shutil.copy(REPO / "docker-compose.yml", self.root / "docker-compose.yml")
        for name, text in (("api_key", API_KEY + "\n"), ("s3_credentials", (
                f"[default]\naws_access_key_id = {S3_ACCESS_KEY}\n"
                f"aws_secret_access_key = {S3_SECRET_KEY}\n"))):
            path = self.root / "secrets" / name
            path.write_text(text)
            path.chmod(0o644)  # read by the containers' uid 10001
        docker("network", "create", self.network)
        self.gateway = docker("network", "inspect", "--format",
                              "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                              self.network).strip()
        assert self.gateway, f"network {self.network} has no gateway address"
        (self.root / "test-override.yml").write_text(
            f"services:\n  seaweedfs:\n    image: {SEAWEEDFS_IMAGE}\n"
            f"  server-s3:\n    image: {SERVER_IMAGE}\n"
            f"  engine-s3:\n    image: {ENGINE_IMAGE}\n"
            "    command: [\"--codecs\", \"h264\", \"--heartbeat-interval\", \"1\"]\n"
            f"networks:\n  default:\n    external: true\n    name: {self.network}\n")

    @property
    def s3_url(self) -> str:
        return f"http://{self.gateway}:{self.s3_port}"

    def compose(self, *args: str, timeout: float = 300) -> str:
        """Run docker-compose on the project with the profile's variables; its stdout."""
        command = ["docker-compose", "--project-name", self.name,
                   "--project-directory", str(self.root),
                   "-f", str(self.root / "docker-compose.yml"),
                   "-f", str(self.root / "test-override.yml"), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, env={
                                  **os.environ,
                                  "DISTCONV_S3_URL": self.s3_url,
                                  "DISTCONV_S3_HOST_ADDRESS": self.gateway,
                                  "DISTCONV_S3_HOST_PORT": str(self.s3_port),
                                  "DISTCONV_S3_SERVER_HOST_PORT": str(self.server_port)})
        assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done.stdout

    def container(self, service: str) -> str:
        name = self.compose("--profile", "storage", "ps", "--quiet", service).strip()
        assert name, f"no {service} container"
        return name

    def remove(self) -> None:
        if self.gateway:
            try:
                self.compose("--profile", "storage", "down", "--volumes", "--timeout", "20",
                             timeout=120)
            finally:
                docker("network", "rm", self.network, check=False)


@pytest.fixture
def storage_project(tmp_path: Path) -> Iterator[StorageProject]:
    project = StorageProject(tmp_path / "project")
    try:
        project.create()
        yield project
    finally:
        project.remove()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def test_compose_storage_profile_takes_a_file_in_and_gives_the_result_back(
        images: None, storage_project: StorageProject, tmp_path: Path) -> None:
    project = storage_project
    started = time.monotonic()
    project.compose("--profile", "storage", "up", "--detach", "--no-build", *SERVICES)
    seaweedfs, server, engine = (project.container(service) for service in SERVICES)
    # Compose started the server once SeaweedFS was healthy, the engine once the server was.
    assert health(seaweedfs) == "healthy" and health(server) == "healthy"
    wait_healthy(engine, timeout=120)
    print(f"\ncompose --profile storage up to healthy: {time.monotonic() - started:.1f}s")

    files = tmp_path / "files"
    files.mkdir()
    files.chmod(0o777)  # the clip is written by a container's ffmpeg
    in_engine_image("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=duration=2:size=160x120:rate=10", "-c:v", "mpeg4",
                    "/files/clip.avi", mounts=(f"{files}:/files",))
    clip, result = files / "clip.avi", files / "result.mp4"

    # A person on this host: nothing but the server's URL and key.
    submitted = subprocess.run(
        [str(DISTCONV), "--server", f"http://127.0.0.1:{project.server_port}", "submit",
         str(clip), "--codec", "h264", "--wait", "--output", str(result)],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "DISTCONV_API_KEY": API_KEY})
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    result.chmod(0o644)  # distconv saved it for this user; ffprobe runs as distconv
    probe = json.loads(in_engine_image(
        "ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
        "/files/result.mp4", mounts=(f"{files}:/files:ro",)))
    assert [s["codec_name"] for s in probe["streams"]] == ["h264"]
    assert abs(float(probe["format"]["duration"]) - 2.0) < 0.3

    [job] = api(project.server_port, "GET", "/jobs/").json()["jobs"]
    assert job["status"] == "completed"
    assert job["output_url"].startswith("store://outputs/")
    assert job["output"]["size"] == result.stat().st_size
    assert job["output"]["sha256"] == sha256_of(result)

    # GET /jobs/{id}/output: a redirect to the bucket at the address every machine uses.
    answer = api(project.server_port, "GET", f"/jobs/{job['job_id']}/output",
                 allow_redirects=False)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(f"{project.s3_url}/{BUCKET}/{PREFIX}/outputs/")
    download = requests.get(location, timeout=30)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == job["output"]["sha256"]

    # Source and output are objects in SeaweedFS's bucket.
    bucket = boto3.client("s3", endpoint_url=project.s3_url, region_name="us-east-1",
                          aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=S3_SECRET_KEY)
    stored = {item["Key"]: item["Size"] for item in bucket.list_objects_v2(
        Bucket=BUCKET, Prefix=f"{PREFIX}/")["Contents"]}
    sources = {key: size for key, size in stored.items()
               if key.startswith(f"{PREFIX}/sources/")}
    assert [(key.rsplit("/", 1)[1], size) for key, size in sources.items()] == [
        ("clip.avi", clip.stat().st_size)]
    output_key = f"{PREFIX}/{job['output_url'][len('store://'):]}"
    assert stored[output_key] == result.stat().st_size

    # The engine holds no store credentials; signed URLs and the secret stay out of logs.
    assert docker("exec", engine, "ls", "/run/secrets").split() == ["distconv_api_key"]
    for container in (server, engine):
        written = logs(container)
        assert "X-Amz-Signature" not in written and S3_SECRET_KEY not in written
