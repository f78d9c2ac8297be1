"""The dashboard's pages and actions under ``/ui/``.

Every page needs a session (else a redirect to the sign-in page); every POST needs
the session's CSRF token and a same-origin Origin; every action needs an admin
session and asks for confirmation on a page of its own before it runs. A page asked
for with ``X-Live-Fragment: 1`` answers only its live part, which ui.js swaps in
every few seconds.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from dispatch.config.settings import Settings
from dispatch.domain import errors
from dispatch.domain.job_search import JobFilter
from dispatch.domain.models import JOB_STATUSES
from dispatch.http.schemas import PrioritySchema
from dispatch.http.uploads import base_url
from dispatch.service import DispatchService
from dispatch.service import present as forms
from dispatch.ui import present, security
from dispatch.ui.actions import (
    BULK_MAX,
    ENGINE_ACTIONS,
    JOB_ACTIONS,
    Action,
    bulk,
    log,
    perform,
)

REFRESH_MS = 2000
MAX_FILTER = 256
PAGE_SIZE = 50
RECENT_JOBS = 20  # on an engine's page
CHART_MINUTES = 60  # the overview's chart
LIVE_HEADER = "X-Live-Fragment"

blp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates",
                static_folder="static")


def init_app(app: Flask, settings: Settings) -> None:
    """Register the dashboard on the app (called by create_app)."""
    security.configure(app, settings)
    app.register_blueprint(blp)


def _service() -> DispatchService:
    service: DispatchService = current_app.extensions["dispatch"]
    return service


class Refused(Exception):
    """An error page: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@blp.errorhandler(Refused)
def _refused(exc: Refused) -> tuple[str, int]:
    return render_template("ui/error.html", message=exc.message, status=exc.status), exc.status


@blp.errorhandler(errors.NotFound)
def _not_found(exc: errors.NotFound) -> tuple[str, int]:
    return render_template("ui/error.html", message=exc.message, status=404), 404


@blp.before_request
def _guard() -> ResponseReturnValue | None:
    if request.endpoint == "ui.static":
        return None
    if request.method == "POST":
        problem = security.post_problem()
        if problem is not None:
            raise Refused(403, problem)
    if request.endpoint == "ui.login":
        return None
    operator = security.signed_in()
    if operator is None:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    g.operator = operator
    return None


@blp.after_request
def _headers(response: Response) -> Response:
    return security.secure_headers(response)


@blp.app_template_filter("duration")
def _duration(seconds: float | None) -> str:
    return present.duration(seconds)


@blp.app_template_filter("when")
def _when(timestamp: float | None) -> str:
    return present.when(timestamp)


def _admin() -> security.Operator:
    operator: security.Operator = g.operator
    if not operator.can_act:
        raise Refused(403, "Only an admin session may change jobs and engines; this "
                           f"session is a {operator.role}'s.")
    return operator


def _page(template: str, live: str, **context: Any) -> str | Response:
    """The whole page, or only its live part when ui.js asks for it."""
    context.update(operator=g.operator, live_template=live, refresh_ms=REFRESH_MS)
    if request.headers.get(LIVE_HEADER) == "1":
        response = Response(render_template(live, **context), mimetype="text/html")
        response.headers[LIVE_HEADER] = "1"
        return response
    return render_template(template, **context)


