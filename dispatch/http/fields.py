"""The field types and limits every request schema (``schemas``) is built from:
strict numbers, bounded text, URLs and ids checked whole, JSON id lists."""

from __future__ import annotations

import math
import re
from typing import Any, cast

import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from dispatch.domain.models import ENGINE_ID, ENGINE_ID_RULE
from dispatch.domain.urls import SOURCE_URL, SOURCE_URL_RULE

MAX_URL = 2048
MAX_TEXT = 4096
MAX_LIST = 256


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class FiniteFloat(fields.Float):
    """A JSON number that is finite; booleans are not numbers."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("Not a valid number.")
        result = super()._deserialize(value, attr, data, **kwargs)
        if not math.isfinite(result):
            raise ValidationError("Must be a finite number.")
        return result


class StrictInteger(fields.Integer):
    """A JSON integer; booleans, strings and fractions are refused."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false``: ``1`` and ``0`` are numbers, not booleans
    (marshmallow takes them, and ``1 in {True}`` holds in Python)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


# A JSON list of strings written as a string, as the original engine's early versions
# send ``local_job_queue`` ("[]"); each id 1-256 characters, no control characters.
_JSON_ID = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]){1,256}"'
_WS = r"[ \t\n\r]*"
JSON_ID_LIST = rf"^{_WS}\[{_WS}(?:{_JSON_ID}(?:{_WS},{_WS}{_JSON_ID})*)?{_WS}\]{_WS}$"
MAX_QUEUE = 10000


class JobIdList(fields.Field):
    """Job ids as a JSON list, or as a string holding a JSON list of strings. A plain
    field, so that the OpenAPI document shows both forms (``oneOf``) and no ``type``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"oneOf": [
            {"type": "array", "maxItems": MAX_QUEUE,
             "items": {"type": "string", "minLength": 1, "maxLength": 256}},
            {"type": "string", "pattern": JSON_ID_LIST,
             "description": "the same list written as a JSON string (earlier engines)"},
        ]}, **kwargs)
        self._list = fields.List(text_field(256), validate=validate.Length(max=MAX_QUEUE))

    def _deserialize(self, value: Any, attr: str | None, data: Any,
                     **kwargs: Any) -> list[str]:
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValidationError(
                    "Not a list, nor a string holding a JSON list.") from None
            if not isinstance(value, list):
                raise ValidationError("Not a list, nor a string holding a JSON list.")
        return self._list.deserialize(value)


def check_url(value: str) -> None:
    if not SOURCE_URL.fullmatch(value):
        raise ValidationError(f"Must be {SOURCE_URL_RULE}.")


def text_field(maximum: int = MAX_TEXT, **kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=maximum), **kwargs)


class FullRegexp(validate.Regexp):
    """The whole value matches (``Regexp`` uses ``match``, and ``$`` lets a final
    newline through)."""

    def __call__(self, value: str) -> str:  # type: ignore[override]
        if cast("re.Pattern[str]", self.regex).fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def engine_id_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=FullRegexp(ENGINE_ID, error=f"Must be {ENGINE_ID_RULE}."),
                         **kwargs)


def priority_field(**kwargs: Any) -> fields.Integer:
    return StrictInteger(validate=validate.Range(min=-100, max=100), **kwargs)
