"""Issue 23, the engine's side: which tasks it takes and advertises, the report bodies
of a plan (a source without ``Range``, a variable frame rate), the stitch's failed
verification, and cancel/shutdown of a running chunk. Real ffmpeg; the server is the
recording stand-in (tests/support/ranges.py) until the server side exists."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch.config.options import SettingsError
from dispatch.engine import loop
from dispatch.engine.capabilities import Capabilities, Encoder, detect
from dispatch.engine.config import load_config
from tests.support.chunks import assignment, chunk_tasks, completed, engine, make_source
from tests.support.ranges import Served, range_server


@pytest.fixture(scope="module")
def capabilities() -> Capabilities:
    return detect("ffmpeg", (("h264", "libx264"),))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    make_source(folder / "clip.mp4", 6)
    make_source(folder / "long.mp4", 30, size="640x360")
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y", "-f", "lavfi",
                    "-i", "testsrc2=duration=4:size=160x120:rate=25", "-vf",
                    r"select='lt(n\,50)+not(mod(n\,3))'", "-fps_mode", "vfr",
                    "-c:v", "libx264", "-preset", "veryfast", str(folder / "vfr.mp4")],
                   check=True, timeout=120)
    return folder


@pytest.fixture()
def served(sources: Path) -> Iterator[Served]:
    with range_server(sources) as server:
        yield server


def test_task_kinds_setting() -> None:
    def kinds(*argv: str, **environ: str) -> tuple[str, ...]:
        return load_config(["--api-key", "k", *argv], environ).task_kinds

    assert kinds() == ("plan", "chunk", "audio", "stitch")
    assert kinds("--task-kinds", "stitch, plan") == ("plan", "stitch")
    assert kinds("--task-kinds", "none") == ()
    assert kinds(DISTCONV_TASK_KINDS="chunk") == ("chunk",)
    with pytest.raises(SettingsError, match="task_kinds|task-kinds"):
        kinds("--task-kinds", "plan,transcode")


def test_ffmpeg_threads_limit_every_encode(capabilities: Capabilities) -> None:
    """``--ffmpeg-threads 1`` (with taskset, "one engine is one core"): each ffmpeg
    decodes and encodes on one thread; 0 leaves ffmpeg's own choice."""
    config = load_config(["--api-key", "k", "--ffmpeg-threads", "1"], {})
    limited = capabilities.with_threads(config.ffmpeg_threads).encoders["h264"]
    assert limited.input_args[:2] == ("-threads", "1")
    assert limited.output_args[-2:] == ("-threads", "1")
    assert capabilities.with_threads(load_config(["--api-key", "k"], {}).ffmpeg_threads) \
        is capabilities
    with pytest.raises(SettingsError, match="ffmpeg"):
        load_config(["--api-key", "k", "--ffmpeg-threads", "-1"], {})


def test_heartbeat_advertises_task_kinds_or_leaves_the_field_out(
        served: Served, capabilities: Capabilities, tmp_path: Path) -> None:
    every = engine(served, tmp_path / "a", capabilities)
    assert every.heartbeat_payload()["task_kinds"] == ["plan", "chunk", "audio", "stitch"]
    # None: the server sees what it sees of a C++ engine (whole jobs only).
    assert "task_kinds" not in engine(served, tmp_path / "b", capabilities,
                                      task_kinds=()).heartbeat_payload()


def test_a_task_the_engine_does_not_take_is_failed_with_the_reason(
        served: Served, capabilities: Capabilities, tmp_path: Path) -> None:
    worker = engine(served, tmp_path / "work", capabilities, task_kinds=("chunk",))
    url = f"{served.base}/clip.mp4"
    worker.run_job(assignment("j.g1.plan", url, {"kind": "plan", "chunk_seconds": 2}))
    worker.run_job(assignment("j.g1.x", url, {"kind": "transmogrify"}))
    assert served.reports("j.g1.plan")[-1] == (
        "fail", {"engine_id": "e1", "attempt": 1,
                 "error_message": "engine e1 does not take plan tasks"})
    assert served.reports("j.g1.x")[-1][1]["error_message"] == "unknown task kind 'transmogrify'"


def test_plan_reports_the_probe_and_the_source_itself_when_it_takes_range(
        served: Served, capabilities: Capabilities, tmp_path: Path) -> None:
    worker = engine(served, tmp_path / "work", capabilities)
    url = f"{served.base}/clip.mp4"
    worker.run_job(assignment("j.g1.plan", url, {"kind": "plan", "chunk_seconds": 2}))
    body = completed(served, "j.g1.plan")
    assert body["output_url"] == url and "upload_id" not in body
    assert body["probe"] == {"duration": 6.0, "frames": 150, "frame_rate": "25/1",
                             "start_time": 0.0, "width": 320, "height": 240,
                             "variable_frame_rate": False,
                             "audio": {"duration": pytest.approx(6.0, abs=0.03), "streams": 1}}


def test_plan_copies_a_source_whose_server_ignores_range(
        sources: Path, capabilities: Capabilities, tmp_path: Path) -> None:
    with range_server(sources, ranges=False) as plain:
        worker = engine(plain, tmp_path / "work", capabilities)
        url = f"{plain.base}/clip.mp4"
        worker.run_job(assignment("j.g1.plan", url, {"kind": "plan", "chunk_seconds": 2}))
        body = completed(plain, "j.g1.plan")
    # The copy is the plan's output (the store's, on a real server): chunks read it.
    assert body["output_url"] == f"{plain.base}/out/j.g1.plan-1.mp4"
    assert (sources / "out" / "j.g1.plan-1.mp4").read_bytes() == (sources / "clip.mp4").read_bytes()
    assert body["probe"]["frames"] == 150 and body["probe"]["variable_frame_rate"] is False
    assert not list((tmp_path / "work").iterdir())


