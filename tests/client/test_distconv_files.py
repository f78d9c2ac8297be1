"""Issue #22: ``distconv`` moving files through the server's embedded store (issue
21), run as a person runs it (a subprocess without a terminal) against a real
``dispatch-server`` with 5 MiB parts and a real ``dispatch-engine`` that uploads its
outputs there: an upload that outlives a server restart between two parts, and a
download whose bytes are not the job's output."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY
from tests.support.client import DISTCONV, client_env, run_distconv
from tests.support.engine import Engine, ffprobe, make_clip
from tests.support.files import noise_clip
from tests.support.helpers import poll
from tests.support.server import Server

pytestmark = pytest.mark.e2e

START = 30.0  # seconds an engine may take to start
FILLER = b"#"


@dataclass
class StoreFarm:
    server: Server
    engine: Engine
    store: Path  # the embedded store's folder
    clip: Path  # ~12.5 MB of noise: three 5 MiB parts


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreFarm]:
    root = tmp_path_factory.mktemp("store-farm")
    saved = {name: os.environ.pop(name) for name in list(os.environ)
             if name.startswith(("DISTCONV_", "AWS_"))}
    server = Server(root, API_KEY, "--state-file", str(root / "state.json"),
                    "--upload-part-mb", "5", env={"DISTCONV_RETRY_BACKOFF": "0"}).start()
    engine = Engine(root, server.url, API_KEY, "store-engine", "--codecs", "h264",
                    keep_outputs=False).start()
    clip = noise_clip(root / "noise.avi", 5)
    try:
        poll(lambda: server.request("GET", "/engines/store-engine").status_code == 200,
             START, "engine registered")
        yield StoreFarm(server, engine, root / "files", clip)
    finally:
        engine.stop()
        server.stop()
        os.environ.update(saved)


def full_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) whose buffer is already full: a process given the
    write end blocks on its first write until the read end is drained."""
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(writer, False)
    try:
        while True:
            os.write(writer, FILLER * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(writer, True)
    return reader, writer


def drain(reader: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(reader, 65536):
            into.extend(chunk)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_upload_survives_a_server_restart_between_parts(farm: StoreFarm,
                                                           tmp_path: Path) -> None:
    """The server is killed once part 1 of 3 is stored (the client is held there: its
    first line, written after part 1, waits on a full pipe), and started again on the
    same state. The same command sends part 2 again when the server is back, completes
    the upload it began (part 1 not sent twice), and the job's result comes back."""
    server, target = farm.server, tmp_path / "noise.mp4"
    before = set((farm.store / "parts").glob("*"))
    reader, writer = full_pipe()
    proc = subprocess.Popen(
        [str(DISTCONV), "submit", str(farm.clip), "--codec", "h264", "--wait",
         "--output", str(target)],
        env=client_env(server.url, DISTCONV_CLIENT_RETRIES="10"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=writer)
    os.close(writer)
    seen = bytearray()
    try:
        parts = poll(lambda: [folder for folder in (farm.store / "parts").glob("*")
                              if folder not in before and (folder / "1.done").exists()],
                     30, "part 1 stored")
        assert not (parts[0] / "2.done").exists()
        assert proc.poll() is None
        server.kill()
        reading = drain(reader, seen)
        poll(lambda: b"noise.avi: part 2 of 3 failed (" in seen, 30, "the client saw it")
        server.start()
        status = proc.wait(120)
        reading.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(reader)
    err = seen.decode().lstrip(FILLER.decode())

    assert 0 == status, err
    lines = err.splitlines()
    assert "noise.avi: part 1 of 3 stored" == lines[0], err
    assert lines[1].startswith("noise.avi: part 2 of 3 failed ("), err
    assert lines[1].endswith("); sending it again in 0.5 s"), err
    assert "noise.avi: part 3 of 3 stored" in lines
    assert not any(line.startswith("noise.avi: part 1 of 3 failed") for line in lines)
    assert f"noise.avi: saved to {target}" in lines
    # The upload begun before the restart is the one the job reads.
    manifest = next(json.loads(path.read_text())
                    for path in (farm.store / "meta" / "uploads").glob("*.json")
                    if json.loads(path.read_text())["multipart_id"] == parts[0].name)
    assert "completed" == manifest["state"]
    jobs = [job for job in server.request("GET", "/jobs/?limit=1000").json()["jobs"]
            if job["source_url"] == f"store://{manifest['key']}"]
    assert ["completed"] == [job["status"] for job in jobs]
    probe = ffprobe(target)
    assert "h264" == probe["codec"]
    assert abs(probe["duration"] - 5) < 0.2


def test_download_refuses_an_output_whose_sha256_does_not_match(farm: StoreFarm,
                                                                tmp_path: Path) -> None:
    """The stored output changed on disk after completion (same size): `distconv
    download` exits 1 naming both SHA-256s, and leaves nothing at the destination."""
    clip = make_clip(tmp_path / "small.mp4", 2)
    submitted = run_distconv(farm.server.url, "submit", str(clip), "--codec", "h264",
                             "--wait", "--json")
    assert 0 == submitted.status, submitted.text
    job: dict[str, Any] = json.loads(submitted.out)["jobs"][0]
    assert "completed" == job["status"]
    intact = run_distconv(farm.server.url, "download", job["job_id"], "-o",
                          str(tmp_path / "intact.mp4"))
    assert 0 == intact.status, intact.text
    stored = farm.store / "objects" / job["output_url"].removeprefix("store://")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(data)
    folder = tmp_path / "downloads"
    target = folder / "result.mp4"

    run = run_distconv(farm.server.url, "download", job["job_id"], "-o", str(target))

    assert 1 == run.status, run.text
    assert (f"distconv: the download of job {job['job_id']} has SHA-256 "
            f"{hashlib.sha256(data).hexdigest()}, the job's output "
            f"{job['output']['sha256']}: nothing written to {target}") in run.err.splitlines()
    assert "Traceback" not in run.text
    assert [] == list(folder.iterdir())  # neither the file nor its temporary
