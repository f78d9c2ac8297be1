"""The embedded store's parts when several workers serve one folder (the PostgreSQL
backend runs several gunicorn workers, each with its own running hashes): two
``LocalStore`` objects on one folder stand for two workers. A part another worker
replaced is hashed from the file, never from a stale running hash, and a completion
never joins a part still being written."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatch.objects.intake import BadBody
from dispatch.objects.local import LocalStore
from dispatch.objects.port import PartsRejected, StoreError

MiB = 1 << 20
PART = 2 * MiB
KEY = "sources/0123456789abcdef0123456789abcdef/clip.mp4"


def reader(data: bytes, pause_at: int | None = None, paused: threading.Event | None = None,
           go_on: threading.Event | None = None) -> Callable[[memoryview], int]:
    """A body of ``data``, optionally stopping at ``pause_at`` until ``go_on`` is set."""
    sent = 0

    def read_into(buffer: memoryview) -> int:
        nonlocal sent
        count = min(len(buffer), len(data) - sent)
        if pause_at is not None and paused is not None and go_on is not None:
            if sent >= pause_at and not paused.is_set():
                paused.set()
                assert go_on.wait(30)
            elif sent < pause_at:
                count = min(count, pause_at - sent)
        buffer[:count] = data[sent:sent + count]
        sent += count
        return count
    return read_into


def stores(tmp_path: Path) -> tuple[LocalStore, LocalStore]:
    first = LocalStore(str(tmp_path), lambda: "secret")
    first.check()
    return first, LocalStore(str(tmp_path), lambda: "secret")


def send(store: LocalStore, upload: str, number: int, data: bytes) -> str:
    offset = (number - 1) * PART
    return store.receive_part(upload, number, offset, len(data[offset:offset + PART]),
                              reader(data[offset:offset + PART]))


def test_a_part_replaced_by_another_worker_is_hashed_from_the_file(tmp_path: Path) -> None:
    one, other = stores(tmp_path)
    data = bytearray(os.urandom(3 * PART - 7))
    upload = one.start_multipart(KEY)
    etags = {n: send(one, upload, n, bytes(data)) for n in (1, 2, 3)}  # all hashed by one
    data[PART + 10] ^= 0xFF
    etags[2] = send(other, upload, 2, bytes(data))
    sha256 = one.complete_multipart(KEY, upload, sorted(etags.items()))
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert one.object_path(KEY).read_bytes() == data
    assert not (tmp_path / "parts" / upload).exists()


def test_no_completion_while_a_part_is_being_written(tmp_path: Path) -> None:
    one, other = stores(tmp_path)
    data = os.urandom(2 * PART)
    upload = one.start_multipart(KEY)
    etags = {1: send(one, upload, 1, data), 2: send(one, upload, 2, data)}
    paused, go_on = threading.Event(), threading.Event()
    result: list[object] = []

    def again() -> None:
        result.append(other.receive_part(upload, 2, PART, PART,
                                         reader(data[PART:], MiB, paused, go_on)))

    writer = threading.Thread(target=again)
    writer.start()
    try:
        assert paused.wait(30)
        with pytest.raises(PartsRejected, match="still being sent"):
            one.complete_multipart(KEY, upload, sorted(etags.items()))
    finally:
        go_on.set()
        writer.join(30)
    etags[2] = str(result[0])
    assert one.complete_multipart(KEY, upload, sorted(etags.items())) == \
        hashlib.sha256(data).hexdigest()
    with pytest.raises(StoreError):  # completed: a late part stores nothing
        send(other, upload, 2, data)


def test_a_part_cut_short_is_missing_until_sent_again(tmp_path: Path) -> None:
    one, _ = stores(tmp_path)
    data = os.urandom(2 * PART)
    upload = one.start_multipart(KEY)
    first = send(one, upload, 1, data)
    second = send(one, upload, 2, data)
    with pytest.raises(BadBody):
        one.receive_part(upload, 2, PART, PART, reader(data[PART:PART + MiB]))
    with pytest.raises(PartsRejected, match="part 2"):
        one.complete_multipart(KEY, upload, [(1, first), (2, second)])
    second = send(one, upload, 2, data)
    assert one.complete_multipart(KEY, upload, [(1, first), (2, second)]) == \
        hashlib.sha256(data).hexdigest()