def _safe_next(target: str | None) -> str:
    """Only a path of the dashboard itself (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return url_for("ui.overview")


def _confirm(title: str, action: Action, subject: str, back: str, **extra: Any) -> str:
    """The confirmation page: the same form again with ``confirmed``, and a way back."""
    fields = {key: value for key, value in request.form.items()
              if key not in ("csrf_token", "confirmed")}
    return render_template("ui/confirm.html", operator=g.operator, title=title, action=action,
                           subject=subject, fields=fields, back=back, **extra)


def _confirmed() -> bool:
    return request.form.get("confirmed") == "yes"


# ------------------------------------------------------------------ sign-in

@blp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if security.signed_in() is not None:
            return redirect(next_url)
        return render_template("ui/login.html", next_url=next_url)
    try:
        operator = security.sign_in(request.form.get("api_key", ""))
    except security.SignInRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return render_template("ui/login.html", next_url=next_url, message=exc.message), \
            exc.status, headers
    log.info("dashboard: sign-in by %s", operator)
    return redirect(next_url, 303)


@blp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    log.info("dashboard: sign-out by %s", g.operator)
    security.sign_out()
    return redirect(url_for("ui.login"), 303)


# ------------------------------------------------------------------ overview

@blp.route("/")
def overview() -> Any:
    data = _service().queries.overview(CHART_MINUTES)
    per_minute = data["per_minute"]
    # Addresses blocked for wrong keys (dispatch.http.throttle): for admin sessions only,
    # as GET /auth/blocks is for admin keys only.
    blocks = current_app.extensions["dispatch.throttle"].blocks() \
        if g.operator.can_act else None
    return _page("ui/overview.html", "ui/_overview_live.html", data=data, blocks=blocks,
                 completed_bars=present.bars(per_minute["completed"]),
                 failed_bars=present.bars(per_minute["failed"]),
                 chart_width=present.CHART_WIDTH, chart_height=present.CHART_HEIGHT,
                 statuses=JOB_STATUSES, nav="overview")


# ---------------------------------------------------------------------- jobs

def _filter() -> JobFilter:
    source = request.values
    status = source.get("status", "").strip()
    if status and status not in JOB_STATUSES:
        raise Refused(400, f"Unknown status {status!r}; choose one of "
                           f"{', '.join(JOB_STATUSES)}.")
    values = {name: source.get(key, "").strip()
              for name, key in (("codec", "codec"), ("engine", "engine"), ("text", "q"))}
    for name, value in values.items():
        if len(value) > MAX_FILTER:
            raise Refused(400, f"The {name} filter is longer than {MAX_FILTER} characters.")
    return JobFilter(status=status, **values)


def _offset() -> int:
    raw = request.args.get("offset", "0")
    if not raw.isdigit() or len(raw) > 10:
        raise Refused(400, "offset must be a whole number of jobs.")
    return int(raw)


@blp.route("/jobs")
def jobs() -> Any:
    where = _filter()
    offset = _offset()
    page = _service().queries.search_jobs(where, offset, PAGE_SIZE)
    base = where.args()

    def link(new_offset: int) -> str:
        args = {**base, "offset": str(new_offset)} if new_offset else base
        return url_for("ui.jobs") + ("?" + urlencode(args) if args else "")

    newer = link(max(0, offset - PAGE_SIZE)) if offset > 0 else None
    older = link(offset + PAGE_SIZE) if offset + PAGE_SIZE < page.total else None
    return _page("ui/jobs.html", "ui/_jobs_live.html", page=page, offset=offset, where=where,
                 statuses=JOB_STATUSES, newer=newer, older=older, nav="jobs",
                 bulk_actions=JOB_ACTIONS.values())


@blp.route("/jobs/bulk", methods=["POST"])
def jobs_bulk() -> Any:
    who = _admin()
    action = JOB_ACTIONS.get(request.form.get("action", ""))
    if action is None:
        raise Refused(400, "Unknown bulk action; choose retry or cancel.")
    where = _filter()
    found = _service().queries.search_jobs(where, 0, BULK_MAX)
    matching, matched = found.jobs, found.total
    applicable = sum(1 for job in matching if action.applies(job))
    description = ", ".join(f"{key}={value}" for key, value in where.args().items()) \
        or "all jobs"
    back = url_for("ui.jobs") + ("?" + urlencode(where.args()) if where.args() else "")
    if not _confirmed():
        return _confirm(f"{action.button.split()[0]} every job matching the filter?", action,
                        description, back, bulk=True, matched=matched, applicable=applicable,
                        limit=BULK_MAX)
    result = bulk(_service(), who, action, matching, description)
    verb = {"cancel": "cancelled", "retry": "retried"}[action.name]
    flash(f"{result.changed} jobs {verb}; {result.skipped} skipped (their status does not "
          f"allow it); {len(result.failed)} failed.", "ok" if not result.failed else "error")
    for job_id, message in result.failed[:10]:  # the messages travel in the cookie
        flash(f"{job_id}: {message}", "error")
    if len(result.failed) > 10:
        flash(f"... and {len(result.failed) - 10} more; the log names each one.", "error")
    if matched > BULK_MAX:
        flash(f"Only the first {BULK_MAX} of {matched} matching jobs were handled; "
              "run the action again for the rest.", "error")
    return redirect(back, 303)


@blp.route("/jobs/<job_id>")
def job(job_id: str) -> Any:
    service = _service()
    found = service.queries.get_job(job_id)
    return _page("ui/job.html", "ui/_job_live.html", job=found,
                 view=forms.job(service.queries.describe(found)),
                 chunked=service.queries.chunks(job_id) if found.chunk_seconds else None,
                 events=forms.events(service.queries.job_events(job_id)),
                 actions=JOB_ACTIONS.values(), nav="jobs")


@blp.route("/jobs/<job_id>/output", methods=["GET"])
def job_output(job_id: str) -> Any:
    """The output's download: a signed URL made now (the page never holds one)."""
    service = _service()
    try:
        return redirect(service.files.output_link(service.queries.get_job(job_id),
                                                  base_url()), 302)
    except errors.Conflict as exc:
        raise Refused(409, exc.message) from None


