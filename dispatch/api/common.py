"""What every view shares: the JSON body parser and the JSON response."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, g
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow import Schema, ValidationError
from webargs.flaskparser import FlaskParser

from dispatch.api.errors import BadRequest, ValidationFailed


class BodyParser(FlaskParser):
    """Reads the body as JSON whatever its Content-Type (``curl -d`` sends a form type)
    and reports problems in the contract's shape, with 400 instead of webargs' 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req: Any, schema: Schema) -> Any:
        raw = req.get_data(cache=True)
        if not raw.strip():
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data

    def handle_error(self, error: ValidationError, req: Any, schema: Schema, *,
                     error_status_code: int | None, error_headers: Any) -> Any:
        messages = error.messages
        if isinstance(messages, dict) and set(messages) <= {"json", "query", "querystring"}:
            # webargs nests errors under the location; the contract wants fields.
            merged: dict[str, Any] = {}
            for value in messages.values():
                merged.update(value if isinstance(value, dict) else {"_schema": value})
            messages = merged
        raise ValidationFailed(messages if isinstance(messages, dict) else {"_schema": messages})


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = BodyParser()


def log_ids(**ids: str | None) -> None:
    """Name the job or engine a request concerns in its access-log line."""
    g.log_ids = ids


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialise with orjson: the views' one way to answer."""
    return Response(orjson.dumps(data), status=status, headers=headers,
                    mimetype="application/json")
