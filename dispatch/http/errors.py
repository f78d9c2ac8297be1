"""One error shape for every failure: domain errors, validation, auth, routing, bugs.

``{"error": {"code": ..., "message": ..., "details": ...}}`` with ``details`` only for
validation errors. Unexpected exceptions are logged with their traceback and answered
with a bare ``500 internal_error``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from dispatch.domain import errors

log = logging.getLogger("dispatch.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


class BadRequest(errors.DispatchError):
    code = "bad_request"
    status = 400


class Forbidden(errors.DispatchError):
    code = "forbidden"
    status = 403


class TooManyRequests(errors.DispatchError):
    """Too many failed authentications from the client's address (dispatch.http.throttle):
    refused without looking at the key, until ``retry_after`` seconds have passed."""

    code = "too_many_requests"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed authentications from your address; try again "
                         f"in {retry_after} s")
        self.retry_after = retry_after



def error_response(status: int, code: str, message: str,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    # marshmallow keys a list item's errors by its (integer) index.
    return Response(orjson.dumps({"error": body}, option=orjson.OPT_NON_STR_KEYS),
                    status=status, headers=headers, mimetype="application/json")


def _dispatch_error(exc: errors.DispatchError) -> Response:
    headers = None
    if isinstance(exc, (errors.QueueFull, TooManyRequests)):
        headers = {"Retry-After": str(exc.retry_after)}
    details = exc.details if isinstance(exc, errors.Invalid) else None
    return error_response(exc.status, exc.code, exc.message, details, headers)


def _other_slash_form(exc: HTTPException) -> HTTPException:
    """werkzeug matches ``/jobs`` to the rule ``/jobs/`` only for allowed methods, so a
    wrong method on the slash-less form would be a 404; it is a 405 like its twin."""
    path = request.path
    twin = path[:-1] if path.endswith("/") and path != "/" else path + "/"
    try:
        current_app.url_map.bind_to_environ(request.environ).match(twin, request.method)
    except MethodNotAllowed as twin_exc:
        return twin_exc
    except HTTPException:
        pass
    return exc


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, NotFound) and request:
        exc = _other_slash_form(exc)
    status = exc.code or 500
    headers = None
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        headers = {"Allow": ", ".join(exc.valid_methods)}  # type: ignore[attr-defined]
    message = {
        404: "no such path",
        405: "method not allowed on this path",
        413: "the request body is larger than 1 MiB",
    }.get(status, exc.description or exc.name)
    return error_response(status, _HTTP_CODES.get(status, "bad_request" if status < 500
                                                  else "internal_error"), message,
                          headers=headers)


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal server error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(errors.DispatchError, _dispatch_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
