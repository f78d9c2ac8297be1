"""Issue #11, point 5, at the HTTP level: a 5xx, a 429 or an unreachable server is
retried (with backoff) until the server answers; another 4xx is an answer, returned at
once."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.domain.codecs import family
from dispatch.engine.capabilities import detect
from dispatch.engine.client import ServerClient, Stopped
from dispatch.engine.config import load_config
from dispatch.engine.loop import Engine
from tests.support.server import free_port


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs with the next (status, body) of the server's script."""

    def do_POST(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        server.seen.append((self.path, self.headers.get("X-API-Key"),
                            json.loads(self.rfile.read(length))))
        status, body = server.script.pop(0) if server.script else (200, {})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.script, httpd.seen = [], []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_5xx_is_retried_until_answered(scripted: Any) -> None:
    scripted.script = [(503, {"error": {"code": "unavailable", "message": "disk"}}),
                       (500, {}), (200, {"status": "completed"})]
    client = ServerClient(f"http://127.0.0.1:{scripted.server_address[1]}", "k" * 20, "e1")
    answer = client.report("j1", "complete", {"output_url": "file:///o.mp4", "attempt": 2})
    assert (answer.status, answer.body) == (200, {"status": "completed"})
    assert [path for path, _, _ in scripted.seen] == ["/jobs/j1/complete"] * 3
    assert scripted.seen[-1][1:] == ("k" * 20, {"engine_id": "e1", "output_url": "file:///o.mp4",
                                                "attempt": 2})


def test_429_is_retried_a_report_is_not_lost_to_a_block(scripted: Any) -> None:
    """A 429 (this address blocked for wrong keys, issue #24) says nothing about the
    job: the report is sent again until the server answers it."""
    scripted.script = [(429, {"error": {"code": "too_many_requests", "message": "wait"}}),
                       (200, {"status": "completed"})]
    client = ServerClient(f"http://127.0.0.1:{scripted.server_address[1]}", "k" * 20, "e1")
    answer = client.report("j1", "complete", {"output_url": "file:///o.mp4"})
    assert (answer.status, answer.body) == (200, {"status": "completed"})
    assert [path for path, _, _ in scripted.seen] == ["/jobs/j1/complete"] * 2


def test_4xx_is_an_answer(scripted: Any) -> None:
    scripted.script = [(409, {"error": {"code": "conflict", "message": "not yours"}})]
    client = ServerClient(f"http://127.0.0.1:{scripted.server_address[1]}", "k" * 20, "e1")
    answer = client.report("j1", "fail", {"error_message": "x"})
    assert (answer.status, answer.message, len(scripted.seen)) == (409, "not yours", 1)


def test_unreachable_server_is_retried_until_given_up() -> None:
    client = ServerClient(f"http://127.0.0.1:{free_port()}", "k" * 20, "e1")
    tries = []

    def give_up() -> bool:
        tries.append(1)
        return len(tries) >= 3

    with pytest.raises(Stopped):
        client.report("j1", "fail", {"error_message": "x"}, give_up=give_up)
    assert len(tries) == 3


def test_the_engine_advertises_one_codec_per_family(scripted: Any, tmp_path: Path) -> None:
    """The server matches by family: the engine names each family it encodes once, by
    the family's own name (the server's and the README's), however many names of it
    were configured."""
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg
    config = load_config([
        "--server", f"http://127.0.0.1:{scripted.server_address[1]}",
        "--work-dir", str(tmp_path), "--ffmpeg", ffmpeg,
        "--codecs", "hevc,h265,libx264,h264,mpeg4=mpeg4,libxvid=libxvid",
    ], {"DISTCONV_API_KEY": "k" * 20, "PATH": "/usr/bin:/bin"})
    engine = Engine(config, detect(ffmpeg, config.codecs), None)
    assert engine.beat_once(engine.client)
    (path, _, body), = scripted.seen
    assert path == "/engines/heartbeat"
    advertised = body["supported_codecs"]
    assert len({family(name) for name in advertised}) == len(advertised)
    assert sorted(advertised) == ["h264", "h265", "mpeg4"]
