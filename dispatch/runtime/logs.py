"""Logging from settings: level, file, rotation; lifecycle events carry their ids."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import Iterable
from typing import Any

from gunicorn import glogging

from dispatch.config.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class EventFormatter(logging.Formatter):
    """Appends ``job=`` and ``engine=`` to lines that name them."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Many lines a second share one formatted second (strftime is the slow part).
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{label}={getattr(record, attr)}" for attr, label in
               (("job_id", "job"), ("engine_id", "engine")) if getattr(record, attr, None)]
        return f"{line} {' '.join(ids)}" if ids else line


# Every key this process has accepted: a key removed by a rotation stays redacted.
SECRETS: set[str] = set()


def add_secrets(secrets: Iterable[str]) -> None:
    SECRETS.update(s for s in secrets if s)


# Control characters from requests (a path with %0D%0A, an engine's error message)
# must not start forged lines or move the terminal: they are written escaped.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127)}


def escape_controls(text: str) -> str:
    return text.translate(_ESCAPES)


class Redactor(logging.Filter):
    """Replaces any API key that would reach a log line, whatever logged it, and
    escapes control characters in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = message.translate(_ESCAPES)
        secrets = list(SECRETS)
        if any(secret in cleaned for secret in secrets):
            for secret in secrets:
                cleaned = cleaned.replace(secret, "***")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(settings: Settings, *, rotate: bool = True) -> logging.Handler:
    """Send the ``dispatch`` loggers (and gunicorn's) to stderr or the log file.

    Only the serving process rotates (``rotate``): gunicorn's master logs too, and two
    processes rotating one file would delete each other's rotated files. The master
    reopens the file when the worker has moved it away."""
    # One line per request: skip what the format never shows. Finding the caller's
    # file and line walks the stack on every call (the logging HOWTO's optimisation).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.Handler
    if settings.log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    elif settings.log_rotation == "none" or not rotate:
        handler = logging.handlers.WatchedFileHandler(settings.log_file, encoding="utf-8")
    else:
        handler = logging.handlers.TimedRotatingFileHandler(
            settings.log_file, when="midnight" if settings.log_rotation == "daily" else "H",
            backupCount=settings.log_max_files, encoding="utf-8", utc=True,
        )
    handler.setFormatter(EventFormatter(FORMAT))
    add_secrets([settings.api_key, *settings.client_keys, *settings.engine_keys])
    handler.addFilter(Redactor())
    for name in ("dispatch", "gunicorn.error"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if getattr(old, "_dispatch", False):
                logger.removeHandler(old)
                old.close()
        setattr(handler, "_dispatch", True)  # noqa: B010 - marks handlers we replace
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("dispatch").setLevel(settings.log_level)
    return handler


class GunicornLogger(glogging.Logger):
    """gunicorn's logger, writing its error log through this server's handler.

    gunicorn adds a handler of its own whose format wants ``%(process)d``, which the
    records no longer carry (``logProcesses`` is off, see ``configure_logging``): each
    of its records (an over-long request line, a bad header) printed a "Logging error"
    traceback, and the line twice. Where ``configure_logging`` has attached the
    server's handler, gunicorn's is removed; otherwise (``gunicorn wsgi:app`` before
    the app is loaded) it gets the server's format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        ours = [h for h in self.error_log.handlers if getattr(h, "_dispatch", False)]
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_dispatch", False):
                continue
            if ours:
                self.error_log.removeHandler(handler)
            else:
                handler.setFormatter(EventFormatter(FORMAT))
