"""The one place the server is put together: settings -> backend -> unit of work ->
service -> app, for ``wsgi.py`` and ``dispatch-server`` alike.

The backend is chosen from the settings (``choose_backend``), the one switch between
backends; everything after it sees a ``ports.UnitOfWork`` and nothing else. A backend
is checked once in the serving process's master (``Backend.check``) and opened in each
worker (``Backend.open``); it says how many workers may share it, which gunicorn's
worker count follows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from flask import Flask

from dispatch.app import create_app
from dispatch.config.settings import Settings, load_settings
from dispatch.domain.errors import StateError
from dispatch.objects import ObjectStore, StoreError, open_store
from dispatch.runtime.background import Runtime
from dispatch.runtime.metrics import Metrics
from dispatch.service import DispatchService
from dispatch.service.ports import Backend, Clock, Observer, UnitOfWork
from dispatch.storage.journal import open_journal


class JournalBackend:
    """The embedded default: the state in this process's memory, made durable by the
    journal beside the state file. One worker: two would each hold their own queue."""

    name = "journal"

    def workers(self, settings: Settings) -> int:
        return 1

    def describe(self, settings: Settings) -> str:
        return f"state file {os.path.abspath(settings.state_file)}"

    def check(self, settings: Settings, clock: Clock, observer: Observer) -> UnitOfWork:
        """The state file locked and loaded: a damaged or already-owned one is refused
        here, before gunicorn starts, and the worker forked next serves what was
        loaded instead of reading the files again."""
        return self.open(settings, clock, observer)

    def open(self, settings: Settings, clock: Clock, observer: Observer) -> UnitOfWork:
        return open_journal(settings.state_file, clock, observer)


class DatabaseBackend:
    """PostgreSQL: the state in a database that several workers and machines share."""

    name = "postgres"

    def workers(self, settings: Settings) -> int:
        return settings.workers

    def describe(self, settings: Settings) -> str:
        from dispatch.storage.postgres.pool import safe_url

        return f"PostgreSQL at {safe_url(settings.database_url or '')}"

    def check(self, settings: Settings, clock: Clock, observer: Observer) -> None:
        """The schema brought up to date; each worker opens its own pool."""
        from dispatch.storage.postgres.wiring import check_database

        check_database(settings)
        return None

    def open(self, settings: Settings, clock: Clock, observer: Observer) -> UnitOfWork:
        from dispatch.storage.postgres.wiring import open_backend

        return open_backend(settings, clock, observer.registry)


def choose_backend(settings: Settings) -> Backend:
    """The backend for these settings: the embedded journal, unless a
    ``database_url`` is given."""
    return DatabaseBackend() if settings.database_url else JournalBackend()


@dataclass
class Server:
    """What a serving process is built from. ``dispatch-server`` checks its backend
    before gunicorn forks (to refuse a bad state with exit status 1) and keeps it for
    a worker that replaces a dead one."""

    settings: Settings
    backend: Backend
    metrics: Metrics
    clock: Clock
    store: ObjectStore
    checked: UnitOfWork | None = None  # what ``Backend.check`` opened, for first use
    service: DispatchService | None = None

    def loaded_service(self) -> DispatchService:
        """The service over the backend, opened in this process on first use."""
        if self.service is None:
            uow, self.checked = self.checked, None
            if uow is None:
                uow = self.backend.open(self.settings, self.clock, self.metrics)
            self.service = DispatchService(self.settings, uow, self.clock, self.store)
        return self.service

    def release(self) -> None:
        """In the master, once the first worker has forked with what ``check``
        opened: close this process's copy (the worker's own stays open, its lock
        held). A worker that replaces a dead one opens the state again, which holds
        every change the dead one made."""
        if self.checked is not None:
            self.checked.close()
            self.checked = None


def open_server(settings: Settings, *, clock: Clock | None = None,
                uow: UnitOfWork | None = None) -> Server:
    """Check the file store and the backend the settings choose (raises StateError or
    Unavailable when either cannot be used); a ``uow`` passed in (tests) is served as
    it is."""
    backend = choose_backend(settings)
    store = open_store(settings)
    server = Server(settings, backend, Metrics(), clock or time.time, store)
    if uow is not None:
        server.service = DispatchService(settings, uow, server.clock, store)
    else:
        server.checked = backend.check(settings, server.clock, server.metrics)
    # After the state: a state that cannot be used stops the start before the store
    # is touched (its folder created).
    try:
        store.check()
    except StoreError as exc:
        if server.checked is not None:
            server.checked.close()
        raise StateError(f"file store: {exc}") from None
    return server


def build_app(server: Server, *, background: bool = True) -> Flask:
    """The WSGI app over the server's service, and the service's background work
    (started unless ``background`` is False; tests drive it by hand)."""
    service = server.loaded_service()
    settings = server.settings
    shared_secret = service.uow.session_secret()
    if shared_secret is not None:
        settings = replace(settings, ui_secret=shared_secret)
    app = create_app(settings, service, server.metrics)
    app.extensions["dispatch.server"] = server  # for the ready line (``dispatch.ready``)
    runtime = Runtime(service)
    app.extensions["dispatch.runtime"] = runtime
    if background:
        runtime.start()
    return app


def is_database(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def open_state(location: str, password_file: str | None = None) -> UnitOfWork:
    """The state at ``location`` (a state file path or a ``postgresql://`` URL, its
    schema brought up to date) for a tool that reads or writes it with no server
    running; raises StateError or Unavailable."""
    if is_database(location):
        from dispatch.storage.postgres.wiring import open_tool_backend

        return open_tool_backend(location, password_file)
    return open_journal(location)


def wsgi_app() -> Flask:
    """For ``gunicorn wsgi:app``: settings from the environment (and
    ``DISTCONV_CONFIG``), nothing else."""
    return build_app(open_server(load_settings([])))
