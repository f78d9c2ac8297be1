"""Whether a state folder and its open journal are still where the server opened them.

Removing or replacing the folder under a running server (``rm -rf``, a restore copied
over it, a remounted volume) leaves the open journal writable: changes would be synced
into a file that no longer has a name and lost at the next start. The journal asks this
before each write and after each sync."""

from __future__ import annotations

import os


def lost(directory: str, opened_folder: os.stat_result, path: str, fd: int) -> str | None:
    """``"removed"``, ``"replaced"`` or ``"unreachable (...)"`` when the folder or the
    file at ``path`` is no longer the one opened (the folder's stat when opened, the
    journal's open ``fd``); None while both are."""
    try:
        if not os.path.samestat(os.stat(directory), opened_folder):
            return "replaced"
        return None if os.path.samestat(os.stat(path), os.fstat(fd)) else "replaced"
    except FileNotFoundError:
        return "removed"
    except OSError as exc:
        return f"unreachable ({exc.strerror})"
