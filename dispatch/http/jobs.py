"""``/jobs``: submit, read, list, and the lifecycle reports engines send."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, current_app
from marshmallow import Schema

from dispatch.domain import rules
from dispatch.domain.models import PROGRESS_FIGURES, Job
from dispatch.http.auth import (
    ENGINE_REPORTERS,
    JOB_READERS,
    JOB_WRITERS,
    acting_engine,
    auth,
    current,
)
from dispatch.http.chunk_schemas import ChunksSchema
from dispatch.http.common import Blueprint, json_response, log_ids
from dispatch.http.errors import Forbidden
from dispatch.http.file_schemas import CompleteSchema
from dispatch.http.schemas import (
    BatchSubmitSchema,
    ErrorSchema,
    FailSchema,
    IdempotencyHeaderSchema,
    JobEventsSchema,
    JobListQuerySchema,
    JobListSchema,
    JobPageSchema,
    JobSchema,
    JobSubmitSchema,
    PrioritySchema,
    ProgressSchema,
)
from dispatch.service import DispatchService, chunked, present

blp = Blueprint("jobs", __name__, url_prefix="/jobs", description="Transcoding jobs")


def _service() -> DispatchService:
    return current_app.extensions["dispatch"]


def _job_response(job: Job) -> Response:
    return json_response(present.job(_service().queries.describe(job)))


@blp.route("/", methods=["POST"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.arguments(JobSubmitSchema())
@blp.arguments(IdempotencyHeaderSchema(), location="headers")
@blp.response(201, JobSchema, description="The job, pending",
              headers={"Location": {"description": "/jobs/{job_id}",
                                    "schema": {"type": "string"}}})
@blp.alt_response(200, schema=JobSchema, description="The job an earlier request with the "
                  "same Idempotency-Key and body created")
@blp.alt_response(409, schema=ErrorSchema, description="Idempotency-Key reused with "
                  "another body")
@blp.alt_response(503, schema=ErrorSchema, description="queue_full (with Retry-After) "
                  "or unavailable (the change could not be saved)")
def submit(data: dict[str, Any], headers: dict[str, Any]) -> Response:
    """Submit a job."""
    service = _service()
    service.files.check_source(data["source_url"])
    job, created = service.commands.submit_once(data, headers.get("key"))
    log_ids(job_id=job.job_id)
    return json_response(present.job(service.queries.describe(job)), 201 if created else 200,
                         {"Location": f"/jobs/{job.job_id}"})


@blp.route("/batch", methods=["POST"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.arguments(BatchSubmitSchema())
@blp.response(201, JobListSchema, description="Every job, created")
@blp.alt_response(503, schema=ErrorSchema, description="queue_full: the batch does not "
                  "fit in the queue as a whole (with Retry-After)")
def submit_batch(data: dict[str, Any]) -> Response:
    """Submit 1-1000 jobs at once: all are created, or none (a 400 names the index
    and errors of each invalid item)."""
    service = _service()
    for item in data["jobs"]:
        service.files.check_source(item["source_url"])
    jobs = service.commands.submit_batch(data["jobs"])
    describe = service.queries.describe
    return json_response({"jobs": [present.job(describe(job)) for job in jobs]}, 201)


@blp.route("/", methods=["GET"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.arguments(JobListQuerySchema(), location="query")
@blp.response(200, JobPageSchema)
def list_jobs(query: dict[str, Any]) -> Response:
    """List jobs, oldest first; `total` counts every match."""
    limit, offset = query["limit"], query["offset"]
    service = _service()
    page = service.queries.list_jobs(query.get("status"), limit, offset)
    describe = service.queries.describe
    return json_response({"jobs": [present.job(describe(job)) for job in page.jobs],
                          "total": page.total, "limit": limit, "offset": offset})


@blp.route("/<job_id:job_id>", methods=["GET"], strict_slashes=False)
@auth.login_required(role=JOB_READERS)
@blp.response(200, JobSchema)
@blp.alt_response(404, schema=ErrorSchema)
def get_job(job_id: str) -> Response:
    """One job. An engine key bound to an engine reads that engine's jobs only."""
    service = _service()
    return json_response(present.job(service.queries.describe(readable_job(service, job_id))))


def readable_job(service: DispatchService, job_id: str) -> Job:
    """The job, when the caller's key may read it: a key bound to an engine reads
    that engine's jobs only."""
    job = service.queries.get_job(job_id)
    bound = current().engine_id
    if bound is not None and job.assigned_engine != bound:
        raise Forbidden(f"this key reads the jobs of engine {bound!r} only")
    return job


