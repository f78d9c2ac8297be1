"""A real ``dispatch-server`` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).with_name("dispatch-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, workdir: Path, api_key: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.headers = {"X-API-Key": api_key}
        self.args = ["--port", str(self.port), *args]
        self.command = [str(BIN), *self.args]  # a test may start another entry point
        # Its temporary files (the metrics folder of several workers) in the test's
        # folder: a server killed with SIGKILL cannot remove them itself.
        self.env = {**os.environ, "DISTCONV_API_KEY": api_key, "TMPDIR": str(workdir),
                    **(env or {})}
        self.log = workdir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    def start(self, wait: bool = True, timeout: float = 20.0) -> Server:
        handle = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        handle.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers)
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.url + path, **kwargs)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd stop does; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9 on the whole process group (master and worker), like a crash."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        # The worker dies with the master; wait until it is gone and its lock freed.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        self.session.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
