"""Failed authentication, throttled per client address.

After ``limit`` wrong keys from one address within ``window`` seconds, that address is
blocked for ``block_seconds``: its requests that need a key, and its dashboard sign-ins,
are refused (``429``) before any key is compared. The address is the one the app sees
(``request.remote_addr``, which names the client a trusted proxy saw).

Bounded and cheap: two tables (addresses with recent failures, blocked addresses) of at
most ``table_size`` entries each, the oldest dropped first; a request costs one dict
lookup under one lock, and none while nothing is blocked. Two tables, so that a flood of
wrong keys from many addresses pushes out failure counts, not the blocks already earned
(pushing out a block takes ``limit`` failures for each entry of the table).

The throttle lives beside the key ring, not in it: a key reload (SIGUSR1) rebuilds the
keys and keeps the blocks. Each process counts on its own (several workers or instances
on PostgreSQL each keep their own tables).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("dispatch.auth")


@dataclass(frozen=True)
class Block:
    """A blocked address: the failures that earned the block, and when it lifts."""

    address: str
    failures: int
    blocked_until: float  # wall-clock seconds since the epoch
    retry_after: int  # whole seconds left, at least 1


def _nothing() -> None:
    pass


class Throttle:
    """Counts failed authentications per address and blocks the persistent ones.

    ``limit`` 0 turns throttling off. ``clock`` is monotonic (tests pass their own);
    ``wall`` only dates a block for people reading it. ``on_failure`` and
    ``on_refused`` are called (outside the lock) for each failure and each refused
    request: the metrics' counters."""

    def __init__(self, limit: int = 20, window: float = 60.0, block_seconds: float = 300.0,
                 table_size: int = 10000, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 on_failure: Callable[[], None] = _nothing,
                 on_refused: Callable[[], None] = _nothing) -> None:
        self.limit = limit
        self.window = window
        self.block_seconds = block_seconds
        self.table_size = table_size
        self._clock = clock
        self._wall = wall
        self._on_failure = on_failure
        self._on_refused = on_refused
        self._lock = threading.Lock()
        # address -> [first failure of the window, failures in it]
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        # address -> (monotonic time the block lifts, failures that earned it)
        self._blocked: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again (and a refused request counted), or
        None when it is not blocked."""
        if not self._blocked:  # the usual case: no lock taken
            return None
        now = self._clock()
        with self._lock:
            entry = self._blocked.get(address)
            if entry is None:
                return None
            until, failures = entry
            if until <= now:
                del self._blocked[address]
        if until <= now:
            _lifted([(address, failures)])
            return None
        self._on_refused()
        return max(1, math.ceil(until - now))

    def failed(self, address: str) -> bool:
        """Count a wrong key from ``address``; True when this failure blocks it."""
        self._on_failure()
        if self.limit <= 0:
            return False
        now = self._clock()
        with self._lock:
            entry = self._failures.pop(address, None)
            if entry is None or now - entry[0] >= self.window:
                entry = [now, 0]
            entry[1] += 1
            count = int(entry[1])
            if count < self.limit:
                self._failures[address] = entry  # last in: the newest
                if len(self._failures) > self.table_size:
                    self._failures.popitem(last=False)
                return False
            self._blocked.pop(address, None)
            self._blocked[address] = (now + self.block_seconds, count)
            if len(self._blocked) > self.table_size:
                self._blocked.popitem(last=False)
        log.warning("auth: blocked %s for %gs after %d failed authentications within %gs",
                    address, self.block_seconds, count, self.window)
        return True

    def clear(self, address: str, by: str) -> bool:
        """Lift the block on ``address`` (and forget its failures); False when it was
        not blocked. ``by`` names who cleared it, for the log."""
        now = self._clock()
        with self._lock:
            self._failures.pop(address, None)
            entry = self._blocked.pop(address, None)
        if entry is None or entry[0] <= now:
            return False
        log.warning("auth: block on %s cleared by %s (it had %d failed authentications)",
                    address, by, entry[1])
        return True

    def blocks(self) -> list[Block]:
        """The addresses blocked now, the soonest to lift first."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            lifted = self._drop_lifted(now)
            entries = [(address, until, failures)
                       for address, (until, failures) in self._blocked.items()]
        _lifted(lifted)
        entries.sort(key=lambda entry: entry[1])
        return [Block(address, failures, wall + (until - now), max(1, math.ceil(until - now)))
                for address, until, failures in entries]

    def sizes(self) -> tuple[int, int]:
        """(addresses with recent failures, blocked addresses) held now."""
        now = self._clock()
        with self._lock:
            lifted = self._drop_lifted(now)
            sizes = len(self._failures), len(self._blocked)
        _lifted(lifted)
        return sizes

    def _drop_lifted(self, now: float) -> list[tuple[str, int]]:
        """Under the lock: remove the blocks that lifted with no request since."""
        lifted = [(address, failures) for address, (until, failures)
                  in self._blocked.items() if until <= now]
        for address, _ in lifted:
            del self._blocked[address]
        return lifted


def _lifted(blocks: list[tuple[str, int]]) -> None:
    for address, failures in blocks:
        log.warning("auth: block on %s lifted (it had %d failed authentications)",
                    address, failures)
