"""Recovery: what the files hold, read in this order.

1. The snapshot ``P`` (``snapshot.read_snapshot``); its ``journal_seq`` is the last
   change it contains.
2. The journal files, oldest first: the closed segments ``P.wal.<seq>`` by ``seq``, then
   the live journal ``P.wal`` (``journal_files``). Records up to the snapshot's change
   are skipped (a crash inside the snapshot sequence leaves them); every other record
   must be the change right after the one before it, or the start stops: a gap means
   changes are missing.
3. The replayed records are applied to the snapshot's tables oldest first; records hold
   whole objects, so the newest version of each entry wins (``apply_records``).
4. Jobs, when the snapshot's are read as they stream by, come out in creation order
   (``jobs_in_creation_order``): the snapshot's jobs in file order, each replaced in place
   by its journal version or left out when the journal deleted it, then the jobs the
   journal created, in the order it created them. From a single-object snapshot they
   come in no particular order (``RecoveredState.ordered`` is False).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dispatch.domain.errors import StateError
from dispatch.storage.journal.files import WHAT_TO_DO
from dispatch.storage.journal.snapshot import Snapshot, stream_jobs
from dispatch.storage.journal.wal import read_records


@dataclass
class Replay:
    """The journal records that follow a snapshot."""

    records: list[dict[str, Any]]  # oldest first, consecutive changes
    last_seq: int  # the last change the files hold (the snapshot's when none follow)
    wal_length: int  # bytes of the live journal that are intact


def journal_files(segments: list[tuple[int, str]], wal: str) -> list[str]:
    """Step 2's order: the closed segments by the change they end with, then ``wal``."""
    return [path for _, path in sorted(segments)] + [wal]


def read_replay(files: list[str], snap_seq: int) -> Replay:
    """The records of ``files`` (in ``journal_files`` order; the last is the live
    journal) newer than change ``snap_seq``. Raises StateError on a gap or damage."""
    last_seq = snap_seq
    wal_length = 0
    replay: list[dict[str, Any]] = []
    for path in files:
        if not os.path.exists(path):
            continue
        live = path == files[-1]
        records, good = read_records(path, last_file=live)
        if live:
            wal_length = good
        for record in records:
            if record["seq"] <= snap_seq:
                continue
            if record["seq"] != last_seq + 1:
                # A gap means changes are missing (e.g. a backup that copied a
                # journal newer than its snapshot): refuse rather than lose them.
                raise StateError(
                    f"journal {path} continues at change {record['seq']} but the "
                    f"state so far ends at change {last_seq}: changes in between are "
                    f"missing; {WHAT_TO_DO}"
                )
            last_seq = record["seq"]
            replay.append(record)
    return Replay(replay, last_seq, wal_length)


def apply_records(records: list[dict[str, Any]], snapshot: Snapshot) -> None:
    """Apply ``records`` to the snapshot's tables, oldest first. With streamed jobs the
    journal's jobs are kept aside in ``snapshot.jobs`` (a deleted one as None) for
    ``jobs_in_creation_order``."""
    jobs, engines, tables = snapshot.jobs, snapshot.engines, snapshot.tables
    streamed = snapshot.jobs_offset is not None
    for record in records:
        for kind, key, value in record["ops"]:
            if kind == "job":
                table = jobs
            elif kind == "engine":
                table = engines
            else:
                table = tables.setdefault(kind, {})
            if value is None:
                if kind == "job" and streamed:
                    table[key] = None
                else:
                    table.pop(key, None)
            else:
                table[key] = value


def jobs_in_creation_order(path: str, offset: int,
                           changed: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Step 4: the snapshot's jobs streamed from ``path`` at ``offset``, each replaced
    by its version in ``changed`` (the journal's, None when deleted), then the jobs
    only the journal has. ``changed`` is emptied of the jobs the snapshot had."""
    for key, record in stream_jobs(path, offset):
        if key in changed:
            record = changed.pop(key)
            if record is None:
                continue
        yield record
    yield from (record for record in changed.values() if record is not None)
