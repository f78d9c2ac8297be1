"""What the engine-side file tests share: ``server``, a real server on the embedded
state and store with 5 MiB parts, unaffected by DISTCONV_* variables of the
environment (modules that need another server define their own ``server``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import Server

STORE_KEY = "files-store-key-0123456789abcdef"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for name in list(os.environ):
        if name.startswith("DISTCONV_"):
            monkeypatch.delenv(name)
    server = Server(tmp_path, STORE_KEY, "--state-file", str(tmp_path / "state.json"),
                    "--upload-part-mb", "5")
    server.start()
    try:
        yield server
    finally:
        server.stop()
