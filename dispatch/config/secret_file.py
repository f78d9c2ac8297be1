"""A secret generated once and kept in a file (mode 0600) beside the state: the
dashboard's session secret, the embedded store's URL-signing secret."""

from __future__ import annotations

import logging
import os
import secrets

log = logging.getLogger("dispatch.config")


def kept_secret(path: str, what: str) -> str:
    """The secret in ``path``, generated there on first use. When it cannot be
    stored, a fresh one is returned (valid until the server restarts)."""
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
        log.warning("cannot store the %s in %s (%s); it will change when the server "
                    "restarts", what, path, exc.__class__.__name__)
        return generated
    log.info("generated the %s in %s", what, path)
    return generated


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()
