"""The parts of a chunked job (issue 23), one function per ``task.kind``: plan (probe
the source, make it readable by range), chunk (encode a frame range, video only),
audio (encode the audio once) and stitch (join without re-encoding, then verify).

Each returns the ``complete`` report's body and the kept output (None when it went to
the store), or raises JobError / Interrupted, exactly like a whole job; the loop owns
the reports. Encoder settings, containers, the ffmpeg runner and the upload are the
whole job's (:mod:`transcode`, :mod:`run`, the host's ``deliver``)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from dispatch.engine.capabilities import Encoder
from dispatch.engine.media import (
    accepts_range,
    count_packets,
    decode_command,
    differences,
    headers_command,
    join_commands,
    parameters,
    probe_source,
    read_start,
    readable,
    verify,
)
from dispatch.engine.run import Host, JobRun
from dispatch.engine.transcode import (
    Container,
    JobError,
    container_for,
    fetch_source,
    ffmpeg_head,
    remove,
    with_video_filter,
)

log = logging.getLogger("dispatch.engine")

Result = tuple[dict[str, Any], Path | None]
# The share of a stitch's progress done when the pieces are here, then when joined.
FETCHED, JOINED = 60.0, 70.0
# Chunks whose starts one ffmpeg run reads (an input and an output each).
STARTS_PER_RUN = 64


def run_task(host: Host, run: JobRun, folder: Path) -> Result:
    """Do the task ``run.task`` in ``folder`` (the loop removes it afterwards)."""
    task = run.task or {}
    kind = task.get("kind")
    work = _KINDS.get(str(kind))
    if work is None:
        raise JobError(f"unknown task kind {kind!r}")
    if kind not in host.config.task_kinds:
        raise JobError(f"engine {host.config.engine_id} does not take {kind} tasks")
    return work(host, run, task, folder)


def _encoder(host: Host, run: JobRun) -> Encoder:
    encoder = host.capabilities.encoder_for(run.codec)
    if encoder is None:
        raise JobError(f"codec {run.codec!r} is not supported by engine "
                       f"{host.config.engine_id}")
    return encoder


def _max_bytes(host: Host) -> int:
    return int(host.config.max_download_gb * 1e9)


# ------------------------------------------------------------------ plan

def _extension(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lstrip(".")
    return suffix if suffix.isalnum() and len(suffix) <= 8 else "bin"


def plan(host: Host, run: JobRun, task: dict[str, Any], folder: Path) -> Result:
    """Probe the source; its own URL is what chunks read when its server takes
    ``Range``, else a copy of it uploaded as this task's output."""
    host.progress(run, 0.0)
    if accepts_range(run.source_url):
        probe = probe_source(host.config.ffprobe, run.source_url)
        return {"output_url": run.source_url, "probe": probe}, None
    extension = _extension(run.source_url)
    copy = fetch_source(run.source_url, folder / f"source.{extension}", _max_bytes(host),
                        lambda: run.stopped)
    probe = probe_source(host.config.ffprobe, copy.resolve().as_uri())
    host.progress(run, 50.0)
    report, final = host.deliver(run, copy, extension)
    return {**report, "probe": probe}, final


# ------------------------------------------------------------------ chunk and audio

# Seconds before a chunk's first frame that the demuxer is asked to seek to, tried in
# turn. MP4 and Matroska seek to the keyframe at or before the point: no margin needed.
# MPEG-TS lands on any packet and decoding starts at the next keyframe, which may be
# after the chunk's first frame: then a margin of a GOP or more.
SEEK_MARGINS = (0.0, 4.0, 16.0)


def _filter_value(text: str) -> str:
    """``text`` as a filter option value inside a filtergraph (both escaping levels)."""
    value = re.sub(r"([\\':])", r"\\\1", text)
    return re.sub(r"([\\'\[\],;])", r"\\\1", value)


