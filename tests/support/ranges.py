"""A loopback file server that answers HTTP ``Range`` requests (one range, as ffmpeg
asks them), or ignores them like a plain server, and counts the bytes it sent: the
sources of the chunked-encoding tests. Its POSTs stand in for the dispatch server's
engine routes (recorded, answered 200), for engine tests that need a task assigned
before the server side of issue 23 exists."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Served:
    base: str
    folder: Path
    sent: dict[str, int] = field(default_factory=dict)  # file name -> bytes sent
    # file name -> (first byte, byte after the last) of each answer, as sent
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # the heartbeat's cancelled_jobs
    lost: list[str] = field(default_factory=list)  # job ids whose reports are refused (409)

    def reports(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(route's last segment, body) of each POST about ``job_id``, in order."""
        prefix = f"/jobs/{job_id}/"
        return [(path[len(prefix):], body) for path, body in list(self.posts)
                if path.startswith(prefix)]


@contextmanager
def range_server(folder: Path, ranges: bool = True) -> Iterator[Served]:
    """Serve ``folder`` on a free loopback port; with ``ranges`` false every GET is a
    full 200 answer whatever its ``Range`` header says."""
    served = Served("", folder)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            served.posts.append((self.path, body))
            answer: dict[str, Any] = {}
            status = 200
            if "heartbeat" in self.path:
                answer = {"cancelled_jobs": list(served.cancelled)}
            elif any(self.path.startswith(f"/jobs/{job_id}/") for job_id in served.lost):
                status = 409
                answer = {"error": {"code": "conflict", "message": "not this engine's job"}}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = folder / self.path.split("?", 1)[0].lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            match = _RANGE.match(self.headers.get("Range", "")) if ranges else None
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:
                    start = max(0, size - int(match.group(2)))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            with open(path, "rb") as handle:
                handle.seek(start)
                left = end - start + 1
                sent = 0
                try:
                    while left > 0:
                        data = handle.read(min(left, 16 << 10))
                        if not data:
                            break
                        self.wfile.write(data)
                        left -= len(data)
                        sent += len(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # ffmpeg seeks by dropping the read
                finally:
                    with lock:
                        served.sent[path.name] = served.sent.get(path.name, 0) + sent
                        served.spans.setdefault(path.name, []).append((start, start + sent))

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            connection, address = super().get_request()
            # A small send buffer: what is counted as sent is close to what the
            # reader took before it dropped the connection (ffmpeg seeks that way).
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
            return connection, address

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


def copy_into(folder: Path, source: Path, name: str | None = None) -> Path:
    target = folder / (name or source.name)
    shutil.copyfile(source, target)
    return target
