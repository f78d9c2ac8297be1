"""Issue #11: ``dispatch-engine`` runs real ffmpeg jobs through a real ``dispatch-server``.

Every test drives subprocesses (server, engines, their ffmpeg) with clips made by
ffmpeg's lavfi sources and served from a loopback HTTP server, and asserts what a user
sees: job states and messages from the API, files on disk, ffprobe of the outputs,
processes that are (or are no longer) running. Waits poll against deadlines.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatch.engine.loop import PROGRESS_EVERY
from tests.conftest import API_KEY
from tests.support.engine import (
    Engine,
    ffmpeg_children,
    ffprobe,
    file_server,
    make_clip,
    running,
)
from tests.support.helpers import epoch, poll
from tests.support.server import Server

pytestmark = pytest.mark.e2e

START = 30.0  # seconds an engine may take to start (test encodes, benchmark)
# The "medium" clip takes ~4 s to encode to h264 here, the "long" one ~7 s: long
# enough to act on a job mid-transcode on any machine, short enough for the suite. The
# long one where the action itself takes time (a server's graceful stop).
MEDIUM_SECONDS = 30
LONG_SECONDS = 45


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The clips folder and the URL it is served at."""
    folder = tmp_path_factory.mktemp("clips")
    make_clip(folder / "small.mp4", 2, audio=True)
    make_clip(folder / "medium.mp4", MEDIUM_SECONDS, size="640x360", source="testsrc2")
    make_clip(folder / "long.mp4", LONG_SECONDS, size="640x360", source="testsrc2")
    # Deterministic bytes that no demuxer accepts.
    (folder / "corrupt.mp4").write_bytes(bytes((i * 7919) % 251 for i in range(200_000)))
    with file_server(folder) as url:
        yield folder, url


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A server that declares an engine lost after 3 s of silence and retries failed
    attempts at once, unaffected by the DISTCONV_* variables of the test run."""
    for name in list(os.environ):
        if name.startswith("DISTCONV_"):
            monkeypatch.delenv(name)
    server = Server(tmp_path, API_KEY, "--engine-timeout", "3",
                    env={"DISTCONV_RETRY_BACKOFF": "0"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def engines(tmp_path: Path, server: Server) -> Iterator[Any]:
    """Start engines against ``server``; each is killed at the end if still running."""
    started: list[Engine] = []

    def start(engine_id: str, *args: str, ready: bool = True) -> Engine:
        engine = Engine(tmp_path, server.url, API_KEY, engine_id, *args).start()
        started.append(engine)
        if ready:
            wait_ready(server, engine)
        return engine

    yield start
    for engine in started:
        engine.stop()


def wait_ready(server: Server, engine: Engine) -> dict[str, Any]:
    """The engine (this run of it) is registered and its benchmark recorded: it asks
    for work now."""
    def registered() -> dict[str, Any] | None:
        assert engine.proc is not None
        if engine.proc.poll() is not None:
            raise AssertionError(f"engine exited {engine.proc.returncode}: {engine.output()}")
        if not re.search(r"benchmark [0-9.]+ s recorded", engine.output()):
            return None
        response = server.request("GET", f"/engines/{engine.engine_id}")
        assert response.status_code == 200, response.text
        return response.json()

    return poll(registered, START, f"engine {engine.engine_id} ready")


def submit(server: Server, source_url: str, codec: str = "h264", **fields: Any) -> str:
    response = server.request("POST", "/jobs/", json={
        "source_url": source_url, "target_codec": codec, "job_size": 1, **fields})
    assert response.status_code == 201, response.text
    return response.json()["job_id"]


def job(server: Server, job_id: str) -> dict[str, Any]:
    response = server.request("GET", f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def events(server: Server, job_id: str) -> list[str]:
    return [e["event"] for e in server.request("GET", f"/jobs/{job_id}/events").json()["events"]]


def wait_status(server: Server, job_id: str, status: str, timeout: float) -> dict[str, Any]:
    return poll(lambda: (lambda j: j if j["status"] == status else None)(job(server, job_id)),
                timeout, f"job {job_id} {status}")


def wait_transcoding(server: Server, engine: Engine, job_id: str) -> int:
    """Wait until the engine reported progress above 0 with its ffmpeg running;
    returns that ffmpeg's pid."""
    def transcoding() -> int | None:
        current = job(server, job_id)
        children = ffmpeg_children(engine.pid)
        if (current["status"] == "processing" and current["progress"]
                and current["assigned_engine"] == engine.engine_id and children):
            return children[0]
        return None

    return poll(transcoding, 60, f"job {job_id} transcoding on {engine.engine_id}")


