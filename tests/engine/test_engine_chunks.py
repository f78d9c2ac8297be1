"""Issue 23, the engine's side: plan, chunk, audio and stitch tasks with real ffmpeg,
the source read over HTTP with ``Range``. A clip cut at arbitrary frames and stitched
has exactly the source's frames, its durations, audio, decodes cleanly, and looks as
good as a whole-file encode with the same settings.

The server side is built separately: the engine runs in-process against a stand-in
that serves files and records the reports (tests/support/ranges.py)."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from dispatch.engine import tasks as engine_tasks
from dispatch.engine.capabilities import Capabilities, Encoder, detect
from dispatch.engine.media import tracks, verify
from dispatch.engine.transcode import container_for, ffmpeg_command
from tests.support.chunks import (
    assignment,
    chunk_tasks,
    completed,
    engine,
    make_source,
    psnr,
)
from tests.support.ranges import Served, range_server


@pytest.fixture(scope="module")
def capabilities() -> Capabilities:
    return detect("ffmpeg", (("h264", "libx264"), ("vp9", "libvpx-vp9")))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    make_source(folder / "pal.mp4", 24)
    make_source(folder / "ntsc.mp4", 24, rate="30000/1001")
    make_source(folder / "short.mp4", 6)
    make_source(folder / "stream.ts", 12)  # MPEG-TS: starts at 1.48 s, imprecise seeks
    return folder


@pytest.fixture()
def served(sources: Path) -> Iterator[Served]:
    with range_server(sources) as server:
        yield server


def run_chunked(served: Served, capabilities: Capabilities, work: Path, name: str,
                cuts: list[int] | None, codec: str = "h264") -> tuple[Path, dict[str, Any]]:
    """Plan, chunks (cut at ``cuts``; None: one past the end from the probe), audio and
    stitch of the served source ``name``, each as its own assignment; returns the
    stitched output and the probe."""
    worker = engine(served, work, capabilities)
    source_url = f"{served.base}/{name}"
    worker.run_job(assignment("p.g1.plan", source_url, {"kind": "plan", "chunk_seconds": 8},
                              codec))
    plan = completed(served, "p.g1.plan")
    probe = plan["probe"]
    assert plan["output_url"] == source_url  # the server takes Range: chunks read it
    cuts = [*(cuts or []), probe["frames"]]
    tasks = chunk_tasks(probe, cuts)
    for task in tasks:
        job_id = f"p.g1.c{task['index']:04d}"
        worker.run_job(assignment(job_id, plan["output_url"], task, codec))
        completed(served, job_id)
    worker.run_job(assignment("p.g1.audio", plan["output_url"],
                              {"kind": "audio", "duration": probe["audio"]["duration"]}, codec))
    audio_url = completed(served, "p.g1.audio")["output_url"]
    rate = Fraction(probe["frame_rate"])
    stitch = {"kind": "stitch",
              "chunks": [{"index": task["index"], "frames": task["frames"],
                          "url": completed(served, f"p.g1.c{task['index']:04d}")["output_url"]}
                         for task in reversed(tasks)],  # the engine orders them by index
              "audio": {"url": audio_url},
              "expect": {"frames": probe["frames"], "duration": float(probe["frames"] / rate),
                         "audio_duration": probe["audio"]["duration"],
                         "frame_rate": probe["frame_rate"]}}
    worker.run_job(assignment("p.g1.stitch", plan["output_url"], stitch, codec))
    output_url = completed(served, "p.g1.stitch")["output_url"]
    assert not list(work.iterdir())  # every temporary file removed
    return served.folder / "out" / output_url.rsplit("/", 1)[1], probe


def check_exact(output: Path, probe: dict[str, Any]) -> None:
    rate = Fraction(probe["frame_rate"])
    found = {track.kind: track for track in tracks("ffprobe", output)}
    assert found["video"].packets == probe["frames"]
    assert abs(found["video"].duration - probe["frames"] / rate) <= 1 / rate
    assert abs(found["audio"].duration - probe["audio"]["duration"]) <= 0.05
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(output), "-f", "null", "-"],
                            capture_output=True, text=True, timeout=300)
    assert decode.returncode == 0 and decode.stdout + decode.stderr == ""


def whole_encode(source: Path, capabilities: Capabilities, codec: str, output: Path) -> Path:
    encoder = capabilities.encoder_for(codec)
    assert encoder is not None
    command = ffmpeg_command("ffmpeg", source, encoder, container_for(codec), output)
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return output


@pytest.mark.parametrize(("name", "cuts", "frames"), [
    ("pal.mp4", [0, 211, 407], 600),        # 25 fps: chunks of 211, 196, 193 frames
    ("ntsc.mp4", [0, 233, 461], 720),       # 30000/1001 fps
])
def test_h264_chunks_stitch_frame_exact(served: Served, capabilities: Capabilities,
                                        tmp_path: Path, name: str, cuts: list[int],
                                        frames: int) -> None:
    output, probe = run_chunked(served, capabilities, tmp_path / "work", name, cuts)
    assert probe["frames"] == frames and probe["variable_frame_rate"] is False
    assert probe["audio"]["streams"] == 1 and abs(probe["audio"]["duration"] - 24) < 0.1
    check_exact(output, probe)
    # The stitch's own checks pass, and find each join (a keyframe) at its frame's time.
    rate = Fraction(probe["frame_rate"])
    expect = {"frames": frames, "duration": float(frames / rate), "audio_duration": None,
              "frame_rate": probe["frame_rate"]}
    sizes = [last - first for first, last in zip(cuts, [*cuts[1:], frames], strict=True)]
    assert verify("ffprobe", output, expect, sizes) == (
        [], pytest.approx([float(cut / rate) for cut in cuts[1:]], abs=1e-3))
    source = served.folder / name
    whole = whole_encode(source, capabilities, "h264", tmp_path / "whole.mp4")
    # The chunk boundaries cost at most 0.2 dB against the same encode in one piece.
    assert psnr(output, source) >= psnr(whole, source) - 0.2


def test_mpegts_chunks_seek_early_enough_to_start_on_their_frame(
        served: Served, capabilities: Capabilities, tmp_path: Path) -> None:
    """MPEG-TS seeks land on any packet, so decoding may start at a keyframe after the
    chunk's first frame (here frame 100 for a chunk from 77): the chunk sees it and
    seeks earlier. The source starts at 1.48 s, which the chunk start times include."""
    output, probe = run_chunked(served, capabilities, tmp_path / "work", "stream.ts",
                                [0, 77, 191])
    assert probe["start_time"] == 1.48 and probe["frames"] == 300
    check_exact(output, probe)
    # One frame off anywhere costs over 15 dB (not compared with a whole encode here:
    # the whole-job path doubles the first frame of this source, 301 frames).
    assert psnr(output, served.folder / "stream.ts") > 38


def test_vp9_chunks_stitch_frame_exact(served: Served, capabilities: Capabilities,
                                       tmp_path: Path) -> None:
    output, probe = run_chunked(served, capabilities, tmp_path / "work", "short.mp4",
                                [0, 61], codec="vp9")
    assert output.suffix == ".webm"
    check_exact(output, probe)
    source = served.folder / "short.mp4"
    whole = whole_encode(source, capabilities, "vp9", tmp_path / "whole.webm")
    assert psnr(output, source) >= psnr(whole, source) - 0.2


def corrupt(path: Path) -> None:
    """4 KiB of noise in the middle of the coded pictures (the index is untouched, so
    the packets are all there; the decoder meets the damage)."""
    data = bytearray(path.read_bytes())
    media = data.index(b"mdat") + 4
    middle = media + (len(data) - media) // 2
    data[middle:middle + 4096] = random.Random(23).randbytes(4096)
    path.write_bytes(bytes(data))


def test_a_chunk_whose_output_does_not_decode_fails_with_the_decoders_message(
        served: Served, capabilities: Capabilities, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk engine decodes its whole output before uploading it (the stitch does
    not decode it again): damage found there fails the chunk, and nothing is sent."""
    counted = engine_tasks.count_packets

    def damaged(ffprobe: str, target: str | Path, stream: str) -> int:
        corrupt(Path(target))
        return counted(ffprobe, target, stream)

    monkeypatch.setattr(engine_tasks, "count_packets", damaged)
    worker = engine(served, tmp_path / "work", capabilities)
    task = chunk_tasks({"frame_rate": "25/1", "start_time": 0.0}, [0, 100])[0]
    worker.run_job(assignment("d.g1.c0000", f"{served.base}/short.mp4", task))
    (kind, body), = [report for report in served.reports("d.g1.c0000")
                     if report[0] != "progress"]
    assert kind == "fail"
    assert body["error_message"].startswith("chunk 0 does not decode cleanly: ")
    assert "h264" in body["error_message"]  # the decoder's own line
    assert not list((served.folder / "out").glob("d.g1.*"))
    assert not list((tmp_path / "work").iterdir())


