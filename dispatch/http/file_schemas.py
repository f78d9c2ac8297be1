"""marshmallow schemas of files in and out: uploads, an engine's output upload and
the completion that names it (``dispatch.http.uploads``)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from dispatch.domain.objects import MAX_PARTS, SHA256, UPLOAD_ID
from dispatch.http.chunk_schemas import ProbeSchema
from dispatch.http.fields import (
    MAX_URL,
    StrictInteger,
    StrictSchema,
    engine_id_field,
    text_field,
)

_SIZE = StrictInteger(required=True, validate=validate.Range(min=0, max=2**53))


def _sha256() -> fields.String:
    return fields.String(validate=validate.Regexp(SHA256, error="Must be 64 lowercase hex "
                                                  "digits (a SHA-256)."),
                         metadata={"description": "SHA-256 of the whole file, hex"})


def _upload_id() -> fields.String:
    return fields.String(validate=validate.Regexp(UPLOAD_ID, error="Not an upload id."))


class UploadCreateSchema(StrictSchema):
    filename = text_field(255, required=True, metadata={
        "description": "the file's name (only its last part, made safe, is kept)"})
    size = StrictInteger(required=True, validate=validate.Range(min=0, max=2**53),
                         metadata={"description": "bytes"})
    sha256 = _sha256()


class PartSchema(Schema):
    part_number = fields.Integer(required=True)
    url = fields.String(required=True, metadata={
        "description": "PUT the part's bytes here (no API key: the URL is the permission)"})
    size = fields.Integer(required=True)


class UploadSchema(Schema):
    upload_id = fields.String(required=True, allow_none=True, metadata={
        "description": "null when the store already holds this content (no parts)"})
    source_url = fields.String(required=True, metadata={
        "description": "what POST /jobs/ takes as source_url once the upload is complete"})
    parts = fields.List(fields.Nested(PartSchema), required=True)
    size = fields.Integer(required=True)
    expires_at = fields.String(required=True, allow_none=True,
                               metadata={"format": "date-time"})


class PartDoneSchema(StrictSchema):
    part_number = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_PARTS))
    etag = fields.String(required=True, validate=validate.Length(min=1, max=200),
                         metadata={"description": "the ETag header the part's PUT answered"})


class UploadCompleteSchema(StrictSchema):
    parts = fields.List(fields.Nested(PartDoneSchema), required=True,
                        validate=validate.Length(min=1, max=MAX_PARTS))


class UploadDoneSchema(Schema):
    upload_id = fields.String(required=True)
    source_url = fields.String(required=True)
    size = fields.Integer(required=True)
    sha256 = fields.String(required=True)


class OutputUploadSchema(StrictSchema):
    engine_id = engine_id_field()
    attempt = StrictInteger(validate=validate.Range(min=1, max=10**9))
    size = _SIZE
    extension = fields.String(validate=validate.Regexp(r"^[A-Za-z0-9]{1,8}$"),
                              metadata={"description": "the output file's extension"})
    content_type = text_field(128)


class CompleteSchema(StrictSchema):
    """Where the output is: ``output_url``. For an output uploaded to the server's
    store it is the upload's ``store://`` URL, with ``upload_id``, ``parts``, ``size``
    and optionally ``sha256`` (checked in the store: 409 when they do not match)."""

    output_url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL))
    upload_id = _upload_id()
    parts = fields.List(fields.Nested(PartDoneSchema), validate=validate.Length(max=MAX_PARTS))
    size = StrictInteger(validate=validate.Range(min=0, max=2**53))
    sha256 = _sha256()
    engine_id = engine_id_field()
    attempt = StrictInteger(validate=validate.Range(min=1, max=10**9))
    probe = fields.Nested(ProbeSchema, metadata={
        "description": "a chunked job's plan task: the source as probed (required there, "
        "refused elsewhere)"})


class OutputSchema(Schema):
    size = fields.Integer(required=True)
    sha256 = fields.String(required=True)
    content_type = fields.String(required=True)
