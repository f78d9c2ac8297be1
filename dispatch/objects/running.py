"""The SHA-256 of an upload kept running while its parts arrive in order, so that the
completion of the embedded store hashes only what it has not seen (usually nothing)
instead of reading the whole object back.

It is an optimisation only, never trusted blindly: the state lives in one worker's
memory (lost on a restart, unknown to other workers), so it covers parts 1..k only
while each of them was written exactly once, by the write that hashed it, with no
other write of it since or alongside. The completion checks this against the parts'
records on disk (each write of a part leaves a token of its own, ``LocalStore``) and
hashes from the file whatever the running hash does not cover.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# Uploads followed at once by one worker; an upload dropped from here (the oldest
# first) is hashed from its file at completion, as after a restart.
MAX_FOLLOWED = 256


@dataclass
class _Upload:
    hash: Any = field(default_factory=hashlib.sha256)  # None: given up on
    next: int = 1  # the first part not covered by ``hash``
    tokens: dict[int, str] = field(default_factory=dict)  # of the writes hashed
    busy: dict[int, int] = field(default_factory=dict)  # writes in flight, by part
    writes: dict[int, int] = field(default_factory=dict)  # writes begun, by part


class RunningHashes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()

    def begin(self, upload: str, part: int) -> tuple[Any, int]:
        """A write of ``part`` begins: returns (a hash to feed this part's bytes to,
        or None when this write cannot extend the running hash; the write's number)."""
        with self._lock:
            state = self._uploads.get(upload)
            if state is None:
                state = self._uploads[upload] = _Upload()
                while len(self._uploads) > MAX_FOLLOWED:
                    self._uploads.popitem(last=False)
            if part < state.next:
                state.hash = None  # a part already hashed is being replaced
            extend = state.hash is not None and part == state.next \
                and not state.busy.get(part)
            state.busy[part] = state.busy.get(part, 0) + 1
            state.writes[part] = number = state.writes.get(part, 0) + 1
            return (state.hash.copy() if extend else None), number

    def end(self, upload: str, part: int, number: int, hashed: Any,
            token: str | None) -> None:
        """The write ends: stored with ``token`` (its bytes fed to ``hashed``), or
        failed (``token`` None)."""
        with self._lock:
            state = self._uploads.get(upload)
            if state is None:
                return
            state.busy[part] -= 1
            if hashed is None or token is None or state.hash is None \
                    or state.next != part or state.writes[part] != number:
                return  # failed, or another write of this part began meanwhile
            state.hash, state.next = hashed, part + 1
            state.tokens[part] = token

    def take(self, upload: str, tokens: dict[int, str]) -> tuple[Any, int]:
        """At completion, with the tokens on disk of the parts: (a hash of parts 1..k,
        k + 1), or (a new hash, 1) when the running one cannot be trusted. The upload
        is forgotten."""
        with self._lock:
            state = self._uploads.pop(upload, None)
        if state is None or state.hash is None or any(state.busy.values()) \
                or any(tokens.get(part) != token for part, token in state.tokens.items()):
            return hashlib.sha256(), 1
        return state.hash, state.next

    def forget(self, upload: str) -> None:
        with self._lock:
            self._uploads.pop(upload, None)