@pytest.mark.parametrize(("options", "named"), [
    (("-x264-params", "cabac=0"), "extradata_hash"),    # other parameter sets (PPS)
    (("-pix_fmt", "yuv444p"), "pix_fmt 'yuv444p', not 'yuv420p'"),
])
def test_chunks_encoded_with_other_parameters_are_not_stitched(
        served: Served, capabilities: Capabilities, tmp_path: Path,
        options: tuple[str, ...], named: str) -> None:
    """Chunk 1 from an engine whose encoder settings differ: a stream copy would give
    a file whose second part the decoder reads with the first part's parameters. The
    stitch refuses, naming the chunk and what differs."""
    other = Capabilities({"h264": Encoder("libx264", (), ("-pix_fmt", "yuv420p", "-preset",
                                                          "medium", "-crf", "23", *options))},
                         ("h264",))
    source = f"{served.base}/short.mp4"
    tasks = chunk_tasks({"frame_rate": "25/1", "start_time": 0.0}, [0, 61, 150])
    for task, encoders in zip(tasks, (capabilities, other), strict=True):
        worker = engine(served, tmp_path / "work", encoders)
        worker.run_job(assignment(f"m.g1.c{task['index']:04d}", source, task))
    stitch = {"kind": "stitch", "audio": None,
              "chunks": [{"index": task["index"], "frames": task["frames"],
                          "url": completed(served, f"m.g1.c{task['index']:04d}")["output_url"]}
                         for task in tasks],
              "expect": {"frames": 150, "duration": 6.0, "audio_duration": None,
                         "frame_rate": "25/1"}}
    engine(served, tmp_path / "work", capabilities).run_job(
        assignment("m.g1.stitch", source, stitch))
    (kind, body), = [report for report in served.reports("m.g1.stitch")
                     if report[0] != "progress"]
    assert kind == "fail"
    message = body["error_message"]
    assert message.startswith("the chunks cannot be joined without re-encoding: chunk 1 was "
                              "encoded with other parameters than chunk 0: ")
    assert named in message and "chunk 0 " not in message.split(": ", 1)[1]
    assert not list((tmp_path / "work").iterdir())


