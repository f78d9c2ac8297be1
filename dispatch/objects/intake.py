"""A part's bytes from the request into the upload's file, hashed on the way.

SHA-256 costs about as much CPU as everything else an upload does (a second per GiB
here); fed from the same thread it would run in series with receiving and writing.
So the hash runs on a thread of its own, fed the buffers the request thread has
written (hashlib lets go of the GIL on large updates), and a few buffers are reused
in turn: memory stays at ``DEPTH`` chunks whatever the part's size.

The part is fdatasynced before it is acknowledged. Left to itself the kernel would
start writing the bytes out only then (far below its dirty-page thresholds), so the
request would wait for the whole part to reach the disk after receiving it; instead
writeback of every ``WRITEBACK_STEP`` written is started at once (Linux's
``sync_file_range``, which does not wait), so the disk writes while the rest of the
part arrives and the fdatasync finds little left to do (here it took an upload of
1 GiB from 620 to 820 MiB/s). Durability is the fdatasync's alone.
"""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

CHUNK = 1 << 20
DEPTH = 8  # buffers in turn: the request thread stops when the hash is this far behind
WRITEBACK_STEP = 8 << 20
_datasync = getattr(os, "fdatasync", os.fsync)  # (macOS has no fdatasync)

# Fills the buffer it is given with the next bytes of a part's body; returns how many
# (0: the body ended).
ReadInto = Callable[[memoryview], int]


class BadBody(Exception):
    """A part's body is not the size it was signed for (cut short or too long)."""


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (not in ``os``), None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


_start_writeback = _writeback_starter()
SYNC_FILE_RANGE_WRITE = 2


class _Hasher:
    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.error: BaseException | None = None
        self.idle: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(DEPTH):
            self.idle.put(bytearray(CHUNK))
        self.work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="part-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.work.get()) is not None:
            buffer, count = item
            if self.error is None:
                try:
                    self.digest.update(memoryview(buffer)[:count])
                except BaseException as exc:  # reported by close(); buffers keep coming back
                    self.error = exc
            self.idle.put(buffer)

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def receive(fd: int, offset: int, size: int, read_into: ReadInto, digest: Any) -> None:
    """Write ``size`` bytes read with ``read_into`` at ``offset`` of ``fd`` and fdatasync
    them; feed them to ``digest`` (unless None). BadBody when the body ends early."""
    hasher = _Hasher(digest) if digest is not None and size > CHUNK else None
    own = None if hasher is not None else bytearray(min(CHUNK, size))
    try:
        done = started = 0
        while done < size:
            buffer = hasher.idle.get() if hasher is not None else own
            assert buffer is not None
            view = memoryview(buffer)[:min(CHUNK, size - done)]
            count = read_into(view)
            if not count:
                if hasher is not None:
                    hasher.idle.put(buffer)
                raise BadBody(f"the part ended after {done} of {size} bytes")
            _pwrite_all(fd, view[:count], offset + done)
            if hasher is not None:
                hasher.work.put((buffer, count))
            elif digest is not None:
                digest.update(view[:count])
            done += count
            if _start_writeback is not None and done - started >= WRITEBACK_STEP:
                # (a failure here only means the fdatasync below does all the work)
                _start_writeback(fd, offset + started, done - started,
                                 SYNC_FILE_RANGE_WRITE)
                started = done
        _datasync(fd)  # while the hash catches up
    finally:
        if hasher is not None:
            hasher.close()
