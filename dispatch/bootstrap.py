"""The one place the server is put together: settings -> backend -> service -> app,
for ``wsgi.py`` and ``dispatch-server`` alike.

The backend is chosen from the settings (``choose_backend``); it says how it is opened
and how many server processes may share it, which gunicorn's worker count follows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from flask import Flask

from dispatch.app import create_app
from dispatch.background import Runtime
from dispatch.metrics import Metrics
from dispatch.persistence import Store
from dispatch.service import Clock, DispatchService
from dispatch.settings import Settings, load_settings
from dispatch.storage.journal import JournalStore, SyncObserver


@dataclass(frozen=True)
class Backend:
    name: str
    # gunicorn worker processes it allows: a backend whose state lives in the serving
    # process allows one (two would each hold their own copy of the queue).
    workers: int
    # Opens the state the settings name, telling ``observer`` of syncs and failures;
    # raises StateError (or Unavailable) when it cannot be used.
    open: Callable[[Settings, SyncObserver], Store | None]
    # Where the state is, as the ready line names it.
    describe: Callable[[Settings], str]
    # A backend shared by several processes builds its service in each worker (after
    # the fork) from the settings, the clock and the metrics; ``open`` then only checks
    # that the state can be used (in the master, before gunicorn starts).
    open_service: Callable[[Settings, Clock | None, Metrics], DispatchService] | None = None
    # The dashboard's session secret when none is set, for a backend whose processes
    # may run on several machines: every one must sign with the same. None: the
    # dashboard keeps its own beside the state file (``ui.secret``).
    session_secret: Callable[[Settings], str] | None = None


def _open_journal(settings: Settings, observer: SyncObserver) -> Store:
    return JournalStore(settings.state_file, observer=observer)


def _describe_journal(settings: Settings) -> str:
    return f"state file {os.path.abspath(settings.state_file)}"


EMBEDDED_JOURNAL = Backend("journal", workers=1, open=_open_journal,
                           describe=_describe_journal)
# Every backend with a store; tests/contract/test_backends.py runs against each. The
# PostgreSQL backend has no store: tests/contract/test_backend_contract.py runs the
# ports' contract against it (tests/backends.py).
BACKENDS = (EMBEDDED_JOURNAL,)


def _check_database(settings: Settings, observer: SyncObserver) -> None:
    from dispatch.postgres.wiring import check_database

    check_database(settings)


def _open_database_service(settings: Settings, clock: Clock | None,
                           metrics: Metrics) -> DispatchService:
    from dispatch.postgres.wiring import open_service

    return open_service(settings, clock, metrics.registry)


def _database_session_secret(settings: Settings) -> str:
    from dispatch.postgres.wiring import shared_session_secret

    return shared_session_secret(settings)


def _describe_database(settings: Settings) -> str:
    from dispatch.postgres.pool import safe_url

    return f"PostgreSQL at {safe_url(settings.database_url or '')}"


def choose_backend(settings: Settings) -> Backend:
    """The backend for these settings: the one switch between backends. The embedded
    journal, unless a ``database_url`` is given: then PostgreSQL, with as many
    workers as ``workers`` says."""
    if settings.database_url:
        return Backend("postgres", workers=settings.workers, open=_check_database,
                       describe=_describe_database, open_service=_open_database_service,
                       session_secret=_database_session_secret)
    return EMBEDDED_JOURNAL


@dataclass
class Server:
    """What a serving process is built from. ``dispatch-server`` builds it before
    gunicorn forks (to refuse a bad state file with exit status 1) and keeps it, without
    its service, for a worker that replaces a dead one."""

    settings: Settings
    backend: Backend
    store: Store | None  # None for a shared database: each worker opens its own
    metrics: Metrics
    clock: Clock | None
    service: DispatchService | None

    def loaded_service(self) -> DispatchService:
        """The service, loaded from the store again if it was released (or, on a
        shared database, opened in this process)."""
        if self.service is None:
            if self.backend.open_service is not None:
                self.service = self.backend.open_service(self.settings, self.clock,
                                                         self.metrics)
            else:
                self.service = DispatchService(self.settings, self.store, self.clock)
        return self.service


def open_server(settings: Settings, *, clock: Clock | None = None,
                store: Store | None = None) -> Server:
    """Open the backend the settings choose and load the service from it (a shared
    database's service is opened by each worker); raises StateError or Unavailable
    when the state cannot be used. A ``store`` passed in (tests) is used as
    it is, unobserved by the metrics."""
    backend = choose_backend(settings)
    metrics = Metrics()
    if backend.open_service is not None and store is None:
        backend.open(settings, metrics)  # the schema brought up to date, or refused
        return Server(settings, backend, None, metrics, clock, None)
    if store is None:
        store = backend.open(settings, metrics)
    service = DispatchService(settings, store, clock)
    return Server(settings, backend, store, metrics, clock, service)


def build_app(server: Server, *, background: bool = True) -> Flask:
    """The WSGI app over the server's service, and the service's background work
    (started unless ``background`` is False; tests drive it by hand)."""
    service = server.loaded_service()
    settings = server.settings
    if not settings.ui_secret and server.backend.session_secret is not None:
        settings = replace(settings, ui_secret=server.backend.session_secret(settings))
    app = create_app(settings, service, server.metrics)
    app.extensions["dispatch.server"] = server  # for the ready line (``dispatch.ready``)
    runtime = Runtime(service)
    app.extensions["dispatch.runtime"] = runtime
    if background:
        runtime.start()
    return app


def wsgi_app() -> Flask:
    """For ``gunicorn wsgi:app``: settings from the environment (and
    ``DISTCONV_CONFIG``), nothing else."""
    return build_app(open_server(load_settings([])))
