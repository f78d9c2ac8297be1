"""Issue #21: the embedded store under a crash and under load. ``kill -9`` of the
server in the middle of an upload loses no completed part and serves nothing
half-written; a 1 GiB upload and download grow the server's memory by less than
50 MiB (bytes stream through, they are never held)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatch.engine.upload import sha256_of
from tests.support.server import Server

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def worker_pid(server: Server) -> int:
    """gunicorn's worker: the one child of the dispatch-server master."""
    assert server.proc is not None
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    pids = [int(pid) for pid in children.read_text().split()]
    assert len(pids) == 1, pids
    return pids[0]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class FileSlice:
    """``size`` bytes of a file from ``offset``, read as requests sends them."""

    def __init__(self, path: Path, offset: int, size: int,
                 hold_after: int | None = None, release: threading.Event | None = None,
                 reached: threading.Event | None = None) -> None:
        self.handle = open(path, "rb")
        self.handle.seek(offset)
        self.left = self.size = size
        self.hold_after, self.release, self.reached = hold_after, release, reached

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        sent = self.size - self.left
        if self.hold_after is not None and sent >= self.hold_after:
            assert self.release is not None and self.reached is not None
            self.reached.set()
            self.release.wait(30)  # the test kills the server meanwhile
        amount = self.left if amount < 0 else min(amount, self.left, MiB)
        if self.hold_after is not None and sent < self.hold_after:
            amount = min(amount, self.hold_after - sent)
        data = self.handle.read(amount)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.handle.close()


def put(url: str, path: Path, offset: int, size: int, **hold: Any) -> requests.Response:
    body = FileSlice(path, offset, size, **hold)
    try:
        return requests.put(url, data=body, timeout=120)
    finally:
        body.close()


def test_kill_9_mid_upload_keeps_finished_parts_and_serves_nothing_half_written(
        server: Server, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(13 * MiB))
    upload = server.request("POST", "/uploads", json={
        "filename": "source.bin", "size": 13 * MiB}).json()
    parts = upload["parts"]
    assert [p["size"] for p in parts] == [5 * MiB, 5 * MiB, 3 * MiB]
    etags = {}
    for part in parts[:2]:
        answer = put(part["url"], source, (part["part_number"] - 1) * 5 * MiB, part["size"])
        assert answer.status_code == 200
        etags[part["part_number"]] = answer.headers["ETag"].strip('"')
    # Part 3 is half sent when the server dies.
    release, reached = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def send_third() -> None:
        try:
            outcome.append(put(parts[2]["url"], source, 10 * MiB, 3 * MiB,
                               hold_after=MiB, release=release, reached=reached))
        except requests.RequestException as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send_third)
    sender.start()
    assert reached.wait(30)
    server.kill()
    release.set()
    sender.join(60)
    assert outcome and isinstance(outcome[0], requests.RequestException)

    server.start()  # the same state, port and store
    objects = tmp_path / "files" / "objects"
    assert not [p for p in objects.rglob("*") if p.is_file()]  # nothing stored as a file yet
    again = server.request("GET", f"/uploads/{upload['upload_id']}")
    assert again.status_code == 200, again.text
    resumed = again.json()["parts"]
    early = server.request("POST", f"/uploads/{upload['upload_id']}/complete", json={
        "parts": [{"part_number": n, "etag": e} for n, e in etags.items()]})
    assert early.status_code == 409
    answer = put(resumed[2]["url"], source, 10 * MiB, 3 * MiB)
    assert answer.status_code == 200
    etags[3] = answer.headers["ETag"].strip('"')
    done = server.request("POST", f"/uploads/{upload['upload_id']}/complete", json={
        "parts": [{"part_number": n, "etag": e} for n, e in sorted(etags.items())]})
    assert done.status_code == 200, done.text
    assert done.json()["sha256"] == sha256_of(source)
    stored = [p for p in objects.rglob("*") if p.is_file()]
    assert len(stored) == 1 and sha256_of(stored[0]) == sha256_of(source)


def test_a_gib_through_the_embedded_store_in_little_memory(server: Server,
                                                          tmp_path: Path) -> None:
    size = 1 << 30
    source = tmp_path / "big.bin"
    with open(source, "wb") as handle:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            handle.write(block)
    pid = worker_pid(server)
    baseline = rss(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        upload = server.request("POST", "/uploads", json={"filename": "big.bin",
                                                          "size": size}).json()
        parts, offset = [], 0
        for part in upload["parts"]:
            answer = put(part["url"], source, offset, part["size"])
            assert answer.status_code == 200
            parts.append({"part_number": part["part_number"],
                          "etag": answer.headers["ETag"].strip('"')})
            offset += part["size"]
        complete = server.request("POST", f"/uploads/{upload['upload_id']}/complete",
                                  json={"parts": parts}, timeout=300)
        assert complete.status_code == 200, complete.text
        server.request("POST", "/engines/heartbeat", json={"engine_id": "reader"})
        server.request("POST", "/jobs/", json={"source_url": upload["source_url"],
                                               "target_codec": "h264", "job_size": 1})
        url = server.request("POST", "/assign_job/", json={"engine_id": "reader"}
                             ).json()["source_url"]
        received = 0
        with requests.get(url, stream=True, timeout=120) as response:
            assert response.status_code == 200
            for chunk in response.iter_content(MiB):
                received += len(chunk)
        assert received == size
    finally:
        done.set()
        sampler.join()
    growth = peak[0] - baseline
    print(f"server RSS {baseline / MiB:.1f} MiB, peak {peak[0] / MiB:.1f} MiB "
          f"(+{growth / MiB:.1f} MiB) for a 1 GiB upload and download")
    assert growth < 50 * MiB
