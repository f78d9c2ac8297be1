"""Ownership of a state file: one process at a time holds ``P.lock`` (flock) and
writes its pid in it, so a second server is refused naming the first."""

from __future__ import annotations

import errno
import fcntl
import os

from dispatch.domain.errors import StateError
from dispatch.storage.journal.files import StateFiles


def take_lock(files: StateFiles) -> int:
    """Lock the state file for this process; return the lock's descriptor (closing it
    releases the lock). Raises StateError naming the owner when another holds it."""
    if not os.path.isdir(files.directory):
        raise StateError(f"the folder of state file {files.path} does not exist")
    try:
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"cannot open lock file {files.lock}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateError(
            f"state file {files.path} is in use by another dispatch-server "
            f"(pid {holder}, lock {files.lock}); stop that one first - one process "
            "owns a state file, and the server runs one worker"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
