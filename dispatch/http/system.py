"""``/health``, ``/stats`` and ``/metrics``."""

from __future__ import annotations

from flask import Response, current_app

from dispatch import __version__
from dispatch.http.auth import JOB_WRITERS, auth
from dispatch.http.common import Blueprint, json_response
from dispatch.http.schemas import HealthSchema, StatsSchema
from dispatch.runtime.metrics import CONTENT_TYPE

blp = Blueprint("system", __name__, description="Health, statistics and metrics")


@blp.route("/health", methods=["GET"], strict_slashes=False)
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="State can no longer be persisted")
@blp.doc(security=[])
def health() -> Response:
    """Liveness for load balancers and systemd; no key needed."""
    info = current_app.extensions["dispatch"].queries.health()
    failure = info.pop("failure")
    body = {"status": "unhealthy" if failure else "healthy", "version": __version__, **info}
    if failure:
        body["reason"] = failure
    return json_response(body, 503 if failure else 200)


@blp.route("/stats", methods=["GET"], strict_slashes=False)
@blp.response(200, StatsSchema)
@auth.login_required(role=JOB_WRITERS)
def stats() -> Response:
    """Counts of jobs and engines, and throughput over the last hour."""
    return json_response(current_app.extensions["dispatch"].queries.stats())


@blp.route("/metrics", methods=["GET"], strict_slashes=False)
@blp.response(200, description="Prometheus text exposition",
              content_type="text/plain")
@blp.doc(security=[])
def metrics() -> Response:
    """Prometheus metrics; no key needed."""
    return Response(current_app.extensions["dispatch.metrics"].render(), 200,
                    content_type=CONTENT_TYPE)
