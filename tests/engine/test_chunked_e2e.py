"""Issue #23: one file across many engines, end to end. A real ``dispatch-server`` on
the embedded store and real ``dispatch-engine`` processes plan a clip with audio, encode
its chunks at once and stitch them; the output is checked the way the issue says (frame
count, durations, audio, a clean decode), and so are a lost engine, a corrupt range,
cancel, retry, an engine that runs no tasks and a server restart."""

from __future__ import annotations

import http.server
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.chunked import (
    assert_exact,
    chunks,
    clip_with_audio,
    job,
    restart_mid_job,
    submit_chunked,
    wait_finished,
)
from tests.support.client import ESCAPE, run_distconv
from tests.support.engine import Engine, ffmpeg_children, file_server
from tests.support.files import download, upload
from tests.support.helpers import poll
from tests.support.server import Server

pytestmark = pytest.mark.e2e

KEY = "chunked-e2e-key-0123456789abcdef"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chunked-clips")
    return {"long": clip_with_audio(folder / "long.mp4", 60),
            "heavy": clip_with_audio(folder / "heavy.mp4", 30, size="640x360")}


class Farm:
    """A server (embedded state and store) and the engines a test starts on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = Server(root, KEY, "--state-file", str(root / "state.json"),
                             "--engine-timeout", "5",
                             env={"DISTCONV_RETRY_BACKOFF": "0"}).start()
        self.engines: dict[str, Engine] = {}

    def engine(self, name: str, *args: str) -> Engine:
        engine = Engine(self.root, self.server.url, KEY, name, "--codecs", "h264", *args,
                        keep_outputs=False).start()
        self.engines[name] = engine
        poll(lambda: self.server.request("GET", f"/engines/{name}").status_code == 200,
             30, f"engine {name} registered")
        return engine

    def upload(self, clip: Path) -> str:
        return str(upload(self.server.url, self.server.headers, clip)["source_url"])

    def close(self) -> None:
        for engine in self.engines.values():
            engine.stop()
        self.server.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    saved = {name: os.environ.pop(name) for name in list(os.environ)
             if name.startswith(("DISTCONV_", "AWS_"))}
    farm = Farm(tmp_path)
    try:
        yield farm
    finally:
        farm.close()
        os.environ.update(saved)


def chunk_rows(farm: Farm, job_id: str) -> list[dict[str, Any]]:
    return list(chunks(farm.server, job_id)["chunks"])


def test_three_engines_encode_one_file_and_the_output_is_frame_exact(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    for name in ("e1", "e2", "e3"):
        farm.engine(name)
    job_id = submit_chunked(farm.server, farm.upload(clips["long"]), 10)

    done = wait_finished(farm.server, job_id)
    assert done["status"] == "completed", done["error_message"]
    assert done["progress"] == 100
    assert done["chunks"] == {"total": 6, "pending": 0, "running": 0, "completed": 6,
                              "failed": 0}
    listed = chunks(farm.server, job_id)
    rows = listed["chunks"]
    assert [row["index"] for row in rows] == list(range(6))
    assert rows[0]["start_time"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["end_time"] == pytest.approx(60.0, abs=0.04)
    for before, after in zip(rows, rows[1:], strict=False):
        assert before["end_time"] == pytest.approx(after["start_time"], abs=1e-9)
    assert sum(row["frames"] for row in rows) == 1500
    assert len({row["engine"] for row in rows}) >= 2, rows

    output = download(farm.server.url, farm.server.headers, job_id, tmp_path / "out.mp4")
    assert_exact(output, clips["long"])
    # One job to its client: the listing has no tasks, and the history is the job's.
    listing = farm.server.request("GET", "/jobs/").json()
    assert [item["job_id"] for item in listing["jobs"]] == [job_id]


def test_distconv_submits_in_chunks_and_brings_the_result_back(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    """``distconv submit --chunk-seconds``, as a person runs it without a terminal: one
    job, its chunks counted on the way, the frame-exact result saved."""
    farm.engine("e1")
    farm.engine("e2")
    target = tmp_path / "result.mp4"
    run = run_distconv(farm.server.url, "submit", str(clips["long"]), "--codec", "h264",
                       "--chunk-seconds", "20", "--wait", "--output", str(target),
                       timeout=240, DISTCONV_API_KEY=KEY)
    assert run.status == 0, run.text
    assert not ESCAPE.search(run.text.encode())
    assert "chunks 3/3" in run.err, run.err
    assert_exact(target, clips["long"])
    listing = farm.server.request("GET", "/jobs/").json()["jobs"]
    assert len(listing) == 1 and listing[0]["chunks"]["total"] == 3


def test_a_source_without_range_is_copied_once_and_still_works(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    """A source on a web server that ignores ``Range`` (Python's http.server): the
    planning engine copies it into the store once, and the chunks read that copy."""
    farm.engine("e1")
    farm.engine("e2")
    with file_server(clips["long"].parent) as base:
        job_id = submit_chunked(farm.server, f"{base}/{clips['long'].name}", 20)
        done = wait_finished(farm.server, job_id)
    assert done["status"] == "completed", done["error_message"]
    plan = next(task for task in chunks(farm.server, job_id)["tasks"]
                if task["kind"] == "plan")
    copy = job(farm.server, plan["job_id"])["output_url"]
    assert copy.startswith("store://"), copy
    output = download(farm.server.url, farm.server.headers, job_id, tmp_path / "out.mp4")
    assert_exact(output, clips["long"])


def test_a_killed_engine_loses_only_its_chunk(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    victim = farm.engine("victim")
    farm.engine("survivor")
    job_id = submit_chunked(farm.server, farm.upload(clips["heavy"]), 5)

    def victim_encoding() -> dict[str, Any] | None:
        for row in chunk_rows(farm, job_id):
            if row["engine"] == "victim" and row["status"] == "processing":
                return row
        return None

    held = poll(victim_encoding, 120, "the victim encoding a chunk", interval=0.02)
    victim.signal(signal.SIGKILL)
    victim.wait(10)

    done = wait_finished(farm.server, job_id)
    assert done["status"] == "completed", done["error_message"]
    rows = chunk_rows(farm, job_id)
    again = [row["index"] for row in rows if row["attempt"] > 1]
    assert again == [held["index"]], rows
    assert rows[held["index"]]["engine"] == "survivor"
    output = download(farm.server.url, farm.server.headers, job_id, tmp_path / "out.mp4")
    assert_exact(output, clips["heavy"])


@contextmanager
def serve(path: Path, corrupt: Callable[[int, bytes], bytes]) -> Iterator[str]:
    """Serve one file over HTTP with ``Range``, each answer passed through ``corrupt``
    (offset, bytes) first; yields its URL."""
    data = path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            start, end = 0, len(data) - 1
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes="):
                first, _, last = ranged[6:].partition("-")
                start = int(first)
                end = int(last) if last else end
            body = corrupt(start, data[start:end + 1])
            self.send_response(206 if ranged else 200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_corrupt_range_fails_the_job_and_a_retry_plans_again(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    farm.engine("e1")
    farm.engine("e2")
    source = clips["long"]
    size = source.stat().st_size
    # The second half of the media data is noise: the index (at the front) and the
    # first chunks are sound, the later chunks' frames cannot be decoded.
    bad_from = size // 2
    broken = {"on": True}

    def corrupt(offset: int, body: bytes) -> bytes:
        if not broken["on"] or offset + len(body) <= bad_from:
            return body
        cut = max(0, bad_from - offset)
        return body[:cut] + bytes(len(body) - cut)

    with serve(source, corrupt) as url:
        job_id = submit_chunked(farm.server, url, 10, max_retries=1)
        failed = wait_finished(farm.server, job_id)
        assert failed["status"] == "failed"
        assert failed["error_message"].startswith("chunk "), failed["error_message"]
        rows = chunk_rows(farm, job_id)
        assert any(row["status"] == "failed" and row["attempt"] == 2 for row in rows), rows
        first = chunks(farm.server, job_id)["generation"]

        broken["on"] = False
        retried = farm.server.request("POST", f"/jobs/{job_id}/retry")
        assert retried.status_code == 200, retried.text
        done = wait_finished(farm.server, job_id)
    assert done["status"] == "completed", done["error_message"]
    again = chunks(farm.server, job_id)
    assert again["generation"] == first + 1
    assert all(row["attempt"] == 1 for row in again["chunks"]), again
    output = download(farm.server.url, farm.server.headers, job_id, tmp_path / "out.mp4")
    assert_exact(output, source)


def test_cancel_stops_every_chunk_within_two_seconds(
        farm: Farm, clips: dict[str, Path]) -> None:
    engines = [farm.engine("e1"), farm.engine("e2")]
    job_id = submit_chunked(farm.server, farm.upload(clips["heavy"]), 5)
    poll(lambda: sum(row["status"] == "processing" for row in chunk_rows(farm, job_id)) == 2
         and all(ffmpeg_children(engine.pid) for engine in engines),
         120, "two chunks encoding", interval=0.02)

    answer = farm.server.request("DELETE", f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    poll(lambda: not any(ffmpeg_children(engine.pid) for engine in engines), 2.0,
         "every engine's ffmpeg gone", interval=0.02)
    rows = chunk_rows(farm, job_id)
    assert all(row["status"] in ("cancelled", "completed") for row in rows), rows
    assert job(farm.server, job_id)["status"] == "cancelled"


def test_an_engine_without_task_kinds_never_gets_a_task(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    farm.engine("plain", "--task-kinds", "none")
    chunked_id = submit_chunked(farm.server, farm.upload(clips["long"]), 10)
    whole = farm.server.request("POST", "/jobs/", json={
        "source_url": farm.upload(clips["heavy"]), "target_codec": "h264", "job_size": 1})
    assert whole.status_code == 201
    whole_id = whole.json()["job_id"]

    done = wait_finished(farm.server, whole_id)
    assert (done["status"], done["assigned_engine"]) == ("completed", "plain")
    waiting = job(farm.server, chunked_id)
    assert waiting["status"] == "pending"
    assert waiting["waiting_reason"]["code"] == "no_task_engine", waiting
    listed = chunks(farm.server, chunked_id)
    assert all(task["engine"] is None for task in listed["tasks"]), listed

    farm.engine("tasks")
    finished = wait_finished(farm.server, chunked_id)
    assert finished["status"] == "completed", finished["error_message"]
    rows = chunk_rows(farm, chunked_id)
    assert {row["engine"] for row in rows} == {"tasks"}
    output = download(farm.server.url, farm.server.headers, chunked_id, tmp_path / "o.mp4")
    assert_exact(output, clips["long"])


def test_a_server_restart_mid_job_carries_on(
        farm: Farm, clips: dict[str, Path], tmp_path: Path) -> None:
    farm.engine("e1")
    farm.engine("e2")
    job_id = submit_chunked(farm.server, farm.upload(clips["heavy"]), 5)
    restart_mid_job(farm.server, job_id)
    done = wait_finished(farm.server, job_id)
    assert done["status"] == "completed", done["error_message"]
    output = download(farm.server.url, farm.server.headers, job_id, tmp_path / "out.mp4")
    assert_exact(output, clips["heavy"])

