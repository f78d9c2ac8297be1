"""How the dashboard is guarded: a signed session cookie, sign-in with an API key
checked by the API's own key ring, a CSRF token and an Origin check on every POST,
actions for admin keys only, and the headers every page carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from dispatch.config.settings import Settings
from dispatch.http.auth import ADMIN, CLIENT, KeyRing, checked_key, key_fingerprint
from dispatch.http.errors import TooManyRequests
from dispatch.runtime.logs import add_secrets
from dispatch.ui.secret import session_secret

COOKIE_NAME = "distconv_ui"
SIGN_IN_ROLES = (ADMIN, CLIENT)
# Only the server's own scripts, styles and images; no inline script or style, no
# plug-ins, no framing, forms post back here only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

csrf = CSRFProtect()


class _SessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:
        # https directly, or through a trusted proxy (ProxyFix applied its
        # X-Forwarded-Proto): the cookie then never travels over plain http.
        return has_request_context() and request.is_secure


def configure(app: Flask, settings: Settings) -> None:
    """Session cookie and CSRF settings for the dashboard; the API is unaffected
    (it reads no cookie, and CSRF is checked by the dashboard's views only)."""
    app.secret_key = session_secret(settings)
    add_secrets([app.secret_key])
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH="/ui",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        # Also the signature's maximum age: an old cookie is refused by the server,
        # whatever the browser keeps.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.ui_session_lifetime),
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=False,  # check_post compares Origin (or Referer) itself
    )
    csrf.init_app(app)


@dataclass(frozen=True)
class Operator:
    """Who a dashboard session belongs to: the key's role and its fingerprint."""

    role: str
    fingerprint: str

    @property
    def can_act(self) -> bool:
        return self.role == ADMIN

    def __str__(self) -> str:
        return f"{self.role} key {self.fingerprint}"


class SignInRefused(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def _ring() -> KeyRing:
    ring: KeyRing = current_app.extensions["dispatch.keys"]
    return ring


def sign_in(key: str) -> Operator:
    # Throttled as the API is: a blocked address is refused before the key is checked.
    try:
        principal = checked_key(key.strip())
    except TooManyRequests as exc:
        raise SignInRefused(429, "Too many wrong keys were tried from your address; "
                                 f"try again in {exc.retry_after} seconds.",
                            exc.retry_after) from None
    if principal is None:
        raise SignInRefused(401, "That API key is not accepted.")
    if principal.role not in SIGN_IN_ROLES:
        raise SignInRefused(403, f"An {principal.role} key cannot sign in to the dashboard; "
                                 "use an admin or client key.")
    session.clear()  # a new session: a fresh CSRF token, nothing carried over
    session.permanent = True
    fingerprint = key_fingerprint(key.strip())
    session["key"] = fingerprint
    return Operator(principal.role, fingerprint)


def signed_in() -> Operator | None:
    """The session's operator, while its key is still accepted with a role that may
    sign in (removing a key from the key file ends its sessions)."""
    fingerprint = session.get("key")
    if not isinstance(fingerprint, str):
        return None
    principal = _ring().by_fingerprint(fingerprint)
    if principal is None or principal.role not in SIGN_IN_ROLES:
        return None
    return Operator(principal.role, fingerprint)


def sign_out() -> None:
    session.clear()


def post_problem() -> str | None:
    """Why this POST must be refused, or None: it must come from a page of this
    server (Origin, or Referer when a browser sends no Origin) and carry the
    session's CSRF token."""
    expected = request.host_url.rstrip("/")
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin != expected:
            return "This form was sent from another site; it was refused."
    elif request.referrer:
        parts = urlsplit(request.referrer)
        if f"{parts.scheme}://{parts.netloc}" != expected:
            return "This form was sent from another site; it was refused."
    try:
        csrf.protect()
    except CSRFError:
        return ("The form's security token is missing or out of date (the session may "
                "have ended); reload the page and try again.")
    return None


def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response