def test_a_stitched_output_that_does_not_decode_at_a_join_fails_the_stitch(
        served: Served, capabilities: Capabilities, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The keyframe that starts chunk 1 is damaged in the stitched output (the packets
    are all there): the decode at the join finds it, and the stitch fails saying so."""
    checked = engine_tasks.verify

    def damaged(ffprobe: str, path: Path, expect: dict[str, Any],
                sizes: list[int]) -> tuple[list[str], list[float]]:
        problems, joins = checked(ffprobe, path, expect, sizes)
        listing = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0",
                                  "-show_entries", "packet=size,pos", "-of", "csv=p=0",
                                  str(path)], capture_output=True, text=True, check=True)
        size, position = map(int, listing.stdout.split()[sizes[0]].split(","))
        data = bytearray(path.read_bytes())
        data[position + 8:position + size] = bytes(size - 8)
        path.write_bytes(bytes(data))
        return problems, joins

    monkeypatch.setattr(engine_tasks, "verify", damaged)
    with pytest.raises(AssertionError):  # the stitch did not complete
        run_chunked(served, capabilities, tmp_path / "work", "short.mp4", [0, 61])
    (kind, body), = [report for report in served.reports("p.g1.stitch")
                     if report[0] != "progress"]
    assert kind == "fail"
    assert body["error_message"].startswith(
        "the stitched output failed verification: the output does not decode cleanly at "
        "its joins: ")
    assert "NAL unit" in body["error_message"]  # the decoder's own line
