"""Path converters for ``/engines/{engine_id}`` and ``/jobs/{job_id}``.

The fixed routes beside them (``/engines/heartbeat``, ``/engines/benchmark_result``,
``/jobs/batch``) are not ids: without these converters ``GET /engines/benchmark_result``
looked up an engine of that name, and a 405 from those routes listed the id routes'
methods in ``Allow`` as well."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from flask import Flask
from flask_smorest import Api
from werkzeug.routing import BaseConverter

from dispatch.domain.models import ENGINE_ID, RESERVED_ENGINE_IDS, RESERVED_JOB_IDS


def _not(names: tuple[str, ...]) -> str:
    # The matcher anchors the converter's regex to one path segment.
    return rf"(?!(?:{'|'.join(names)})\Z)"


class EngineIdConverter(BaseConverter):
    regex = _not(RESERVED_ENGINE_IDS) + r"[^/]+"
    part_isolating = True  # one segment (werkzeug guesses otherwise from the "/")


class JobIdConverter(BaseConverter):
    regex = _not(RESERVED_JOB_IDS) + r"[^/]+"
    part_isolating = True


def _engine_id_schema(converter: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": ENGINE_ID.pattern}


def _job_id_schema(converter: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "not": {"enum": list(RESERVED_JOB_IDS)}}


def register_converters(app: Flask, api: Api) -> None:
    """Before the blueprints: their rules are compiled with these converters."""
    app.url_map.converters["engine_id"] = EngineIdConverter
    app.url_map.converters["job_id"] = JobIdConverter
    api.register_converter(EngineIdConverter, _engine_id_schema)
    api.register_converter(JobIdConverter, _job_id_schema)


@lru_cache(maxsize=256)
def route_label(rule: str) -> str:
    """A rule as metrics and logs name it, without converter names:
    ``/jobs/<job_id:job_id>`` is ``/jobs/<job_id>``, as before the converters."""
    return re.sub(r"<\w+:(\w+)>", r"<\1>", rule)
