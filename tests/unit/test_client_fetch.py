"""The client's download loop (``dispatch.client.fetch``) against a loopback HTTP
server that misbehaves on purpose: a body cut short resumes with ``Range``; a server
that ignores ``Range`` is read again from the start; a refusal is the server's
message. Each time the file holds exactly the served bytes and the SHA-256 is theirs."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.client.api import Refused
from dispatch.client.fetch import fetch

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)


class Behaviour:
    def __init__(self, cut_first: bool, honour_range: bool, status: int = 200) -> None:
        self.cut_first, self.honour_range, self.status = cut_first, honour_range, status
        self.ranges: list[str | None] = []
        self.paths: list[str] = []


@pytest.fixture
def served() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour(cut_first=True, honour_range=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            asked = self.headers.get("Range")
            behaviour.ranges.append(asked)
            behaviour.paths.append(self.path)
            if behaviour.status != 200:
                body = b"no such object\n"
                self.send_response(behaviour.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            start = int(asked[6:-1]) if asked and behaviour.honour_range else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(PAYLOAD) - start))
            self.end_headers()
            if behaviour.cut_first and len(behaviour.ranges) == 1:
                self.wfile.write(PAYLOAD[:len(PAYLOAD) // 2])  # then the connection drops
                self.close_connection = True
                return
            self.wfile.write(PAYLOAD[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/out.mp4", behaviour
    finally:
        server.shutdown()
        server.server_close()


def download(url: str, path: Path) -> tuple[str, int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        return fetch(url, fd, retries=2)
    finally:
        os.close(fd)


def test_a_body_cut_short_resumes_with_range(served: tuple[str, Behaviour],
                                             tmp_path: Path) -> None:
    url, behaviour = served

    digest, size = download(url, tmp_path / "out")

    assert [None, f"bytes={len(PAYLOAD) // 2}-"] == behaviour.ranges
    assert (hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD)) == (digest, size)
    assert PAYLOAD == (tmp_path / "out").read_bytes()


def test_a_server_that_ignores_range_is_read_again_from_the_start(
        served: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, behaviour = served
    behaviour.honour_range = False

    digest, size = download(url, tmp_path / "out")

    assert 2 == len(behaviour.ranges)
    assert (hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD)) == (digest, size)
    assert PAYLOAD == (tmp_path / "out").read_bytes()


def test_a_refusal_is_the_servers_message(served: tuple[str, Behaviour],
                                          tmp_path: Path) -> None:
    url, behaviour = served
    behaviour.status = 404

    with pytest.raises(Refused) as refused:
        download(url, tmp_path / "out")

    assert "the server refused: no such object (404 http_error)" == refused.value.message


def test_the_environments_proxy_is_used(served: tuple[str, Behaviour], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """http_proxy names the loopback server: it is sent the whole URL, as a proxy is."""
    url, behaviour = served
    behaviour.cut_first = False
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", url.rsplit("/", 1)[0])

    digest, _ = download("http://media.example/out.mp4?sig=1", tmp_path / "out")

    assert ["http://media.example/out.mp4?sig=1"] == behaviour.paths
    assert hashlib.sha256(PAYLOAD).hexdigest() == digest
