"""The service: every job and engine, and every rule, in three parts the API, the
dashboard, the CLI and the background threads call directly, each written against the
ports (``dispatch.service.ports``) and nothing else:

- ``commands``: requests that change jobs and engines (``commands.Commands``);
- ``queries``: jobs and engines as they are, counts, statistics (``queries.Queries``);
- ``maintenance``: liveness sweeps, retention, webhook bookkeeping, snapshots
  (``maintenance.Maintenance``);
- ``files``: uploads, engines' outputs and their URLs, over an object store
  (``files.Files``).

The state lives in a unit of work (``ports.UnitOfWork``), whichever backend opened it.
"""

from __future__ import annotations

import time

from dispatch.config.settings import Settings
from dispatch.domain.models import to_micros
from dispatch.objects import ObjectStore, open_store
from dispatch.service.commands import AssignResult, Commands
from dispatch.service.files import Files
from dispatch.service.maintenance import Maintenance
from dispatch.service.ports import Clock, UnitOfWork
from dispatch.service.queries import Page, Queries

__all__ = ["AssignResult", "Clock", "DispatchService", "Page"]


class DispatchService:
    def __init__(self, settings: Settings, uow: UnitOfWork | None = None,
                 clock: Clock | None = None, store: ObjectStore | None = None) -> None:
        """The service over ``uow``; without one, over state kept in memory only.
        Files go to ``store``, else to the store the settings name."""
        self.settings = settings
        self.clock: Clock = clock or time.time
        if uow is None:
            # Imported here: the memory backend implements this package's ports.
            from dispatch.storage.memory import MemoryBackend

            uow = MemoryBackend(clock=self.clock)
        self.uow: UnitOfWork = uow
        self.started_at = to_micros(self.clock())
        self.files = Files(settings, self.uow, self.clock, store or open_store(settings))
        self.commands = Commands(settings, self.uow, self.clock, self.files.remove_outputs)
        self.queries = Queries(settings, self.uow, self.clock, self.started_at)
        self.maintenance = Maintenance(settings, self.uow, self.clock, self.files)

    def close(self) -> None:
        """Release what the backend holds (files, locks, connections)."""
        self.uow.close()
