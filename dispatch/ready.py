"""The line ``dispatch-server`` prints once it serves: where, on what state, with how
much loaded. Printed by the worker after it has loaded the app (so the counts are
those it serves), and again by a worker that replaces a dead one."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from dispatch.journal import JournalStore
from dispatch.service import DispatchService


def url(address: Any, family: int) -> str:
    """The URL of a listening socket's address."""
    if family == socket.AF_UNIX:
        return f"unix:{address}"
    host, port = address[0], address[1]
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def state_description(service: DispatchService) -> str:
    store = service.store
    if isinstance(store, JournalStore):
        return f"state file {store.path}"
    return f"state backend {type(store).__name__}"


def ready_line(service: DispatchService, listeners: Iterable[socket.socket]) -> str:
    urls = ", ".join(url(sock.getsockname(), sock.family) for sock in listeners)
    jobs = sum(service.counts().values())
    engines = sum(service.engine_counts().values())
    return (f"dispatch-server ready: serving {urls or '(no socket)'}, "
            f"{state_description(service)}, {jobs} jobs and {engines} engines loaded")