# ------------------------------------------------------------------ a job

def test_h264_job_completes_with_target_codec_and_duration(
        server: Server, engines: Any, clips: tuple[Path, str], tmp_path: Path) -> None:
    """The engine registers what it proved (h264, host name, free space, benchmark),
    takes a job, reports progress between 0 and 100, and completes it; the file behind
    output_url (served at --output-url-base) is h264 with the source's duration. Only
    that file is left: nothing in the work folder."""
    folder, url = clips
    outputs = tmp_path / "A-output"
    outputs.mkdir()
    with file_server(outputs) as output_base:
        engine = engines("A", "--codecs", "h264", "--output-url-base", output_base + "/")
        registered = server.request("GET", "/engines/A").json()
        assert registered["supported_codecs"] == ["h264"]
        assert registered["hostname"] and registered["storage_capacity_gb"] > 0
        assert registered["benchmark_time"] > 0
        assert registered["engine_type"] == "dispatch-engine"

        job_id = submit(server, f"{url}/medium.mp4")
        seen: set[float] = set()

        def done() -> dict[str, Any] | None:
            current = job(server, job_id)
            if current["status"] == "processing" and current["progress"] is not None:
                seen.add(current["progress"])
            return current if current["status"] == "completed" else None

        finished = poll(done, 60, "job completed", interval=0.02)
        assert [p for p in seen if 0 < p < 100], seen
        assert (finished["assigned_engine"], finished["attempt"]) == ("A", 1)
        name = f"{job_id}-1.mp4"
        assert finished["output_url"] == f"{output_base}/{name}"
        downloaded = tmp_path / "downloaded.mp4"
        response = requests.get(finished["output_url"], timeout=10)
        assert response.status_code == 200
        downloaded.write_bytes(response.content)
        probed = ffprobe(downloaded)
        assert probed["codec"] == "h264"
        assert abs(probed["duration"] - ffprobe(folder / "medium.mp4")["duration"]) < 0.2
        assert engine.files() == ([], [name])
        log = engine.output()
        assert f"job {job_id} completed: codec h264, duration {MEDIUM_SECONDS:.1f} s" in log
        assert "speed" in log


