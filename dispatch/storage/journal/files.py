"""The files of one state file, named in one place, and what every part does with them.

For a state file ``P`` (``server_state.json`` by default)::

    P                 the snapshot (snapshot.py)
    P.wal             the journal: one line per change (wal.py)
    P.wal.<seq>       journal segments closed by a snapshot, until that snapshot is
                      safely on disk (then deleted)
    P.lock            the owner's lock (flock) and pid (lockfile.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# The end of every message that stops the start because a file is damaged.
WHAT_TO_DO = (
    "the server did not start and changed no file; restore the file from a backup, "
    "or move it aside to inspect it (moving the journal aside loses the changes it holds)"
)


@dataclass(frozen=True)
class StateFiles:
    path: str
    directory: str
    wal: str
    lock: str

    @classmethod
    def of(cls, state_file: str) -> StateFiles:
        path = os.path.abspath(state_file)
        return cls(path, os.path.dirname(path), path + ".wal", path + ".lock")

    def segment(self, seq: int) -> str:
        """The name the journal takes when a snapshot covering change ``seq`` closes it."""
        return f"{self.wal}.{seq:020d}"

    def temporary(self) -> str:
        """Where a snapshot is written before it is renamed over ``path``."""
        return f"{self.path}.tmp-{os.getpid()}"

    def segments(self) -> list[tuple[int, str]]:
        """The closed journal segments on disk, as (last change in it, path)."""
        prefix = os.path.basename(self.wal) + "."
        found: list[tuple[int, str]] = []
        for name in os.listdir(self.directory):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                found.append((int(name[len(prefix):]), os.path.join(self.directory, name)))
        return found


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