def chunk_command(ffmpeg: str, source: str, encoder: Encoder, container: Container,
                  seek: float, margin: float, frames: int, output: Path,
                  marks: Path) -> list[str]:
    """``frames`` frames from the first at or after ``seek`` (a source timestamp: half a
    frame before the chunk's first, so rounding never takes the frame before it), video
    only. The demuxer seeks ``margin`` s earlier; ``trim`` drops the frames before
    ``seek`` and the first one kept is written to ``marks`` (its time from the seek
    point), so a start after the chunk's first frame is seen. Timestamps then start at
    0, or ffmpeg's constant-rate logic doubles the first frame and drops the last."""
    frame_log = (f"trim=start={margin:.6f},metadata=mode=add:key=distconv_chunk:value=1,"
                 f"metadata=mode=print:file={_filter_value(str(marks))},setpts=PTS-STARTPTS")
    return [*ffmpeg_head(ffmpeg), *encoder.input_args,
            "-seek_timestamp", "1", "-ss", f"{seek - margin:.6f}", "-i", source,
            "-map", "0:v:0", "-an", "-sn", "-dn", "-frames:v", str(frames),
            "-c:v", encoder.name, *with_video_filter(encoder.output_args, frame_log),
            *container.extra, "-f", container.muxer, str(output)]


def _first_frame(marks: Path) -> float | None:
    """The time (from the seek point) of the first frame the chunk kept."""
    try:
        with open(marks, encoding="utf-8", errors="replace") as handle:
            found = re.search(r"pts_time:(-?[0-9.]+)", handle.readline())
    except FileNotFoundError:
        return None
    return float(found.group(1)) if found else None


def chunk(host: Host, run: JobRun, task: dict[str, Any], folder: Path) -> Result:
    encoder = _encoder(host, run)
    container = container_for(run.codec)
    rate = Fraction(str(task["frame_rate"]))
    frames, index = int(task["frames"]), task.get("index")
    half = float(1 / rate) / 2
    produced, marks = folder / f"chunk.{container.extension}", folder / "first-frame.txt"
    host.progress(run, 0.0)
    for attempt, margin in enumerate(SEEK_MARGINS):
        remove(marks)
        command = chunk_command(host.config.ffmpeg, readable(run.source_url), encoder,
                                container, float(task["start_time"]) - half, margin, frames,
                                produced, marks)
        run.encode(command, produced, host.follower(run, float(frames / rate)))
        first = _first_frame(marks)
        if first is None:  # ffmpeg wrote frames, so it logged the first one
            raise JobError(f"chunk {index}: the time of its first frame was not recorded")
        late = round((first - margin - half) * rate)
        if late <= 0 or margin == SEEK_MARGINS[-1]:
            break
        log.info("chunk %s: decoding started %d frames late; seeking %g s earlier",
                 run.job_id, late, SEEK_MARGINS[attempt + 1])
    if late > 0:
        start = int(task.get("start_frame", 0))
        raise JobError(f"chunk {index} starts {late} frames late (at frame {start + late}, "
                       f"not {start}): no keyframe within {margin:g} s before it")
    made = count_packets(host.config.ffprobe, produced, "v:0")
    if made != frames:
        raise JobError(f"chunk {index} has {made} frames, expected {frames}")
    # The whole decode check of the output is done here, on every chunk's engine at
    # once, not by the stitch after the last chunk (docs/architecture.md).
    errors = run.check(decode_command(host.config.ffmpeg, produced, host.config.ffmpeg_threads))
    if errors:
        raise JobError(f"chunk {index} does not decode cleanly: {errors[0][:300]}",
                       "\n".join(errors))
    return host.deliver(run, produced, container.extension)


def audio_command(ffmpeg: str, source: str, container: Container, output: Path) -> list[str]:
    """Every audio stream, with the codec a whole job gives the target's container."""
    return [*ffmpeg_head(ffmpeg), "-i", source, "-map", "0:a", "-vn", "-sn", "-dn",
            "-c:a", container.audio, *container.extra, "-f", container.muxer, str(output)]


def audio(host: Host, run: JobRun, task: dict[str, Any], folder: Path) -> Result:
    container = container_for(run.codec)
    produced = folder / f"audio.{container.extension}"
    host.progress(run, 0.0)
    duration = task.get("duration")
    run.encode(audio_command(host.config.ffmpeg, readable(run.source_url), container,
                             produced),
               produced, host.follower(run, float(duration) if duration else None))
    return host.deliver(run, produced, container.extension)


# ------------------------------------------------------------------ stitch

def concat_command(ffmpeg: str, listing: Path, audio_path: Path | None,
                   container: Container, output: Path) -> list[str]:
    """The chunks joined by the concat demuxer and the audio beside them, all copied."""
    inputs = ["-f", "concat", "-safe", "0", "-i", str(listing)]
    maps = ["-map", "0:v:0"]
    if audio_path is not None:
        inputs += ["-i", str(audio_path)]
        maps += ["-map", "1:a"]
    return [*ffmpeg_head(ffmpeg), *inputs, *maps, "-c", "copy", *container.extra,
            "-f", container.muxer, str(output)]