def test_plan_reports_a_variable_frame_rate(served: Served, capabilities: Capabilities,
                                            tmp_path: Path) -> None:
    worker = engine(served, tmp_path / "work", capabilities)
    worker.run_job(assignment("v.g1.plan", f"{served.base}/vfr.mp4",
                              {"kind": "plan", "chunk_seconds": 2}))
    probe = completed(served, "v.g1.plan")["probe"]
    assert probe["variable_frame_rate"] is True and probe["frames"] == 67
    assert probe["audio"] is None


def test_a_stitch_that_fails_verification_says_which_numbers(
        served: Served, capabilities: Capabilities, tmp_path: Path) -> None:
    """The source itself as the only chunk, but 151 frames and 7 s of audio expected."""
    worker = engine(served, tmp_path / "work", capabilities)
    url = f"{served.base}/clip.mp4"
    stitch = {"kind": "stitch", "chunks": [{"index": 0, "url": url, "frames": 150}],
              "audio": {"url": url},
              "expect": {"frames": 151, "duration": 6.04, "audio_duration": 7.0,
                         "frame_rate": "25/1"}}
    worker.run_job(assignment("s.g1.stitch", url, stitch))
    (kind, body), = [report for report in served.reports("s.g1.stitch")
                     if report[0] != "progress"]
    assert kind == "fail"
    message = body["error_message"]
    assert message.startswith("the stitched output failed verification: ")
    assert "video has 150 frames, expected 151" in message
    assert "audio lasts 6.0" in message and "expected 7.000000 s (± 0.05 s)" in message
    assert "video lasts" not in message  # 6 s is within one frame of 6.04 s
    assert not list((tmp_path / "work").iterdir())


def test_a_chunk_reads_only_its_range_of_the_source(
        served: Served, capabilities: Capabilities, tmp_path: Path) -> None:
    """The last 4 s of a 30 s source: the middle of the file is never sent. (What
    ffmpeg reads beyond its range: the index at the end of the file, and read-ahead
    on the connections it drops to seek, a fixed cost of its buffers.) The work folder's
    name has the characters a filtergraph must have escaped."""
    work = tmp_path / "work: it's [odd], isn't it; \\"
    worker = engine(served, work, capabilities)
    task = chunk_tasks({"frame_rate": "25/1", "start_time": 0.0}, [650, 750])[0]
    worker.run_job(assignment("r.g1.c0000", f"{served.base}/long.mp4", task))
    completed(served, "r.g1.c0000")
    size = (served.folder / "long.mp4").stat().st_size
    middle = (size // 4, size * 3 // 4)
    assert [span for span in served.spans["long.mp4"]
            if span[0] < middle[1] and span[1] > middle[0]] == []
    assert served.sent["long.mp4"] < size / 2
    assert not list(work.iterdir())


@pytest.mark.parametrize("how", ["cancelled", "lost", "shutdown"])
def test_a_running_chunk_reports_progress_and_stops_like_a_job(
        served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Percent of the chunk's frames with fps, speed and ETA; a cancel (or a refused
    progress report: the chunk is no longer this engine's) stops ffmpeg within 2 s and
    reports nothing, a shutdown gives the chunk back."""
    monkeypatch.setattr(loop, "PROGRESS_EVERY", 0.0)
    slow = Capabilities({"h264": Encoder("libx264", (), ("-pix_fmt", "yuv420p", "-preset",
                                                         "veryslow", "-threads", "1"))},
                        ("h264",))
    worker = engine(served, tmp_path / "work", slow)
    probe = {"frame_rate": "25/1", "start_time": 0.0}
    task = chunk_tasks(probe, [100, 700])[0]
    job = assignment("l.g1.c0000", f"{served.base}/long.mp4", task)
    runner = threading.Thread(target=worker.run_job, args=(job,))
    runner.start()
    deadline = time.monotonic() + 60
    while not [body for kind, body in served.reports("l.g1.c0000")
               if kind == "progress" and body["progress"] > 0]:
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.05)
    progress = [body for kind, body in served.reports("l.g1.c0000") if kind == "progress"][-1]
    assert 0 < progress["progress"] < 50 and {"fps", "speed", "eta_seconds"} <= set(progress)
    # The ETA is what is left of the chunk's 24 s at ffmpeg's speed.
    left = 24 * (1 - progress["progress"] / 100)
    assert progress["eta_seconds"] == pytest.approx(left / progress["speed"], rel=0.1, abs=0.2)
    run = worker.current
    assert run is not None and run.ffmpeg is not None
    stopped_at = time.monotonic()
    if how == "cancelled":
        served.cancelled.append("l.g1.c0000")
        assert worker.beat_once(worker.client)
    elif how == "lost":
        served.lost.append("l.g1.c0000")  # the next progress report is refused
    else:
        worker.request_stop()
        worker.request_stop()
    runner.join(5)
    assert not runner.is_alive() and run.ffmpeg.proc.poll() is not None
    assert time.monotonic() - stopped_at < 2.0
    finals = [report for report in served.reports("l.g1.c0000") if report[0] != "progress"]
    if how != "shutdown":
        assert finals == []
    else:
        assert finals == [("fail", {"engine_id": "e1", "attempt": 1,
                                    "error_message": "engine shutting down"})]
    assert not list((tmp_path / "work").iterdir())
