"""The real ``distconv`` console script run as a person runs it: a subprocess with
its own ``DISTCONV_*`` settings (none inherited from the test run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import API_KEY

DISTCONV = Path(sys.executable).with_name("distconv")
ESCAPE = re.compile(rb"\x1b")


@dataclass
class Run:
    status: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def client_env(server_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a ``distconv`` run: the server and key when ``server_url``
    is given, quick polls, no config file."""
    values = {key: value for key, value in os.environ.items()
              if not key.startswith("DISTCONV_")}
    values.update({"DISTCONV_CLIENT_POLL_INTERVAL": "0.2", "HOME": "/nonexistent"})
    if server_url is not None:
        values.update({"DISTCONV_SERVER": server_url, "DISTCONV_API_KEY": API_KEY})
    values.update(extra)
    return values


def run_distconv(server_url: str | None, *args: str, timeout: float = 90,
                 **extra: str) -> Run:
    """``distconv ARGS`` without a terminal (stdout and stderr are pipes)."""
    done = subprocess.run([str(DISTCONV), *args], env=client_env(server_url, **extra),
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())
