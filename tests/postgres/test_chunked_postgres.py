"""Issue #23 on PostgreSQL: a chunked job carries on across a server restart (kill -9)
with its parent and tasks in the database, and its output is frame-exact."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chunked import (
    assert_exact,
    clip_with_audio,
    restart_mid_job,
    submit_chunked,
    wait_finished,
)
from tests.support.engine import Engine
from tests.support.files import download, upload
from tests.support.postgres import PostgresServer
from tests.support.server import Server

pytestmark = pytest.mark.e2e

KEY = "chunked-pg-key-0123456789abcdef"


@pytest.fixture
def server(postgres: PostgresServer, tmp_path: Path) -> Iterator[Server]:
    postgres.reset()
    saved = {name: os.environ.pop(name) for name in list(os.environ)
             if name.startswith(("DISTCONV_", "AWS_"))}
    server = Server(tmp_path, KEY, "--database-url", postgres.url, "--workers", "2",
                    "--storage-dir", str(tmp_path / "files"), "--engine-timeout", "5",
                    env={"DISTCONV_RETRY_BACKOFF": "0", "DISTCONV_LEADER_LEASE": "1"})
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop()
        os.environ.update(saved)


def test_a_server_restart_mid_job_carries_on(server: Server, tmp_path: Path) -> None:
    clip = clip_with_audio(tmp_path / "heavy.mp4", 30, size="640x360")
    engines = [Engine(tmp_path, server.url, KEY, name, "--codecs", "h264",
                      keep_outputs=False).start() for name in ("p1", "p2")]
    try:
        job_id = submit_chunked(server, upload(server.url, server.headers, clip)["source_url"],
                                5)
        restart_mid_job(server, job_id)
        done = wait_finished(server, job_id)
        assert done["status"] == "completed", done["error_message"]
        output = download(server.url, server.headers, job_id, tmp_path / "out.mp4")
        assert_exact(output, clip)
    finally:
        for engine in engines:
            engine.stop()