def test_two_engines_ten_jobs_two_codecs(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """Engine A proves h264 only, B vp9 only; of 10 jobs, each completes once (attempt
    1, no retries) on the engine of its codec, and its output (a file:// URL without
    --output-url-base) has that codec."""
    _, url = clips
    a = engines("A", "--codecs", "h264", ready=False)
    b = engines("B", "--codecs", "vp9", ready=False)
    wait_ready(server, a)
    wait_ready(server, b)
    assert server.request("GET", "/engines/B").json()["supported_codecs"] == ["vp9"]
    codecs = ["h264", "vp9"] * 5
    ids = [submit(server, f"{url}/small.mp4", codec) for codec in codecs]

    def all_done() -> list[dict[str, Any]] | None:
        jobs = [job(server, job_id) for job_id in ids]
        assert not [j for j in jobs if j["status"] in ("failed", "cancelled")], jobs
        return jobs if all(j["status"] == "completed" for j in jobs) else None

    finished = poll(all_done, 90, "10 jobs completed")
    owner = {"h264": "A", "vp9": "B"}
    for codec, current in zip(codecs, finished, strict=True):
        assert (current["assigned_engine"], current["attempt"], current["retries"]) == (
            owner[codec], 1, 0), current
        assert events(server, current["job_id"]).count("completed") == 1
        path = Path(current["output_url"].removeprefix("file://"))
        assert current["output_url"].startswith("file:///") and path.is_file()
        assert ffprobe(path)["codec"] == codec
    assert len(a.files()[1]) == 5 and len(b.files()[1]) == 5
    assert all(name.endswith(".webm") for name in b.files()[1])


# ------------------------------------------------------------------ cancel and loss

def test_cancel_while_transcoding_stops_ffmpeg_within_2s(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """DELETE of a job mid-transcode: the engine's ffmpeg is gone within 2 s (the
    heartbeat reply lists the job), no temp or output file is left, nothing is
    reported (the job stays cancelled through later heartbeats) and the engine is idle
    again. The long transcode never made the engine look dead."""
    _, url = clips
    engine = engines("A", "--codecs", "h264", "--heartbeat-interval", "0.5")
    job_id = submit(server, f"{url}/long.mp4")
    ffmpeg = wait_transcoding(server, engine, job_id)
    assert engine.files()[0], "the download and the partial output are in the work folder"

    response = server.request("DELETE", f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    cancelled_at = time.monotonic()
    poll(lambda: not running(ffmpeg), 2.0, "ffmpeg stopped")
    assert time.monotonic() - cancelled_at <= 2.0
    poll(lambda: engine.files() == ([], []), 5, "work and output folders empty")

    beat = server.request("GET", "/engines/A").json()["last_heartbeat"]
    poll(lambda: (lambda e: e["status"] == "idle" and epoch(e["last_heartbeat"]) > epoch(beat)
                  + 0.4)(server.request("GET", "/engines/A").json()), 10,
         "two more heartbeats, engine idle")
    final = job(server, job_id)
    assert (final["status"], final["output_url"]) == ("cancelled", None)
    assert "engine_lost" not in events(server, job_id)
    assert f"job {job_id} cancelled: stopped, nothing reported" in engine.output()
    assert engine.proc is not None and engine.proc.poll() is None


def test_lost_job_409_stops_ffmpeg_and_reports_nothing(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """An operator removes the engine mid-transcode (its job goes back to the queue):
    the engine's next progress report answers 409, and it stops ffmpeg within 2 s,
    removes its temp files and reports no fail for the lost attempt."""
    _, url = clips
    engine = engines("A", "--codecs", "h264", "--heartbeat-interval", "5")
    job_id = submit(server, f"{url}/medium.mp4")
    ffmpeg = wait_transcoding(server, engine, job_id)
    assert server.request("DELETE", "/engines/A").status_code == 200
    # The engine learns of the loss from its next progress report (one a second).
    poll(lambda: "progress refused" in engine.output(), PROGRESS_EVERY + 2, "a 409")
    refused_at = time.monotonic()
    poll(lambda: not running(ffmpeg), 2.0, "ffmpeg stopped")
    assert time.monotonic() - refused_at <= 2.0
    poll(lambda: f"job {job_id} lost: stopped, nothing reported" in engine.output(), 5,
         "the loss logged")
    assert f"job {job_id}: progress refused (cannot report progress" in engine.output()
    history = events(server, job_id)
    assert "released" in history and "failed_attempt" not in history
    assert f"{job_id}-1" not in " ".join(engine.files()[0] + engine.files()[1])


def test_kill_9_mid_job_requeues_and_a_second_engine_completes(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """kill -9 of the engine mid-job: its ffmpeg dies with it; after the 3 s heartbeat
    timeout the server re-queues the job and engine B completes it (attempt 2). The
    killed engine's temp files are removed when it starts again."""
    _, url = clips
    a = engines("A", "--codecs", "h264")
    job_id = submit(server, f"{url}/medium.mp4")
    ffmpeg = wait_transcoding(server, a, job_id)
    a.signal(signal.SIGKILL)
    a.wait(10)
    poll(lambda: not running(ffmpeg), 5, "the killed engine's ffmpeg gone")
    leftovers = a.files()[0]
    assert leftovers, "kill -9 leaves the download and partial output behind"

    b = engines("B", "--codecs", "h264")
    finished = wait_status(server, job_id, "completed", 90)
    assert (finished["assigned_engine"], finished["attempt"]) == ("B", 2)
    assert "engine_lost" in events(server, job_id)
    assert b.files()[1] == [f"{job_id}-2.mp4"]

    restarted = engines("A", "--codecs", "h264")
    assert restarted.files() == ([], [])
    assert "removed leftover" in restarted.output()


# ------------------------------------------------------------------ bad sources

def test_missing_and_corrupt_sources_fail_with_a_readable_reason(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """A 404 source, a file no demuxer reads and an output folder gone each end as
    failed (no retries left) with a one-line reason first; the engine keeps running and
    its work folder is empty."""
    _, url = clips
    engine = engines("A", "--codecs", "h264")
    missing = submit(server, f"{url}/no-such-clip.mp4", max_retries=0)
    corrupt = submit(server, f"{url}/corrupt.mp4", max_retries=0)
    first = wait_status(server, missing, "failed", 30)["error_message"]
    second = wait_status(server, corrupt, "failed", 30)["error_message"]
    assert first.splitlines()[0] == (f"cannot download source {url}/no-such-clip.mp4: "
                                     "HTTP 404 File not found")
    assert second.splitlines()[0].startswith("cannot decode source: "), second
    assert "Invalid data found when processing input" in second
    assert engine.proc is not None and engine.proc.poll() is None
    assert engine.files() == ([], [])
    poll(lambda: server.request("GET", "/engines/A").json()["status"] == "idle", 10,
         "engine idle")

    # The engine's own trouble (its output folder removed under it) fails the job,
    # not the engine.
    engine.output_dir.rmdir()
    broken = submit(server, f"{url}/small.mp4", max_retries=0)
    reason = wait_status(server, broken, "failed", 30)["error_message"]
    assert reason.startswith("engine error: FileNotFoundError: "), reason
    assert engine.proc.poll() is None and engine.files()[0] == []


# ------------------------------------------------------------------ stopping

def test_sigterm_mid_job_finishes_it_then_exits_0(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """SIGTERM mid-job: the heartbeat says draining, the job completes after the
    signal, the engine exits 0 and never takes the second job."""
    _, url = clips
    engine = engines("A", "--codecs", "h264")
    job_id = submit(server, f"{url}/medium.mp4")
    wait_transcoding(server, engine, job_id)
    second = submit(server, f"{url}/small.mp4")
    signalled = time.time()
    engine.signal(signal.SIGTERM)
    poll(lambda: server.request("GET", "/engines/A").json()["status"] == "draining", 5,
         "engine draining")
    assert engine.wait(60) == 0
    finished = job(server, job_id)
    assert finished["status"] == "completed"
    assert epoch(finished["completed_at"]) > signalled
    later = job(server, second)
    assert (later["status"], later["attempt"]) == ("pending", 0)


def test_second_sigterm_stops_ffmpeg_and_gives_the_job_back(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """A second SIGTERM stops ffmpeg within 2 s, reports fail "engine shutting down"
    (the job is pending again for another engine), leaves no temp file, exits 0."""
    _, url = clips
    engine = engines("A", "--codecs", "h264")
    job_id = submit(server, f"{url}/long.mp4")
    ffmpeg = wait_transcoding(server, engine, job_id)
    engine.signal(signal.SIGTERM)
    poll(lambda: "draining: finishing the current job" in engine.output(), 5, "drain logged")
    engine.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    poll(lambda: not running(ffmpeg), 2.0, "ffmpeg stopped")
    assert time.monotonic() - stopped_at <= 2.0
    assert engine.wait(15) == 0
    current = job(server, job_id)
    assert (current["status"], current["retries"], current["error_message"]) == (
        "pending", 1, "engine shutting down")
    assert engine.files() == ([], [])


def test_server_restart_mid_job_engine_finishes_and_completion_is_recorded(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """The server stops mid-job and stays down until the engine has finished the
    transcode; the engine keeps retrying its report and, once the server is back on the
    same state file, the completion is recorded."""
    _, url = clips
    engine = engines("A", "--codecs", "h264")
    job_id = submit(server, f"{url}/long.mp4")
    wait_transcoding(server, engine, job_id)
    assert server.terminate() == 0
    name = f"{job_id}-1.mp4"
    poll(lambda: engine.files()[1] == [name], 60, "transcode finished while the server is down")
    poll(lambda: f"server unreachable (POST /jobs/{job_id}/complete); retrying"
         in engine.output(), 60, "the engine retrying its report")
    assert "recorded by the server" not in engine.output().split("retrying")[-1]
    server.start()
    finished = wait_status(server, job_id, "completed", 60)
    assert finished["output_url"] == (engine.output_dir / name).resolve().as_uri()
    # The engine logs the answer just after the server recorded it.
    poll(lambda: f"job {job_id}: complete recorded by the server" in engine.output(), 10,
         "the engine logging the recorded completion")
    assert engine.proc is not None and engine.proc.poll() is None


def test_engine_started_before_the_server_waits_for_it(
        server: Server, engines: Any, clips: tuple[Path, str]) -> None:
    """An engine whose server is not up yet keeps trying (it never exits); once the
    server is up it registers and runs jobs."""
    _, url = clips
    assert server.terminate() == 0
    engine = engines("A", "--codecs", "h264", ready=False)
    poll(lambda: "heartbeat: server unreachable" in engine.output(), START,
         "engine trying to reach the server")
    assert engine.proc is not None and engine.proc.poll() is None
    server.start()
    wait_ready(server, engine)
    job_id = submit(server, f"{url}/small.mp4")
    assert wait_status(server, job_id, "completed", 30)["assigned_engine"] == "A"