def _throttled(host: Host, run: JobRun) -> Callable[[float], None]:
    last = 0.0

    def report(percent: float) -> None:
        nonlocal last
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            host.progress(run, percent)

    return report


def _fetch_chunks(host: Host, run: JobRun, pieces: list[dict[str, Any]],
                  folder: Path, extension: str) -> list[Path]:
    """The chunks' files, in index order."""
    report = _throttled(host, run)
    paths: list[Path] = []
    for number, piece in enumerate(pieces):
        report(FETCHED * number / len(pieces))
        name = f"chunk-{int(piece['index']):05d}.{extension}"
        paths.append(fetch_source(piece["url"], folder / name, _max_bytes(host),
                                  lambda: run.stopped))
    return paths


def _check_joinable(host: Host, run: JobRun, pieces: list[dict[str, Any]],
                    paths: list[Path], folder: Path) -> None:
    """JobError unless every chunk starts with a keyframe (a decoder entering it owes
    nothing to the chunk before) and has the first chunk's codec, time base, size and
    extradata (SPS/PPS: the output declares only the first chunk's). The differences
    are named by ffprobe, which is only run when there are some."""
    starts: list[tuple[str, bool]] = []
    for first in range(0, len(paths), STARTS_PER_RUN):
        batch = paths[first:first + STARTS_PER_RUN]
        problems = run.check(headers_command(host.config.ffmpeg, batch, folder))
        if problems:
            raise JobError("cannot read the chunks' first packets: " + problems[0][:300])
        starts += [read_start(folder / f"start-{number}.crc") for number in range(len(batch))]
    problems = [f"chunk {piece['index']} does not start with a keyframe"
                for piece, (_, key) in zip(pieces, starts, strict=True) if not key]
    differ = [number for number, (header, _) in enumerate(starts) if header != starts[0][0]]
    if differ:
        reference = parameters(host.config.ffprobe, paths[0])
        problems += [f"chunk {pieces[number]['index']} was encoded with other parameters "
                     f"than chunk {pieces[0]['index']}: "
                     + differences(reference, parameters(host.config.ffprobe, paths[number]))
                     for number in differ[:3]]
    if problems:
        raise JobError("the chunks cannot be joined without re-encoding: "
                       + "; ".join(problems))


def stitch(host: Host, run: JobRun, task: dict[str, Any], folder: Path) -> Result:
    container = container_for(run.codec)
    pieces = sorted(task["chunks"], key=lambda piece: int(piece["index"]))
    sound = task.get("audio")
    paths = _fetch_chunks(host, run, pieces, folder, container.extension)
    _check_joinable(host, run, pieces, paths, folder)
    audio_path = None
    if sound:
        audio_path = fetch_source(sound["url"], folder / f"audio.{container.extension}",
                                  _max_bytes(host), lambda: run.stopped)
    host.progress(run, FETCHED)
    listing = folder / "chunks.txt"
    # The concat demuxer's quoting: inside '...', a ' is written '\''.
    listing.write_text("".join("file '{}'\n".format(str(path.resolve()).replace("'", "'\\''"))
                               for path in paths))
    produced = folder / f"stitched.{container.extension}"
    run.encode(concat_command(host.config.ffmpeg, listing, audio_path, container, produced),
               produced, lambda seconds, figures: None)
    host.progress(run, JOINED)
    expect = task["expect"]
    problems, joins = verify(host.config.ffprobe, produced, expect,
                             [int(piece["frames"]) for piece in pieces])
    # Each chunk was decoded whole on its engine; what stream copy adds is the joins.
    errors = [line for command in join_commands(
        host.config.ffprobe, produced, joins, Fraction(expect["frame_rate"]),
        host.config.ffmpeg_threads) for line in run.check(command)]
    if errors:
        problems.append("the output does not decode cleanly at its joins: "
                        + errors[0][:300])
    if problems:
        raise JobError("the stitched output failed verification: " + "; ".join(problems))
    return host.deliver(run, produced, container.extension)


_KINDS: dict[str, Callable[[Host, JobRun, dict[str, Any], Path], Result]] = {
    "plan": plan, "chunk": chunk, "audio": audio, "stitch": stitch,
}
