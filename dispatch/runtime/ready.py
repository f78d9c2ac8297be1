"""The line ``dispatch-server`` prints once it serves: where, on what state, with how
much loaded. Printed by the worker after it has loaded the app (so the counts are
those it serves), and again by a worker that replaces a dead one."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from dispatch.bootstrap import Server
from dispatch.domain.errors import Unavailable


def url(address: Any, family: int) -> str:
    """The URL of a listening socket's address."""
    if family == socket.AF_UNIX:
        return f"unix:{address}"
    host, port = address[0], address[1]
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def ready_line(server: Server, listeners: Iterable[socket.socket]) -> str:
    urls = ", ".join(url(sock.getsockname(), sock.family) for sock in listeners)
    service = server.loaded_service()
    try:
        jobs = sum(service.queries.counts().values())
        engines = sum(service.queries.engine_counts().values())
        loaded = f"{jobs} jobs and {engines} engines loaded"
    except Unavailable as exc:
        # A worker that starts while the database blips serves (503 until it is back);
        # failing here would make gunicorn stop every worker.
        loaded = f"jobs and engines not counted ({exc.message})"
    return (f"dispatch-server ready: serving {urls or '(no socket)'}, "
            f"{server.backend.describe(server.settings)}, {loaded}")
