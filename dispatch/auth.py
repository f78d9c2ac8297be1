"""API-key authentication: flask-httpauth's token auth on the ``X-API-Key`` header.

The keys live on the app (``app.extensions["dispatch.keys"]``), so one module-level
``auth`` object serves every app the factory builds.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import Response, current_app
from flask_httpauth import HTTPTokenAuth

from dispatch.api.errors import error_response

SECURITY_SCHEME = {"type": "apiKey", "in": "header", "name": "X-API-Key"}


class ApiKeys:
    """The keys accepted now, each compared in constant time on every request."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def matches(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = presented.encode()
        found = False
        for key in self._keys:
            # No early exit: the time taken does not tell which key, if any, matched.
            found |= hmac.compare_digest(candidate, key)
        return found


auth = HTTPTokenAuth(header="X-API-Key")


@auth.verify_token
def _verify(token: str) -> bool | None:
    keys: ApiKeys = current_app.extensions["dispatch.keys"]
    return True if keys.matches(token) else None


@auth.error_handler
def _unauthorized(status: int) -> Response:
    if status == 403:
        return error_response(403, "forbidden", "this key may not do that")
    return error_response(401, "unauthorized", "missing or wrong X-API-Key header")


def require_key() -> Response | None:
    """A ``before_request`` hook that protects a whole blueprint."""
    return auth.login_required(lambda: None)()