@blp.route("/<job_id:job_id>/chunks", methods=["GET"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.response(200, ChunksSchema)
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Not a chunked job")
def job_chunks(job_id: str) -> Response:
    """A chunked job's chunks (index, times, frames, status, engine, attempt,
    progress) and its plan, audio and stitch tasks, of its current generation."""
    return json_response(_service().queries.chunks(job_id))


@blp.route("/<job_id:job_id>/events", methods=["GET"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.response(200, JobEventsSchema)
@blp.alt_response(404, schema=ErrorSchema)
def job_events(job_id: str) -> Response:
    """The job's history, oldest first: every state change with its time, engine,
    attempt and reason (the first and the latest 99 events are kept)."""
    return json_response({"job_id": job_id, "events": present.events(
        _service().queries.job_events(job_id))})


@blp.route("/<job_id:job_id>", methods=["DELETE"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.response(200, JobSchema, description="The job, cancelled")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Already finished")
def cancel_job(job_id: str) -> Response:
    """Cancel a job that has not finished; its engine is freed."""
    return _job_response(_service().commands.cancel_job(job_id))


# An engine's report on a job it holds: the same route, role, answers and checks for
# each kind; ``field`` is what the report carries to its command.
REPORT_REFUSED = ("Not assigned/processing, not held by engine_id, or not the job's "
                  "current attempt")


def _report(kind: str, schema: type[Schema], field: str, answer: str, summary: str,
            command: Callable[[DispatchService], Callable[..., Job]],
            figures: tuple[str, ...] = ()) -> None:
    """``figures``: optional fields passed on to the command as one mapping."""
    def view(data: dict[str, Any], job_id: str) -> Response:
        extra = ({"figures": {key: data[key] for key in figures if key in data}}
                 if figures else {})
        job = command(_service())(job_id, data[field], acting_engine(data.get("engine_id")),
                                  data.get("attempt"), **extra)
        return _job_response(job)

    view.__name__ = kind
    view.__doc__ = summary
    for decorator in (blp.alt_response(409, schema=ErrorSchema, description=REPORT_REFUSED),
                      blp.alt_response(404, schema=ErrorSchema),
                      blp.response(200, JobSchema, description=answer),
                      blp.arguments(schema()),
                      auth.login_required(role=ENGINE_REPORTERS),
                      blp.route(f"/<job_id:job_id>/{kind}", methods=["POST"],
                                strict_slashes=False)):
        view = decorator(view)


@blp.route("/<job_id:job_id>/complete", methods=["POST"], strict_slashes=False)
@auth.login_required(role=ENGINE_REPORTERS)
@blp.arguments(CompleteSchema())
@blp.response(200, JobSchema, description="The job, completed")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Not assigned/processing, "
                  "not held by engine_id, or not the job's current attempt; or its output "
                  "upload is missing, incomplete or not the size reported (the job stays)")
def complete(data: dict[str, Any], job_id: str) -> Response:
    """Report a job done, with where its output is: `output_url`, or the output
    upload (`upload_id`, `parts`, `size`, `sha256`), checked in the store first."""
    service = _service()
    engine_id, attempt = acting_engine(data.get("engine_id")), data.get("attempt")
    output = None
    if "upload_id" in data or data["output_url"].startswith("store:"):
        job = service.queries.get_job(job_id)
        rules.check_holder(job, engine_id, attempt, "complete")
        if "upload_id" in data or not chunked.reads_source(job, data["output_url"]):
            output = service.files.finish_output(job_id, data)
    job = service.commands.complete_job(job_id, data["output_url"], engine_id, attempt,
                                        output, data.get("probe"))
    return _job_response(job)


_report("progress", ProgressSchema, "progress", "The job, processing",
        "Report progress (0-100), with the encoder's fps, speed and ETA when known "
        "(the job's `progress_detail`).", lambda service: service.commands.report_progress,
        figures=PROGRESS_FIGURES)
_report("fail", FailSchema, "error_message",
        "The job: pending again with retry_at, or failed",
        "Report a failed attempt; the job is retried with backoff while retries remain.",
        lambda service: service.commands.fail_job)


@blp.route("/<job_id:job_id>/retry", methods=["POST"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.response(200, JobSchema, description="The job, pending again with retries 0")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Not failed or cancelled")
def retry(job_id: str) -> Response:
    """Send a failed or cancelled job back to the queue."""
    return _job_response(_service().commands.retry_job(job_id))


@blp.route("/<job_id>/priority", methods=["POST"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.arguments(PrioritySchema())
@blp.response(200, JobSchema, description="The job with its new priority")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Already finished")
def set_priority(data: dict[str, Any], job_id: str) -> Response:
    """Change the priority of a job that has not finished (a `priority` event in its
    history); a pending job moves to its new place in the queue."""
    return _job_response(_service().commands.set_priority(job_id, data["priority"]))
