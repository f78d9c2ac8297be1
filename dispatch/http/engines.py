"""``/engines`` and ``/assign_job``: registration, heartbeats and work assignment."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Response, current_app

from dispatch.http.auth import ENGINE_REPORTERS, OPERATORS, acting_engine, auth
from dispatch.http.common import Blueprint, json_response, log_ids
from dispatch.http.schemas import (
    AssignedJobSchema,
    AssignSchema,
    BenchmarkSchema,
    EngineListSchema,
    EngineSchema,
    ErrorSchema,
    HeartbeatAnswerSchema,
    HeartbeatSchema,
)
from dispatch.http.uploads import base_url
from dispatch.service import DispatchService, present

blp = Blueprint("engines", __name__, description="Transcoding engines")


def _service() -> DispatchService:
    return current_app.extensions["dispatch"]


@blp.route("/engines/heartbeat", methods=["POST"], strict_slashes=False)
@auth.login_required(role=ENGINE_REPORTERS)
@blp.arguments(HeartbeatSchema())
@blp.response(200, HeartbeatAnswerSchema, description="The engine as the server sees it, "
              "with the jobs it must stop and whether it is draining")
def heartbeat(data: dict[str, Any]) -> Response:
    """Register an engine (first call) or refresh it.

    Fields the server does not use are telemetry, kept as sent (`telemetry` in the
    answer, up to 16 KiB); `local_job_queue` may also be a string holding a JSON list.

    `status` is advice: `draining` asks for no new jobs until the engine reports
    `idle` or `busy` again."""
    data["engine_id"] = acting_engine(data["engine_id"])
    log_ids(engine_id=data["engine_id"])
    return json_response(present.beat(_service().commands.heartbeat(data)))


@blp.route("/engines/benchmark_result", methods=["POST"], strict_slashes=False)
@auth.login_required(role=ENGINE_REPORTERS)
@blp.arguments(BenchmarkSchema())
@blp.response(200, EngineSchema)
@blp.alt_response(404, schema=ErrorSchema, description="Unknown engine")
def benchmark_result(data: dict[str, Any]) -> Response:
    """Record a benchmark run (seconds, lower is faster)."""
    engine_id = acting_engine(data["engine_id"])
    log_ids(engine_id=engine_id)
    return json_response(present.engine(
        _service().commands.benchmark_result(engine_id, data["benchmark_time"])))


@blp.route("/engines/", methods=["GET"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(200, EngineListSchema)
def list_engines() -> Response:
    """Every engine the server knows."""
    return json_response({"engines": [present.engine(state)
                                      for state in _service().queries.list_engines()]})


@blp.route("/engines/<engine_id:engine_id>", methods=["GET"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(200, EngineSchema)
@blp.alt_response(404, schema=ErrorSchema)
def get_engine(engine_id: str) -> Response:
    """One engine."""
    return json_response(present.engine(_service().queries.get_engine(engine_id)))


@blp.route("/engines/<engine_id:engine_id>", methods=["DELETE"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(200, EngineSchema, description="The engine as it was")
@blp.alt_response(404, schema=ErrorSchema)
def delete_engine(engine_id: str) -> Response:
    """Forget an engine; the jobs it held go back to the queue."""
    return json_response(present.engine(_service().commands.delete_engine(engine_id)))


@blp.route("/engines/<engine_id:engine_id>/drain", methods=["POST"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(200, EngineSchema, description="The engine, draining")
@blp.alt_response(404, schema=ErrorSchema)
def drain(engine_id: str) -> Response:
    """Give the engine no new jobs (it finishes what it holds) until the drain is
    ended with DELETE, whatever its heartbeats say."""
    return json_response(present.engine(_service().commands.set_drain(engine_id, True)))


@blp.route("/engines/<engine_id:engine_id>/drain", methods=["DELETE"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(200, EngineSchema, description="The engine, taking jobs again")
@blp.alt_response(404, schema=ErrorSchema)
def undrain(engine_id: str) -> Response:
    """End an operator's drain."""
    return json_response(present.engine(_service().commands.set_drain(engine_id, False)))


@blp.route("/assign_job/", methods=["POST"], strict_slashes=False)
@auth.login_required(role=ENGINE_REPORTERS)
@blp.arguments(AssignSchema())
@blp.response(200, AssignedJobSchema, description="The job, now assigned to the engine "
              "(or the job it already holds, again)")
@blp.alt_response(204, description="Nothing suits the engine now")
@blp.alt_response(404, schema=ErrorSchema, description="The engine never sent a heartbeat")
def assign(data: dict[str, Any]) -> Response:
    """Ask for work."""
    engine_id = acting_engine(data["engine_id"])
    result = _service().commands.assign_job(engine_id, data.get("capabilities"))
    log_ids(engine_id=engine_id, job_id=result.job.job_id if result.job else None)
    if result.job is None:
        return Response(status=204)
    service = _service()
    body = present.job(service.queries.describe(result.job))
    base = base_url()
    body["source_url"] = service.files.engine_source(result.job.source_url, base)
    body["output_upload"] = f"{base}jobs/{quote(result.job.job_id, safe='')}/output_upload"
    body["task"] = service.queries.engine_task(
        result.job, lambda url: service.files.engine_source(url, base))
    return json_response(body)
