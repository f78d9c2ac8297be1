"""The secret that signs dashboard sessions: from settings (``ui_secret`` or its file,
checked by dispatch.config.settings), or generated once and kept beside the state file, so
sign-ins survive a restart. (On PostgreSQL the farm's secret is kept in the database
instead, and given here as ``ui_secret``: ``bootstrap.Backend.session_secret``.)"""

from __future__ import annotations

import logging
import os
import secrets

from dispatch.config.settings import Settings

log = logging.getLogger("dispatch.ui")


def secret_path(settings: Settings) -> str:
    return settings.state_file + ".ui-secret"


def session_secret(settings: Settings) -> str:
    """``ui_secret``, else the generated file beside the state file (created with
    mode 0600 on first use)."""
    if settings.ui_secret:
        return settings.ui_secret
    path = secret_path(settings)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    generated = secrets.token_hex(32)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        # Written whole under another name, then linked into place: the file is never
        # seen half-written, and of two processes racing, one link wins and the
        # other reads the winner's secret.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(generated + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read(path)
        finally:
            os.unlink(temporary)
    except OSError as exc:
        # The dashboard still works; its sign-ins just end when the server restarts.
        log.warning("cannot store the dashboard's session secret in %s (%s); sign-ins "
                    "will not survive a restart", path, exc.__class__.__name__)
        return generated
    log.info("generated the dashboard's session secret in %s", path)
    return generated


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()
