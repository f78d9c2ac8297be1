"""marshmallow schemas of chunked encoding (``dispatch.domain.chunking``): the probe a
plan task completes with, a parent's chunk counts, and ``GET /jobs/{id}/chunks``."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from dispatch.domain.chunking import TASK_KINDS
from dispatch.domain.models import JOB_STATUSES
from dispatch.http.fields import FiniteFloat, StrictBoolean, StrictInteger, StrictSchema

RATIONAL = r"^[0-9]{1,9}/[0-9]{1,9}$"


class AudioProbeSchema(StrictSchema):
    duration = FiniteFloat(required=True, validate=validate.Range(min=0))
    streams = StrictInteger(required=True, validate=validate.Range(min=1, max=1000))


class ProbeSchema(StrictSchema):
    """The source as a plan task's engine probed it."""

    duration = FiniteFloat(required=True, validate=validate.Range(min=0))
    frames = StrictInteger(required=True, validate=validate.Range(min=0, max=10**10))
    frame_rate = fields.String(required=True, allow_none=True,
                               validate=validate.Regexp(RATIONAL, error="Must be N/D."),
                               metadata={"description": "the first video stream's rate, "
                                         "N/D (null: no video)"})
    start_time = FiniteFloat(required=True)
    width = StrictInteger(required=True, validate=validate.Range(min=0, max=100_000))
    height = StrictInteger(required=True, validate=validate.Range(min=0, max=100_000))
    variable_frame_rate = StrictBoolean(required=True)
    audio = fields.Nested(AudioProbeSchema, required=True, allow_none=True)


class ChunkCountsSchema(Schema):
    total = fields.Integer(required=True)
    pending = fields.Integer(required=True)
    running = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)


def task_kinds_field() -> fields.List:
    return fields.List(fields.String(validate=validate.OneOf(TASK_KINDS)),
                       validate=validate.Length(max=len(TASK_KINDS)), metadata={
                           "description": "the chunked-encoding tasks the engine runs; "
                           "none: it is given whole jobs only"})


class _TaskStateSchema(Schema):
    """What every task's row shows (``service.chunked.chunk_rows``)."""

    job_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(JOB_STATUSES))
    engine = fields.String(required=True, allow_none=True)
    attempt = fields.Integer(required=True)
    progress = fields.Float(required=True, allow_none=True)


class ChunkRowSchema(_TaskStateSchema):
    index = fields.Integer(required=True)
    start_time = fields.Float(required=True)
    end_time = fields.Float(required=True)
    frames = fields.Integer(required=True)


class TaskRowSchema(_TaskStateSchema):
    kind = fields.String(required=True, validate=validate.OneOf(TASK_KINDS))


class ChunksSchema(Schema):
    job_id = fields.String(required=True)
    generation = fields.Integer(required=True)
    chunks = fields.List(fields.Nested(ChunkRowSchema), required=True)
    tasks = fields.List(fields.Nested(TaskRowSchema), required=True, metadata={
        "description": "the plan, audio and stitch tasks"})
