"""gunicorn settings and hooks, shared by ``dispatch-server`` and ``gunicorn.conf.py``.

As many worker processes as the backend allows (the embedded journal: one, since all
state lives in that process and two workers would each hold a different copy of the
queue), concurrency from threads. No ``max_requests`` (it would restart the worker, and
with it the state), no ``preload_app`` (background threads must start after the fork).
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from dispatch.bootstrap import choose_backend
from dispatch.config.settings import Settings
from dispatch.runtime.edge import HEADER_FIELD_SIZE_LIMIT, HEADER_FIELDS_LIMIT, REQUEST_LINE_LIMIT
from dispatch.runtime.logs import GunicornLogger, add_secrets
from dispatch.runtime.metrics import share_across_processes, worker_exited
from dispatch.runtime.ready import ready_line

log = logging.getLogger("dispatch.server")

# Long enough for in-flight requests (each waits for at most one fsync) and the final
# snapshot; the systemd unit's TimeoutStopSec is longer still.
GRACEFUL_TIMEOUT = 30


def options(settings: Settings) -> dict[str, Any]:
    """gunicorn configuration for these settings."""
    host = settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    opts: dict[str, Any] = {
        "bind": [f"{host}:{settings.port}"],
        "workers": choose_backend(settings).workers(settings),
        # gthread, answering what its HTTP parser refuses in the JSON error shape
        "worker_class": "dispatch.runtime.edge.JsonErrorWorker",
        "limit_request_line": REQUEST_LINE_LIMIT,
        "limit_request_fields": HEADER_FIELDS_LIMIT,
        "limit_request_field_size": HEADER_FIELD_SIZE_LIMIT,
        "threads": settings.thread_pool_size,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": 60,
        "keepalive": 5,
        "preload_app": False,
        "max_requests": 0,
        "accesslog": None,  # dispatch.access logs each request with its job/engine id
        "errorlog": "-",
        "logger_class": GunicornLogger,
        "loglevel": "warning" if settings.log_level in ("INFO", "DEBUG") else "error",
        "proc_name": "dispatch-server",
        "worker_exit": worker_exit,
        "child_exit": child_exit,
        "post_worker_init": post_worker_init,
        # A control socket needs a writable runtime folder that a locked-down unit
        # does not give, and this server offers no runtime management through it.
        "control_socket_disable": True,
    }
    return opts


def share_metrics(settings: Settings) -> str | None:
    """Before any metric is made: with several workers, /metrics must add up every
    worker's values, so they go into a folder of files (``metrics
    .share_across_processes``); returns it, for the caller to remove at exit."""
    return share_across_processes() if choose_backend(settings).workers(settings) > 1 else None


def child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker has exited."""
    worker_exited(worker.pid)


def post_worker_init(worker: Any) -> None:
    """In the worker, once the app is loaded: SIGUSR1 rereads the key file, besides
    reopening log files as gunicorn does (so logrotate's USR1 works as well); then
    the ready line, on stderr whatever the log level."""
    app = worker.wsgi
    print(ready_line(app.extensions["dispatch.server"], [s.sock for s in worker.sockets]),
          file=sys.stderr, flush=True)
    ring = app.extensions["dispatch.keys"]
    reopen = worker.handle_usr1

    def on_usr1(sig: int, frame: Any) -> None:
        reopen(sig, frame)
        try:
            count = ring.reload()
        except Exception as exc:  # a bad key file must not take the server down
            log.error("key file not reloaded, keeping the current keys: %s", exc)
            return
        add_secrets(ring.secrets())
        log.warning("reloaded the API keys: %d valid", count)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.siginterrupt(signal.SIGUSR1, False)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, after its last request: stop background work, final snapshot."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("dispatch.runtime")
    if runtime is not None:
        runtime.shutdown()
