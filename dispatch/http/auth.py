"""API keys and roles: flask-httpauth's token auth on the ``X-API-Key`` header.

Three roles:

- ``admin``: everything (the ``api_key`` setting, and ``admin`` lines of the key file);
- ``client``: submit, read, cancel and retry jobs, and read statistics;
- ``engine``: heartbeat, benchmark, take work, report on it, and read its jobs. An
  engine key may be bound to one ``engine_id``; it can then act as that engine only.

The key file (``keys_file``) holds one key a line, ``ROLE KEY [ENGINE_ID]``, ``#`` for
comments. It is read at start and again on SIGUSR1, so keys rotate without a restart:
add the new key, signal, move the clients over, remove the old key, signal.

Every presented key is compared with every configured key in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import overload

from flask import Response, current_app, request
from flask_httpauth import HTTPTokenAuth

from dispatch.config.settings import MIN_KEY_LENGTH
from dispatch.domain.models import ENGINE_ID, ENGINE_ID_RULE
from dispatch.http.errors import TooManyRequests, error_response
from dispatch.http.throttle import Throttle

log = logging.getLogger("dispatch.auth")

ADMIN, CLIENT, ENGINE = "admin", "client", "engine"
ROLES = (ADMIN, CLIENT, ENGINE)
SECURITY_SCHEME = {"type": "apiKey", "in": "header", "name": "X-API-Key"}


class KeyFileError(Exception):
    """The key file cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class Principal:
    """Who a request's key belongs to."""

    role: str
    engine_id: str | None = None  # set for an engine key bound to one engine


@dataclass(frozen=True)
class _Key:
    secret: bytes
    principal: Principal


def parse_key_file(text: str, source: str) -> list[tuple[str, Principal]]:
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        role = parts[0].lower()
        if role not in ROLES or len(parts) < 2 or len(parts) > (3 if role == ENGINE else 2):
            raise KeyFileError(
                f"{source} line {number}: expected 'admin KEY', 'client KEY' or "
                "'engine KEY [ENGINE_ID]'"
            )
        if len(parts[1]) < MIN_KEY_LENGTH:
            raise KeyFileError(f"{source} line {number}: keys must have at least "
                               f"{MIN_KEY_LENGTH} characters")
        engine_id = parts[2] if len(parts) == 3 else None
        if engine_id is not None and not ENGINE_ID.fullmatch(engine_id):
            raise KeyFileError(f"{source} line {number}: invalid engine id (must be "
                               f"{ENGINE_ID_RULE})")
        keys.append((parts[1], Principal(role, engine_id)))
    return keys


class KeyRing:
    """The keys accepted now; replaced whole on reload, so a request sees either the
    old set or the new one."""

    def __init__(self, admin_key: str, keys_file: str | None = None,
                 extra: Iterable[tuple[str, Principal]] = ()) -> None:
        self.admin_key = admin_key
        self.keys_file = keys_file
        self.extra = list(extra)
        self._lock = threading.Lock()
        self._keys: list[_Key] = []
        self.reload()

    def reload(self) -> int:
        """Read the key file again; on error keep the current keys and raise."""
        entries = [(self.admin_key, Principal(ADMIN)), *self.extra]
        if self.keys_file:
            try:
                with open(self.keys_file, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyFileError(f"cannot read key file {self.keys_file}: "
                                   f"{exc.__class__.__name__}") from None
            entries.extend(parse_key_file(text, self.keys_file))
        keys = [_Key(secret.encode(), principal) for secret, principal in entries]
        with self._lock:
            self._keys = keys
        return len(keys)

    def secrets(self) -> list[str]:
        return [key.secret.decode() for key in self._keys]

    def by_fingerprint(self, fingerprint: str) -> Principal | None:
        """The principal of the key whose fingerprint this is, while it is still
        accepted (a dashboard session ends when its key is removed)."""
        found: Principal | None = None
        for key in self._keys:
            if hmac.compare_digest(fingerprint, key_fingerprint(key.secret.decode())) \
                    and found is None:
                found = key.principal
        return found

    def identify(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        candidate = presented.encode()
        found: Principal | None = None
        for key in self._keys:
            # No early exit: the time taken does not tell which key, if any, matched.
            if hmac.compare_digest(candidate, key.secret) and found is None:
                found = key.principal
        return found


def key_fingerprint(key: str) -> str:
    """A key's name for logs and sessions, not the key: the first 12 hex digits of its
    SHA-256 (``printf %s KEY | sha256sum | cut -c1-12``)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


auth = HTTPTokenAuth(header="X-API-Key")


def refuse_if_blocked() -> Throttle:
    """Raise TooManyRequests (``429``) when the client's address is blocked; else
    return the throttle."""
    throttle: Throttle = current_app.extensions["dispatch.throttle"]
    wait = throttle.retry_after(request.remote_addr or "")
    if wait is not None:
        raise TooManyRequests(wait)
    return throttle


def checked_key(presented: str) -> Principal | None:
    """The principal of ``presented``, throttled by the client's address: a blocked
    address gets ``429`` (TooManyRequests) whatever it presents, and a wrong key counts
    towards a block. A missing key guesses nothing and is not counted."""
    throttle = refuse_if_blocked()
    ring: KeyRing = current_app.extensions["dispatch.keys"]
    principal = ring.identify(presented)
    if principal is None and presented:
        throttle.failed(request.remote_addr or "")
    return principal


def weak_key_warning(admin_key: str) -> str | None:
    """The warning for an admin key anyone could guess, or None for a strong one."""
    if len(admin_key) >= MIN_KEY_LENGTH:
        return None
    return (f"the admin API key (api_key / DISTCONV_API_KEY) has {len(admin_key)} "
            f"characters; use at least {MIN_KEY_LENGTH}, e.g. one made by: "
            "python3 -c 'import secrets; print(secrets.token_hex(32))'")


@auth.verify_token
def _verify(token: str) -> Principal | None:
    return checked_key(token)


@auth.get_user_roles
def _roles(principal: Principal) -> str:
    return principal.role


@auth.error_handler
def _unauthorized(status: int) -> Response:
    if status == 401 and not request.headers.get("X-API-Key"):
        # No key at all never reaches verify_token (flask-httpauth skips it); a blocked
        # address is refused all the same.
        refuse_if_blocked()
    if status == 403:
        return error_response(403, "forbidden", "this key's role may not do this")
    return error_response(401, "unauthorized", "missing or wrong X-API-Key header")


def current() -> Principal:
    """The principal of the current (authenticated) request."""
    principal = auth.current_user()
    assert isinstance(principal, Principal)
    return principal


@overload
def acting_engine(claimed: str) -> str: ...
@overload
def acting_engine(claimed: None) -> str | None: ...
def acting_engine(claimed: str | None) -> str | None:
    """The engine a request acts as. A bound engine key acts as its own engine only:
    claiming another is ``403``; claiming none means its own."""
    principal = current()
    if principal.engine_id is None:
        return claimed
    if claimed is not None and claimed != principal.engine_id:
        from dispatch.http.errors import Forbidden

        raise Forbidden(f"this key acts as engine {principal.engine_id!r} only")
    return principal.engine_id


# The roles of each kind of endpoint, in one place.
JOB_WRITERS = (ADMIN, CLIENT)
JOB_READERS = (ADMIN, CLIENT, ENGINE)
ENGINE_REPORTERS = (ADMIN, ENGINE)
OPERATORS = (ADMIN,)
