"""``/auth/blocks``: the client addresses blocked for failed authentication
(``dispatch.http.throttle``), for an admin to see and to clear."""

from __future__ import annotations

from flask import Response, current_app, request
from marshmallow import Schema, fields

from dispatch.domain.errors import NotFound
from dispatch.domain.models import format_time
from dispatch.http.auth import OPERATORS, auth, current, key_fingerprint
from dispatch.http.common import Blueprint, json_response
from dispatch.http.schemas import ErrorSchema
from dispatch.http.throttle import Block, Throttle

blp = Blueprint("auth", __name__, description="Addresses blocked for failed authentication")


class BlockSchema(Schema):
    address = fields.String(required=True, metadata={
        "description": "The client address (behind a trusted proxy, the one it saw)"})
    failures = fields.Integer(required=True, metadata={
        "description": "Failed authentications that earned the block"})
    blocked_until = fields.String(required=True, metadata={"format": "date-time"})
    retry_after = fields.Integer(required=True, metadata={
        "description": "Seconds until the block lifts by itself"})


class BlockListSchema(Schema):
    blocks = fields.List(fields.Nested(BlockSchema), required=True)


def _throttle() -> Throttle:
    throttle: Throttle = current_app.extensions["dispatch.throttle"]
    return throttle


def _json(block: Block) -> dict[str, object]:
    return {"address": block.address, "failures": block.failures,
            "blocked_until": format_time(block.blocked_until), "retry_after": block.retry_after}


@blp.route("/auth/blocks", methods=["GET"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(200, BlockListSchema)
def list_blocks() -> Response:
    """The addresses blocked now (this process's, with several workers), soonest to
    lift first."""
    return json_response({"blocks": [_json(block) for block in _throttle().blocks()]})


@blp.route("/auth/blocks/<address>", methods=["DELETE"], strict_slashes=False)
@auth.login_required(role=OPERATORS)
@blp.response(204, description="Unblocked: the address may try keys again")
@blp.alt_response(404, schema=ErrorSchema, description="The address is not blocked")
def clear_block(address: str) -> Response:
    """Lift the block on an address before it lifts by itself (and forget its
    failures)."""
    by = f"{current().role} key {key_fingerprint(request.headers.get('X-API-Key', ''))}"
    if not _throttle().clear(address, by):
        raise NotFound(f"address {address!r} is not blocked")
    return Response(status=204)
