"""``/uploads``, an engine's output upload and ``/jobs/{id}/output``: files in and
out through the object store (``dispatch.service.files``). The URLs answered here are
signed and time-limited; they are never logged (the object key is)."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request

from dispatch.http.auth import (
    ENGINE_REPORTERS,
    JOB_READERS,
    JOB_WRITERS,
    acting_engine,
    auth,
)
from dispatch.http.common import Blueprint, json_response, log_ids
from dispatch.http.file_schemas import (
    OutputUploadSchema,
    UploadCompleteSchema,
    UploadCreateSchema,
    UploadDoneSchema,
    UploadSchema,
)
from dispatch.http.jobs import readable_job
from dispatch.http.schemas import ErrorSchema
from dispatch.service import DispatchService

blp = Blueprint("uploads", __name__, description="Files in and out")


def _service() -> DispatchService:
    return current_app.extensions["dispatch"]


def base_url() -> str:
    """The server's URL as the caller reached it (or ``public_url``), ending in "/":
    the embedded store's signed URLs start with it."""
    public = _service().settings.public_url
    return public + "/" if public else request.host_url


@blp.route("/uploads", methods=["POST"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.arguments(UploadCreateSchema())
@blp.response(201, UploadSchema, description="The upload: PUT each part to its url, "
              "then POST /uploads/{upload_id}/complete")
@blp.alt_response(200, schema=UploadSchema, description="The store already holds a file "
                  "with this sha256 and size: its source_url, nothing to upload")
@blp.alt_response(400, schema=ErrorSchema, description="Over max_upload_gb")
def create_upload(data: dict[str, Any]) -> Response:
    """Start an upload of a source file (in parts of `upload_part_mb`; a part can be
    sent again). With `sha256`, content the store holds already is not sent again."""
    body, created = _service().files.create_upload(data["filename"], data["size"],
                                                   data.get("sha256"), base_url())
    log_ids(upload_id=body["upload_id"])
    return json_response(body, 201 if created else 200)


@blp.route("/uploads/<upload_id>", methods=["GET"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.response(200, UploadSchema, description="The upload with fresh part URLs")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Already completed")
def get_upload(upload_id: str) -> Response:
    """An upload not completed yet, to resume it (after a restart of either side)."""
    return json_response(_service().files.describe_upload(upload_id, base_url()))


@blp.route("/uploads/<upload_id>/complete", methods=["POST"], strict_slashes=False)
@auth.login_required(role=JOB_WRITERS)
@blp.arguments(UploadCompleteSchema())
@blp.response(200, UploadDoneSchema, description="The file, stored")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="A part missing or not the one "
                  "uploaded, the wrong size or SHA-256, or completed already: nothing stored")
def complete_upload(data: dict[str, Any], upload_id: str) -> Response:
    """Join the uploaded parts into the stored file."""
    log_ids(upload_id=upload_id)
    return json_response(_service().files.complete_upload(upload_id, data["parts"]))


@blp.route("/jobs/<job_id:job_id>/output_upload", methods=["POST"], strict_slashes=False)
@auth.login_required(role=ENGINE_REPORTERS)
@blp.arguments(OutputUploadSchema())
@blp.response(201, UploadSchema, description="The output's upload (parts to PUT)")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Not held by engine_id, or not "
                  "the job's current attempt")
def output_upload(data: dict[str, Any], job_id: str) -> Response:
    """Upload a job's output to the server's store (engines hold no store
    credentials); then report `complete` with the upload_id, parts and size."""
    engine_id = acting_engine(data.get("engine_id"))
    log_ids(job_id=job_id, engine_id=engine_id)
    return json_response(_service().files.create_output_upload(
        job_id, engine_id, data.get("attempt"), data, base_url()), 201)


@blp.route("/jobs/<job_id:job_id>/output", methods=["GET"], strict_slashes=False)
@auth.login_required(role=JOB_READERS)
@blp.response(302, description="To a time-limited URL of the output")
@blp.alt_response(404, schema=ErrorSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Not completed, or no stored output")
def job_output(job_id: str) -> Response:
    """Download a completed job's output."""
    service = _service()
    job = readable_job(service, job_id)
    return Response(status=302, headers={"Location": service.files.output_link(job,
                                                                               base_url())})
