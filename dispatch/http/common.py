"""What every view shares: the JSON body parser and the JSON response."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, g
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow import Schema, ValidationError
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge

from dispatch.domain.errors import Invalid
from dispatch.http.errors import BadRequest

MAX_DEPTH = 16


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a deep body cannot overflow
    the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


class BodyParser(FlaskParser):
    """Reads the body as JSON whatever its Content-Type (``curl -d`` sends a form type)
    and reports problems in the contract's shape, with 400 instead of webargs' 422."""

    DEFAULT_VALIDATION_STATUS = 400
    # A query parameter the operation does not take is refused like an unknown body
    # field (the schema says RAISE), as the OpenAPI document lists the parameters.
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": None}

    def load_json(self, req: Any, schema: Schema) -> Any:
        raw = req.get_data(cache=True)
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        if req.content_length is None and len(raw) >= limit \
                and req.environ["wsgi.input"].read(1):
            # A chunked body has no Content-Length to refuse up front; werkzeug stops
            # reading it at the limit, so look for a byte beyond it.
            raise RequestEntityTooLarge()
        if not raw.strip():
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        if _depth(data) > MAX_DEPTH:
            raise BadRequest(f"the request body nests deeper than {MAX_DEPTH} levels")
        return data

    def handle_error(self, error: ValidationError, req: Any, schema: Schema, *,
                     error_status_code: int | None, error_headers: Any) -> Any:
        messages = error.messages
        if isinstance(messages, dict) and set(messages) <= {"json", "query", "querystring",
                                                            "headers"}:
            # webargs nests errors under the location; the contract wants fields.
            merged: dict[str, Any] = {}
            for value in messages.values():
                merged.update(value if isinstance(value, dict) else {"_schema": value})
            messages = merged
        raise Invalid(messages if isinstance(messages, dict) else {"_schema": messages})


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = BodyParser()


def log_ids(**ids: str | None) -> None:
    """Name the job or engine a request concerns in its access-log line."""
    g.log_ids = ids


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialise with orjson: the views' one way to answer."""
    return Response(orjson.dumps(data), status=status, headers=headers,
                    mimetype="application/json")
