"""marshmallow schemas for every request and response: the contract in code.

Request schemas validate (unknown fields are refused, except on heartbeats, which carry
telemetry); response schemas document what the views send and generate the OpenAPI
document. Views serialise with the models' ``to_dict`` on the hot path; a test checks
that every response still loads through its schema.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import current_app
from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
)

from dispatch.domain.callbacks import callback_problem
from dispatch.domain.chunking import CHUNK_SECONDS_MAX, CHUNK_SECONDS_MIN
from dispatch.domain.models import ENGINE_STATUSES, JOB_STATUSES
from dispatch.domain.urls import SOURCE_URL
from dispatch.http.chunk_schemas import ChunkCountsSchema, task_kinds_field
from dispatch.http.fields import (
    MAX_LIST,
    MAX_TEXT,
    MAX_URL,
    FiniteFloat,
    JobIdList,
    StrictBoolean,
    StrictInteger,
    StrictSchema,
    check_url,
    engine_id_field,
    priority_field,
    text_field,
)
from dispatch.http.file_schemas import OutputSchema

# ----------------------------------------------------------------- requests

class JobSubmitSchema(StrictSchema):
    source_url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL),
                               metadata={"pattern": SOURCE_URL.pattern})
    target_codec = text_field(64, required=True)
    job_size = FiniteFloat(required=True, validate=validate.Range(min=0))
    max_retries = StrictInteger(validate=validate.Range(min=0, max=100))
    priority = priority_field()
    chunk_seconds = StrictInteger(
        validate=validate.Range(min=CHUNK_SECONDS_MIN, max=CHUNK_SECONDS_MAX),
        metadata={"description": "encode in chunks of about this many seconds on many "
                  "engines at once, stitched into one output (chunked encoding)"})
    callback_url = fields.String(
        validate=validate.Length(min=1, max=MAX_URL),
        metadata={"description": "http(s) URL POSTed the job, signed, when it completes, "
                  "fails or is cancelled; its host must be in webhook_allowed_hosts"},
    )

    @validates("source_url")
    def _source_url(self, value: str, **_: Any) -> None:
        check_url(value)

    @validates("callback_url")
    def _callback_url(self, value: str, **_: Any) -> None:
        # Checked here too (the service checks again) so that a batch reports every
        # invalid item in one answer, callbacks included.
        settings = current_app.extensions["dispatch"].settings
        problem = callback_problem(value, settings.webhook_allowed_hosts)
        if problem:
            raise ValidationError(problem)


class BatchSubmitSchema(StrictSchema):
    jobs = fields.List(fields.Nested(JobSubmitSchema), required=True,
                       validate=validate.Length(min=1, max=1000))


class IdempotencyHeaderSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # every other header

    key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Regexp(r"^[\x20-\x7e]{1,255}$",
                                 error="Must be 1-255 printable ASCII characters."),
        metadata={"description": "Repeat a submission safely: the same key with the same "
                  "body within 24 h returns the original job (200) instead of a new one"},
    )


class PrioritySchema(StrictSchema):
    priority = priority_field(required=True, metadata={
        "description": "-100..100; higher runs first (with aging, see Scheduling)"})


class JobListQuerySchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(JOB_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10**9))


class ProgressSchema(StrictSchema):
    progress = FiniteFloat(required=True, validate=validate.Range(min=0, max=100))
    fps = FiniteFloat(validate=validate.Range(min=0), metadata={
        "description": "frames encoded per second"})
    speed = FiniteFloat(validate=validate.Range(min=0), metadata={
        "description": "encoding speed as a multiple of real time"})
    eta_seconds = FiniteFloat(validate=validate.Range(min=0), metadata={
        "description": "seconds until the job is expected to finish"})
    engine_id = engine_id_field()
    attempt = StrictInteger(validate=validate.Range(min=1, max=10**9))


class FailSchema(StrictSchema):
    error_message = text_field(MAX_TEXT, required=True)
    engine_id = engine_id_field()
    attempt = StrictInteger(validate=validate.Range(min=1, max=10**9))


MAX_TELEMETRY = 16 * 1024  # bytes of JSON: what one engine's extra fields may take


class HeartbeatSchema(Schema):
    """The fields the server uses are typed strictly; any other field is telemetry,
    kept as sent (``telemetry`` in the loaded data), up to ``MAX_TELEMETRY`` bytes."""

    class Meta:
        unknown = INCLUDE

    engine_id = engine_id_field(required=True)
    engine_type = text_field(128)
    supported_codecs = fields.List(text_field(64), validate=validate.Length(max=MAX_LIST))
    status = fields.String(validate=validate.OneOf(("idle", "busy", "draining")))
    storage_capacity_gb = FiniteFloat(validate=validate.Range(min=0))
    streaming_support = StrictBoolean()
    hostname = text_field(255)
    benchmark_time = FiniteFloat(validate=validate.Range(min=0))
    local_job_queue = JobIdList()
    task_kinds = task_kinds_field()

    @post_load
    def _telemetry(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        extra = {key: data.pop(key) for key in list(data) if key not in self.fields}
        if extra:
            size = len(orjson.dumps(extra))
            if size > MAX_TELEMETRY:
                raise ValidationError(
                    f"telemetry (the fields the server does not use) takes {size} bytes "
                    f"of JSON, more than {MAX_TELEMETRY}", "_schema")
        data["telemetry"] = extra or None
        return data


class BenchmarkSchema(StrictSchema):
    engine_id = engine_id_field(required=True)
    benchmark_time = FiniteFloat(required=True, validate=validate.Range(min=0))


class AssignSchema(StrictSchema):
    engine_id = engine_id_field(required=True)
    capabilities = fields.List(text_field(64), validate=validate.Length(max=MAX_LIST))


# ---------------------------------------------------------------- responses

class JobSchema(Schema):
    job_id = fields.String(required=True)
    source_url = fields.String(required=True)
    target_codec = fields.String(required=True)
    job_size = fields.Float(required=True)
    priority = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(JOB_STATUSES))
    assigned_engine = fields.String(required=True, allow_none=True)
    output_url = fields.String(required=True, allow_none=True)
    progress = fields.Float(required=True, allow_none=True)
    retries = fields.Integer(required=True)
    max_retries = fields.Integer(required=True)
    error_message = fields.String(required=True, allow_none=True)
    retry_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    updated_at = fields.String(required=True, metadata={"format": "date-time"})
    assigned_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    completed_at = fields.String(required=True, allow_none=True,
                                 metadata={"format": "date-time"})
    attempt = fields.Integer(required=True, metadata={"description": "assignments so far"})
    callback_url = fields.String(required=True, allow_none=True)
    waiting_reason = fields.Nested(lambda: WaitingReasonSchema(), required=True,
                                   allow_none=True)
    webhook = fields.Nested(lambda: WebhookStateSchema(), required=True, allow_none=True)
    progress_detail = fields.Nested(lambda: ProgressDetailSchema(), required=True,
                                    allow_none=True)
    output = fields.Nested(OutputSchema, required=True, allow_none=True, metadata={
        "description": "the stored output (GET /jobs/{job_id}/output), or null"})
    chunk_seconds = fields.Integer(required=True, allow_none=True)
    parent_id = fields.String(required=True, allow_none=True, metadata={
        "description": "a chunked job's task: the job it is part of"})
    task = fields.Dict(required=True, allow_none=True, metadata={
        "description": "a task: what it does (kind plan, chunk, audio or stitch)"})
    chunks = fields.Nested(ChunkCountsSchema, required=True, allow_none=True, metadata={
        "description": "a chunked job: its chunk tasks by state"})


class ProgressDetailSchema(Schema):
    fps = fields.Float(required=True, allow_none=True)
    speed = fields.Float(required=True, allow_none=True)
    eta_seconds = fields.Float(required=True, allow_none=True)
    updated_at = fields.String(required=True, metadata={"format": "date-time"})


class AssignedJobSchema(JobSchema):
    """The job as its engine gets it: ``source_url`` is a URL it can GET (signed for
    a stored source)."""

    output_upload = fields.String(required=True, metadata={
        "description": "POST here (size, extension, content_type) for the output's "
        "upload URLs; then complete with its upload_id, parts and size"})
    task = fields.Dict(required=True, allow_none=True, metadata={
        "description": "a task: as stored, a stitch's chunks and audio with URLs to GET"})


class WaitingReasonSchema(Schema):
    code = fields.String(required=True, validate=validate.OneOf((
        "backoff", "no_engine_for_codec", "no_engine_with_room", "engines_draining",
        "concurrency_limit", "queued", "no_task_engine")))
    message = fields.String(required=True)
    position = fields.Integer(required=True, allow_none=True)


class WebhookStateSchema(Schema):
    url = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(
        ("pending", "delivered", "failed")))
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.String(required=True, allow_none=True,
                                    metadata={"format": "date-time"})
    last_error = fields.String(required=True, allow_none=True)
    delivered_at = fields.String(required=True, allow_none=True,
                                 metadata={"format": "date-time"})


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)


class JobEventSchema(Schema):
    time = fields.String(required=True, metadata={"format": "date-time"})
    event = fields.String(required=True, validate=validate.OneOf((
        "submitted", "assigned", "processing", "progress", "completed", "cancelled",
        "failed_attempt", "engine_lost", "stalled", "requeued", "failed", "released",
        "retried", "priority")))
    engine_id = fields.String(required=True, allow_none=True)
    attempt = fields.Integer(required=True)
    detail = fields.String(required=True, allow_none=True)


class JobEventsSchema(Schema):
    job_id = fields.String(required=True)
    events = fields.List(fields.Nested(JobEventSchema), required=True)


class JobPageSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    total = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)


class EngineSchema(Schema):
    engine_id = fields.String(required=True)
    engine_type = fields.String(required=True, allow_none=True)
    hostname = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(ENGINE_STATUSES))
    supported_codecs = fields.List(fields.String(), required=True)
    storage_capacity_gb = fields.Float(required=True, allow_none=True)
    streaming_support = fields.Boolean(required=True)
    benchmark_time = fields.Float(required=True, allow_none=True)
    avg_benchmark_time = fields.Float(required=True, allow_none=True)
    local_job_queue = fields.List(fields.String(), required=True)
    current_jobs = fields.List(fields.String(), required=True)
    jobs_completed = fields.Integer(required=True)
    jobs_failed = fields.Integer(required=True)
    registered_at = fields.String(required=True, metadata={"format": "date-time"})
    last_heartbeat = fields.String(required=True, metadata={"format": "date-time"})
    task_kinds = fields.List(fields.String(), required=True)
    telemetry = fields.Dict(
        keys=fields.String(), required=True, allow_none=True,
        metadata={"description": "The last heartbeat's fields the server does not use "
                  "(encoders, cpu_temperature, ...), as the engine sent them"})


class HeartbeatAnswerSchema(EngineSchema):
    cancelled_jobs = fields.List(
        fields.String(), required=True,
        metadata={"description": "Jobs the engine holds or lists in local_job_queue that "
                  "were cancelled or given to another engine: stop working on them"},
    )
    draining = fields.Boolean(required=True,
                              metadata={"description": "Take no new jobs"})


class EngineListSchema(Schema):
    engines = fields.List(fields.Nested(EngineSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(("healthy", "unhealthy")))
    version = fields.String(required=True)
    uptime_seconds = fields.Float(required=True)
    jobs_queued = fields.Integer(required=True)
    engines_active = fields.Integer(required=True)
    reason = fields.String(allow_none=True)


class JobCountsSchema(Schema):
    total = fields.Integer(required=True)
    pending = fields.Integer(required=True)
    assigned = fields.Integer(required=True)
    processing = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    cancelled = fields.Integer(required=True)


class EngineCountsSchema(Schema):
    total = fields.Integer(required=True)
    active = fields.Integer(required=True)
    idle = fields.Integer(required=True)
    busy = fields.Integer(required=True)
    draining = fields.Integer(required=True)
    offline = fields.Integer(required=True)


class PerformanceSchema(Schema):
    avg_job_time = fields.Float(required=True)
    jobs_per_hour = fields.Integer(required=True)
    success_rate = fields.Float(required=True)


class StatsSchema(Schema):
    jobs = fields.Nested(JobCountsSchema, required=True)
    engines = fields.Nested(EngineCountsSchema, required=True)
    performance = fields.Nested(PerformanceSchema, required=True)


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(keys=fields.String())


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)
