"""``copy-state``: a farm moved between a state file and a database, either way, every
kind of record with it (jobs in creation order with their histories, engines,
idempotency keys, webhook deliveries). The target must be empty: nothing is merged or
overwritten. Both sides are read and written through the ports (``bootstrap
.open_state``), with the servers stopped (the state file is locked while it is open;
the database should have no instance running)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dispatch.bootstrap import is_database, open_state
from dispatch.domain import errors
from dispatch.domain.history import Event
from dispatch.domain.models import Delivery, Engine, IdempotencyEntry, Job
from dispatch.service.ports import UnitOfWork


@dataclass
class Farm:
    jobs: list[Job] = field(default_factory=list)  # in creation order
    engines: list[Engine] = field(default_factory=list)
    history: dict[str, list[Event]] = field(default_factory=dict)
    idempotency: dict[str, IdempotencyEntry] = field(default_factory=dict)  # oldest first
    deliveries: dict[str, Delivery] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{len(self.jobs)} jobs, {len(self.engines)} engines, "
                f"{len(self.history)} job histories, {len(self.idempotency)} idempotency "
                f"keys, {len(self.deliveries)} webhook deliveries")


def read_farm(uow: UnitOfWork) -> Farm:
    """Every record, from one consistent state."""
    farm = Farm()
    with uow.read() as tx:
        for job, events in tx.jobs.dump():
            farm.jobs.append(job)
            if events:
                farm.history[job.job_id] = events
        farm.engines = list(tx.engines.all())
        farm.idempotency = dict(tx.idempotency.all())
        farm.deliveries = {d.job_id: d for d in tx.deliveries.all()}
    return farm


def write_farm(uow: UnitOfWork, farm: Farm, where: str) -> None:
    """Every record of ``farm`` into the empty state ``where`` names, in one unit;
    StateError (and nothing written) when the state holds anything."""
    with uow.transaction() as tx:
        held = {"jobs": tx.jobs.total(), "engines": len(tx.engines.all()),
                "idempotency": len(tx.idempotency.all()),
                "deliveries": len(tx.deliveries.all())}
        for table, count in held.items():
            if count:
                raise errors.StateError(f"refusing to write to {where}: its "
                                        f"{table} table is not empty (the target must "
                                        "be empty)")
        for job in farm.jobs:
            tx.jobs.load(job, farm.history.get(job.job_id, []))
        for engine in farm.engines:
            tx.engines.put(engine)
        for key, entry in farm.idempotency.items():
            tx.idempotency.record(key, entry.fingerprint, entry.job_id, entry.at)
        for delivery in farm.deliveries.values():
            tx.deliveries.put(delivery)
    uow.snapshot()


def _has_state(path: str) -> bool:
    """Whether a state file or its journal is there."""
    return os.path.exists(path) or os.path.exists(path + ".wal")


def read_state(location: str, password_file: str | None = None) -> Farm:
    """The farm at ``location`` (a state file path or a ``postgresql://`` URL)."""
    if not is_database(location) and not _has_state(location):
        raise errors.StateError(f"state file {location} does not exist")
    uow = open_state(location, password_file)
    try:
        return read_farm(uow)
    finally:
        uow.close()


def copy_state(source: str, target: str, password_file: str | None = None) -> Farm:
    """Copy the farm at ``source`` to ``target`` (each a state file path or a
    ``postgresql://`` URL); raise StateError (refused) or Unavailable (no database)."""
    farm = read_state(source, password_file)
    if not is_database(target) and _has_state(target):
        raise errors.StateError(f"refusing to write {target}: it exists (the target must "
                                "be empty; move it away first)")
    uow = open_state(target, password_file)
    try:
        write_farm(uow, farm, "the database" if is_database(target) else target)
    finally:
        uow.close()
    return farm
