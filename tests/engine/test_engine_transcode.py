"""Issue #11, points 3 and 4 at the process level: ffmpeg's progress is read from
``-progress pipe:1``, its failure is a one-line reason plus its last stderr lines, and
stopping escalates from ``q`` to SIGTERM to SIGKILL within a second."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from dispatch.engine.capabilities import Encoder
from dispatch.engine.transcode import (
    QUIT_GRACE,
    TERM_GRACE,
    FFmpeg,
    JobError,
    clean_leftovers,
    container_for,
    ffmpeg_command,
    figures,
    probe,
)
from tests.support.engine import make_clip

FOREVER = ["ffmpeg", "-hide_banner", "-nostats", "-v", "warning", "-progress", "pipe:1",
           "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-f", "null", "-"]


def test_progress_is_read_until_ffmpeg_exits(tmp_path: Path) -> None:
    """Progress callbacks carry the output time, rising to the clip's duration; the
    output is the codec's container."""
    source = make_clip(tmp_path / "in.mp4", 3)
    output = tmp_path / "out.webm"
    command = ffmpeg_command("ffmpeg", source, Encoder("libvpx-vp9", (), ("-cpu-used", "8")),
                             container_for("vp9"), output)
    seen: list[float] = []
    numbers: list[dict[str, float]] = []
    ffmpeg = FFmpeg(command)
    assert ffmpeg.follow(lambda seconds, found: (seen.append(seconds),
                                                 numbers.append(found))) == 0
    assert seen == sorted(seen) and 2.9 <= seen[-1] <= 3.1
    assert output.stat().st_size > 0 and ffmpeg.elapsed > 0
    # The last block knows ffmpeg's fps and speed (× real time), as numbers ≥ 0.
    assert {"fps", "speed"} == set(numbers[-1]) and min(numbers[-1].values()) >= 0
    assert max(found.get("speed", 0) for found in numbers) > 0


def test_progress_figures_leave_out_what_ffmpeg_does_not_know() -> None:
    """ffmpeg writes ``N/A`` (or nothing) before it knows a figure."""
    assert {"fps": 24.5, "speed": 1.93} == figures({"fps": "24.5", "speed": " 1.93x"})
    assert {} == figures({"fps": "N/A", "speed": "N/A"})
    assert {"fps": 0.0} == figures({"fps": "0.00", "speed": "inf"})


def test_failure_is_one_line_then_stderr(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", 1)
    command = ffmpeg_command("ffmpeg", source, Encoder("libx264", (), ("-preset", "nope")),
                             container_for("h264"), tmp_path / "out.mp4")
    ffmpeg = FFmpeg(command)
    status = ffmpeg.follow(lambda seconds, speed: None)
    error = ffmpeg.failure(status)
    assert status != 0 and error.reason.startswith(f"ffmpeg exited with status {status}: ")
    assert "nope" in error.detail or "preset" in error.detail.lower(), error.detail


def test_a_signed_url_ffmpeg_names_in_an_error_keeps_no_query() -> None:
    """Chunk tasks give ffmpeg signed URLs: what it prints about one (here, an input
    that refuses the connection) reaches reports and logs without the signature."""
    url = "http://127.0.0.1:9/files/o/x.mp4?expires=1&signature=SECRETSIG"
    ffmpeg = FFmpeg(["ffmpeg", "-nostdin", "-hide_banner", "-v", "warning", "-i", url,
                     "-f", "null", "-"])
    error = ffmpeg.failure(ffmpeg.follow(lambda seconds, speed: None))
    assert "http://127.0.0.1:9/files/o/x.mp4?..." in error.detail, error.detail
    assert "SECRETSIG" not in error.reason + error.detail
    assert "expires" not in error.reason + error.detail


def test_q_stops_a_cooperating_ffmpeg_at_once() -> None:
    ffmpeg = FFmpeg(FOREVER)
    started = time.monotonic()
    ffmpeg.stop()
    status = ffmpeg.follow(lambda seconds, speed: None)
    assert status == 0 and time.monotonic() - started < QUIT_GRACE


def test_a_process_ignoring_q_and_sigterm_is_killed_within_a_second() -> None:
    stubborn = FFmpeg([sys.executable, "-c",
                       "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       "print('progress=continue', flush=True); time.sleep(60)"])
    assert stubborn.proc.stdout is not None
    stubborn.proc.stdout.readline()  # it has set its handler
    started = time.monotonic()
    stubborn.stop()
    stubborn.stop()  # a second request joins the first
    assert stubborn.follow(lambda seconds, speed: None) == -signal.SIGKILL
    assert QUIT_GRACE + TERM_GRACE <= time.monotonic() - started < QUIT_GRACE + TERM_GRACE + 1


def test_probe_reads_duration_and_refuses_what_it_cannot_decode(tmp_path: Path) -> None:
    assert abs((probe("ffprobe", make_clip(tmp_path / "in.mp4", 2)) or 0) - 2.0) < 0.1
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 1000)
    try:
        probe("ffprobe", bad)
    except JobError as exc:
        assert exc.reason.startswith("cannot decode source: ")
    else:
        raise AssertionError("a corrupt file was probed")


def test_leftovers_are_job_files_and_partial_copies_only(tmp_path: Path) -> None:
    work, output = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    output.mkdir()
    for path in (work / "job-1-1.source", work / "job-1-1.mp4", output / ".x.mp4.partial",
                 work / "notes.txt", output / "1-1.mp4"):
        path.write_text("x")
    removed = clean_leftovers(work, output)
    assert sorted(p.name for p in removed) == [".x.mp4.partial", "job-1-1.mp4",
                                                "job-1-1.source"]
    assert sorted(p.name for p in [*work.iterdir(), *output.iterdir()]) == ["1-1.mp4",
                                                                             "notes.txt"]
