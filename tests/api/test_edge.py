"""Issue #24: what gunicorn's HTTP parser refuses is answered in the JSON error shape
(``dispatch.runtime.edge``). The status each refusal gets, the bytes written, and a real
server's answer to requests no client library would send. Oversized request heads,
directly and through nginx: tests/deploy/test_deploy.py."""

from __future__ import annotations

import http.client
import io
import socket
from pathlib import Path

import orjson
import pytest
from gunicorn.http.errors import (
    InvalidHeaderName,
    InvalidRequestLine,
    InvalidResponseHeader,
    LimitRequestHeaders,
    LimitRequestLine,
    UnsupportedTransferCoding,
)

from dispatch.config.settings import Settings
from dispatch.runtime.edge import answer, refusal
from dispatch.runtime.gunicorn_config import options
from tests.support.server import Server

KEY = "edge-test-key-0123456789abcdef"


@pytest.mark.parametrize(("exc", "status", "code"), [
    (LimitRequestLine(5000, 4094), 414, "bad_request"),
    (LimitRequestHeaders("limit request headers fields"), 431, "bad_request"),
    (InvalidRequestLine("GARBAGE"), 400, "bad_request"),
    (InvalidHeaderName("bad name"), 400, "bad_request"),
    (UnsupportedTransferCoding("gzip"), 501, "bad_request"),
    (InvalidResponseHeader("X-Bad"), 500, "internal_error"),  # the app's, not the client's
    (RuntimeError("bug"), 500, "internal_error"),
])
def test_each_refusal_gets_its_status_and_code(exc: Exception, status: int,
                                               code: str) -> None:
    got_status, got_code, message = refusal(exc)
    assert (got_status, got_code) == (status, code)
    assert message and "bug" not in message


def test_the_answer_is_a_whole_http_response_in_the_error_shape() -> None:
    raw = answer(414, "bad_request", "too long")

    class Wire(io.BytesIO):
        def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
            return io.BytesIO(raw)

    response = http.client.HTTPResponse(Wire())  # type: ignore[arg-type]
    response.begin()
    assert (response.status, response.reason) == (414, "URI Too Long")
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Connection") == "close"
    assert orjson.loads(response.read()) == {"error": {"code": "bad_request",
                                                       "message": "too long"}}


def test_gunicorn_runs_the_json_worker_with_its_limits_written_out() -> None:
    opts = options(Settings(api_key=KEY))
    assert opts["worker_class"] == "dispatch.runtime.edge.JsonErrorWorker"
    assert (opts["limit_request_line"], opts["limit_request_fields"],
            opts["limit_request_field_size"]) == (4094, 100, 8190)


@pytest.mark.e2e
def test_a_request_gunicorn_cannot_parse_gets_the_error_shape(tmp_path: Path) -> None:
    server = Server(tmp_path, KEY).start()
    try:
        for data in (b"GARBAGE\r\n\r\n",
                     b"GET /health HTTP/1.1\r\nHost: x\r\nBad\x00Name: 1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(data)
                response = http.client.HTTPResponse(sock)
                response.begin()
                assert response.status == 400
                assert response.getheader("Content-Type") == "application/json"
                error = orjson.loads(response.read())["error"]
                assert error["code"] == "bad_request" and set(error) == {"code", "message"}
        assert server.request("GET", "/health").status_code == 200
        assert "Traceback" not in server.output()
        assert server.terminate() == 0
    finally:
        server.stop()
