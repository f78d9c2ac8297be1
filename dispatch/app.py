"""The HTTP side of the server: ``create_app`` wires a built service into Flask
(blueprints, error handlers, auth, request metrics) and nothing else. The service and
its backend are built by ``dispatch.bootstrap``."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix

from dispatch import __version__
from dispatch.config.settings import Settings
from dispatch.http import blocks, engines, files, jobs, system, uploads
from dispatch.http.auth import CLIENT, ENGINE, SECURITY_SCHEME, KeyRing, Principal, weak_key_warning
from dispatch.http.converters import register_converters, route_label
from dispatch.http.errors import register_error_handlers
from dispatch.http.openapi import document_settings, nullable_objects
from dispatch.http.schemas import ErrorSchema
from dispatch.http.throttle import Throttle
from dispatch.runtime.edge import HEADER_FIELD_SIZE_LIMIT, HEADER_FIELDS_LIMIT, REQUEST_LINE_LIMIT
from dispatch.runtime.logs import add_secrets, escape_controls
from dispatch.runtime.metrics import Metrics
from dispatch.service import DispatchService
from dispatch.ui import views as ui

MAX_BODY = 1024 * 1024
access_log = logging.getLogger("dispatch.access")
log = logging.getLogger("dispatch.auth")


class _Api(Api):
    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        # dispatch.http.errors answers every error in the contract's shape.
        pass


def create_app(settings: Settings, service: DispatchService, metrics: Metrics) -> Flask:
    """The WSGI app over ``service``; ``metrics`` counts its requests and reads the
    service's counts at scrape time."""
    metrics.watch(service)

    app = Flask("dispatch")
    if settings.trusted_proxies:
        # Only the proxies we were told about may name the client; a client's own
        # X-Forwarded-For is never believed beyond them.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies,
            x_host=0, x_port=0, x_prefix=0,
        )
    app.url_map.strict_slashes = False
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        API_TITLE="DistConv dispatch server",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "security": [{"ApiKeyAuth": []}],
            "components": {"securitySchemes": {"ApiKeyAuth": SECURITY_SCHEME}},
            "info": {"description": "The job coordinator of a distributed transcoding farm."},
        },
    )
    app.extensions["dispatch"] = service
    app.extensions["dispatch.metrics"] = metrics
    app.extensions["dispatch.keys"] = make_keyring(settings)
    app.extensions["dispatch.throttle"] = make_throttle(settings, metrics)
    warning = weak_key_warning(settings.api_key)
    if warning is not None:
        log.warning("%s", warning)

    api = _Api(app)
    register_converters(app, api)
    for blueprint in (jobs.blp, engines.blp, system.blp, blocks.blp, uploads.blp):
        api.register_blueprint(blueprint)
    app.register_blueprint(files.blp)  # signed URLs, outside the OpenAPI document
    _document_common_errors(api)
    document_settings(api, settings)
    nullable_objects(api)
    ui.init_app(app, settings)  # the dashboard, /ui/ (outside the OpenAPI document)
    register_error_handlers(app)
    _instrument(app, metrics)
    return app


_COMMON_ERRORS = {
    "400": "bad_request: a request the HTTP parser cannot read",
    "401": "Missing or wrong X-API-Key",
    "403": "The key's role may not do this",
    "413": "Body larger than 1 MiB",
    "414": f"bad_request: request line (method, path and query) longer than "
           f"{REQUEST_LINE_LIMIT} bytes",
    "429": "too_many_requests: too many failed authentications from this address; "
           "Retry-After says when to try again (the key was not checked)",
    "431": f"bad_request: more than {HEADER_FIELDS_LIMIT} header fields, or one longer "
           f"than {HEADER_FIELD_SIZE_LIMIT} bytes",
    "503": "unavailable: the change could not be saved (nothing changed)",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again",
                                "schema": {"type": "integer", "minimum": 1}}}


def _document_common_errors(api: Api) -> None:
    """Errors every operation of a kind can answer, added to the OpenAPI document
    once instead of on each view: 400/414/431 from the HTTP parser (``dispatch.runtime.edge``)
    anywhere, 401/403/429 where a key is needed, 413 where a body is read, 503 where
    state changes."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in api.spec._paths.values():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = ["400", "414", "431"]
            if operation.get("security") != []:
                codes += ["401", "403", "429"]
            if "requestBody" in operation:
                codes.append("413")
            if method in ("post", "delete"):
                codes.append("503")
            for code in codes:
                operation["responses"].setdefault(
                    code, {"description": _COMMON_ERRORS[code], "content": error})
            if "429" in codes:
                operation["responses"]["429"].setdefault("headers", _RETRY_AFTER)


def make_keyring(settings: Settings) -> KeyRing:
    """The admin key, the client and engine keys from settings, and the key file."""
    extra = [(key, Principal(CLIENT)) for key in settings.client_keys]
    for item in settings.engine_keys:
        key, _, engine_id = item.partition("@")
        extra.append((key, Principal(ENGINE, engine_id or None)))
    ring = KeyRing(settings.api_key, settings.keys_file, extra)
    add_secrets(ring.secrets())
    return ring


def make_throttle(settings: Settings, metrics: Metrics) -> Throttle:
    """Failed authentication throttled per client address, counted in ``metrics``."""
    throttle = Throttle(settings.auth_failure_limit, settings.auth_failure_window,
                        settings.auth_block_seconds, settings.auth_throttle_table_size,
                        on_failure=metrics.auth_failures.inc,
                        on_refused=metrics.auth_refused.inc)
    metrics.watch_throttle(throttle)
    return throttle


def _instrument(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        rule = request.url_rule
        endpoint = route_label(rule.rule) if rule is not None else "unmatched"
        metrics.observe_request(endpoint, request.method, response.status_code, elapsed)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        if access_log.isEnabledFor(logging.INFO):
            ids = dict(request.view_args or {})
            ids.update(g.get("log_ids", {}))
            subject = " ".join(f"{key.split('_')[0]}={value}" for key, value in ids.items()
                               if value)
            # The path and ids come from the client: escaped where the line is made,
            # whichever handler writes it.
            access_log.info(
                '%s "%s %s" %d %.1fms %s', request.remote_addr, request.method,
                escape_controls(request.path), response.status_code, elapsed * 1000,
                escape_controls(subject) or "-",
            )
        return response