@blp.route("/jobs/<job_id>/<name>", methods=["POST"])
def job_action(job_id: str, name: str) -> Any:
    who = _admin()
    service = _service()
    found = service.queries.get_job(job_id)
    back = url_for("ui.job", job_id=job_id)
    if name == "priority":
        try:
            priority = PrioritySchema().load(
                {"priority": _integer(request.form.get("priority", ""))})["priority"]
        except ValidationError as exc:
            flash(f"Priority not changed: {_first(exc.messages)}", "error")
            return redirect(back, 303)
        if not _confirmed():
            return _confirm(f"Change the priority of job {job_id} from {found.priority} "
                            f"to {priority}?", Action("priority", "Change priority",
                                                      lambda *_: None), job_id, back)
        problem = perform(who, f"priority {priority} for job", job_id,
                          lambda: service.commands.set_priority(job_id, priority))
        flash(problem or f"Job {job_id}: priority is now {priority}.",
              "error" if problem else "ok")
        return redirect(back, 303)
    action = JOB_ACTIONS.get(name)
    if action is None:
        raise Refused(404, f"No job action {name!r}.")
    if not _confirmed():
        return _confirm(f"{action.button} {job_id}?", action, job_id, back)
    problem = perform(who, f"{name} job", job_id, lambda: action.run(service, job_id))
    verb = {"cancel": "cancelled", "retry": "sent back to the queue"}[name]
    flash(problem or f"Job {job_id} {verb}.", "error" if problem else "ok")
    return redirect(back, 303)


def _integer(raw: str) -> Any:
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        return text  # the schema answers "Not a valid integer."


def _first(messages: Any) -> str:
    if isinstance(messages, dict):
        return _first(next(iter(messages.values()), ""))
    if isinstance(messages, list):
        return _first(messages[0]) if messages else ""
    return str(messages)


# ------------------------------------------------------------------- engines

@blp.route("/engines")
def engines() -> Any:
    _admin_or_403_for_reading()
    return _page("ui/engines.html", "ui/_engines_live.html",
                 rows=_service().queries.engine_rows(), nav="engines")


@blp.route("/engines/<engine_id>")
def engine(engine_id: str) -> Any:
    _admin_or_403_for_reading()
    service = _service()
    row = service.queries.engine_row(engine_id)
    if row is None:
        raise errors.EngineNotFound(engine_id)
    return _page("ui/engine.html", "ui/_engine_live.html", row=row,
                 recent=service.queries.recent_jobs(engine_id, RECENT_JOBS),
                 actions=ENGINE_ACTIONS.values(), nav="engines")


def _admin_or_403_for_reading() -> None:
    # The API shows engines to admin keys only (hostnames, storage: the farm's
    # layout); the dashboard keeps the same rule.
    if not g.operator.can_act:
        raise Refused(403, "Engines are shown to admin sessions only, as in the API.")


@blp.route("/engines/<engine_id>/<name>", methods=["POST"])
def engine_action(engine_id: str, name: str) -> Any:
    who = _admin()
    service = _service()
    action = ENGINE_ACTIONS.get(name)
    if action is None:
        raise Refused(404, f"No engine action {name!r}.")
    if service.queries.engine_row(engine_id) is None:
        raise errors.EngineNotFound(engine_id)
    if not _confirmed():
        return _confirm(f"{action.button} {engine_id}?", action, engine_id,
                        url_for("ui.engine", engine_id=engine_id))
    problem = perform(who, f"{name} engine", engine_id, lambda: action.run(service, engine_id))
    verb = {"drain": "is draining: it gets no new jobs",
            "resume": "takes jobs again", "remove": "removed; its jobs went back to the queue"}
    flash(problem or f"Engine {engine_id} {verb[name]}.", "error" if problem else "ok")
    if name == "remove" and problem is None:
        return redirect(url_for("ui.engines"), 303)
    return redirect(url_for("ui.engine", engine_id=engine_id), 303)
