"""Giving memory back to the operating system (a process concern, not a rule)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_free_memory() -> None:
    """Give the memory the parsed state file used back to the system. The parse
    briefly needs several times the size of the loaded state; glibc keeps freed pages
    unless asked, so a large queue would otherwise stay at that peak."""
    gc.collect()
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


def _libc() -> ctypes.CDLL:
    # glibc's own name first: find_library runs ldconfig in a child process, which a
    # server's master should not fork beside its worker.
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"))
