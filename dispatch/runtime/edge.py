"""What gunicorn's HTTP parser refuses, answered in the contract's JSON error shape.

gunicorn refuses some requests before the app sees them (a request line longer than
``limit_request_line``, more than ``limit_request_fields`` header fields, one longer
than ``limit_request_field_size``, a request it cannot parse) and answers those with an
HTML page of its own. Its limits stay (they bound what a client can make a worker
read); this worker, gunicorn's ``gthread`` one otherwise, answers them as the app
answers everything else: ``{"error": {"code": ..., "message": ...}}``, 414 for the line,
431 for the headers, 400 for the rest. The shipped nginx site (deploy/nginx) answers its
own refusals of the same requests in the same shape.
"""

from __future__ import annotations

import socket
from ssl import SSLError
from typing import Any

import orjson
from gunicorn import util
from gunicorn.http.errors import (
    ConfigurationProblem,
    ExpectationFailed,
    ForbiddenProxyRequest,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    LimitRequestHeaders,
    LimitRequestLine,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.workers.gthread import ThreadWorker

# gunicorn's own defaults, set explicitly (dispatch.runtime.gunicorn_config) so that the
# OpenAPI document, the nginx site and the server name the same numbers.
REQUEST_LINE_LIMIT = 4094
HEADER_FIELDS_LIMIT = 100
HEADER_FIELD_SIZE_LIMIT = 8190
# After the answer, what the client still sends is read and dropped (for at most this
# long and this much), so that closing the socket does not reset the connection and
# lose the answer before the client has read it.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20

_REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long",
            417: "Expectation Failed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented"}


def refusal(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) of the answer to a request gunicorn could not serve."""
    if isinstance(exc, (InvalidResponseHeader, InvalidResponseHeaderName)):
        return 500, "internal_error", "internal server error"  # the app's fault
    if isinstance(exc, LimitRequestLine):
        return 414, "bad_request", (f"the request line (method, path and query) is longer "
                                    f"than {REQUEST_LINE_LIMIT} bytes")
    if isinstance(exc, LimitRequestHeaders):
        return 431, "bad_request", (f"more than {HEADER_FIELDS_LIMIT} header fields, or "
                                    f"one longer than {HEADER_FIELD_SIZE_LIMIT} bytes")
    if isinstance(exc, (ForbiddenProxyRequest, SSLError)):
        return 403, "forbidden", "request forbidden"
    if isinstance(exc, ConfigurationProblem):
        return 500, "internal_error", "internal server error"
    if isinstance(exc, UnsupportedTransferCoding):
        return 501, "bad_request", "unsupported transfer coding"
    if isinstance(exc, ExpectationFailed):
        return 417, "bad_request", "unsupported Expect header"
    if isinstance(exc, ParseException):
        return 400, "bad_request", "the request could not be parsed as HTTP/1.1"
    return 500, "internal_error", "internal server error"


def answer(status: int, code: str, message: str) -> bytes:
    """A whole HTTP response: the error shape, and the connection closed after it."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Cache-Control: no-store\r\n\r\n")
    return head.encode("latin-1") + body


def _linger(client: socket.socket) -> None:
    try:
        client.shutdown(socket.SHUT_WR)
        client.settimeout(LINGER_SECONDS)
        left = LINGER_BYTES
        while left > 0:
            chunk = client.recv(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass


class JsonErrorWorker(ThreadWorker):
    """gunicorn's gthread worker; its refusals in the JSON error shape."""

    def handle_error(self, req: Any, client: socket.socket, addr: Any,
                     exc: BaseException) -> None:
        status, code, message = refusal(exc)
        ip = addr[0] if addr else ""
        if status >= 500:
            self.log.exception("Error handling request from ip=%s", ip)
        else:
            # As gunicorn logs it (the reason is short: gunicorn's own words).
            self.log.warning("Invalid request from ip=%s: %s", ip, str(exc)[:200])
        try:
            util.write_nonblock(client, answer(status, code, message))
        except Exception:
            self.log.debug("Failed to send error message.")
            return
        _linger(client)
