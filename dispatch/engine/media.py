"""What chunked jobs need to know about media (issue 23): the plan's probe of a
source, whether its server takes HTTP ``Range``, packet counts and durations, and the
stitch's verification. ffprobe and ffmpeg only; nothing here talks to the server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import requests

from dispatch.engine.transcode import PROBE_TIMEOUT, STDERR_LINES, JobError, without_queries

RANGE_TIMEOUT = (10.0, 30.0)
# r_frame_rate and avg_frame_rate of a constant-rate stream agree to rounding (the
# average is frames / duration); a larger gap means the frame rate varies.
VFR_TOLERANCE = Fraction(1, 1000)
DECODE_TIMEOUT = 3600.0


def readable(url: str) -> str:
    """What ffmpeg/ffprobe are given for a source URL: a ``file://`` URL's path, else
    the URL itself (ffmpeg reads http(s) with ``Range`` requests, only what it needs)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return url2pathname(unquote(parts.path))
    return url


def accepts_range(url: str) -> bool:
    """True when the source answers ``Range: bytes=0-0`` with 206 (or is a local
    file): then chunk engines can read just their part of it."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return True
    try:
        with requests.get(url, headers={"Range": "bytes=0-0"}, stream=True,
                          timeout=RANGE_TIMEOUT) as response:
            return response.status_code == 206
    except requests.RequestException as exc:
        raise JobError(f"cannot reach source {without_queries(url)}: "
                       f"{exc.__class__.__name__}") from None


def _ffprobe(command: Sequence[str], what: str) -> dict[str, Any]:
    try:
        result = subprocess.run(list(command), capture_output=True, text=True,
                                errors="replace", timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobError(f"cannot probe {what}: {exc}") from None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0:
        raise JobError(f"cannot probe {what}: " + (lines[-1] if lines else
                                                   f"ffprobe exit status {result.returncode}"),
                       "\n".join(lines[-STDERR_LINES:]))
    try:
        info: dict[str, Any] = json.loads(result.stdout or "{}")
    except ValueError:
        raise JobError(f"cannot probe {what}: unreadable ffprobe output") from None
    return info


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _rate(text: Any) -> Fraction | None:
    try:
        rate = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None
    return rate if rate > 0 else None


def _duration(stream: dict[str, Any], container: dict[str, Any]) -> float | None:
    """A stream's duration: its own, else Matroska's DURATION tag, else the file's."""
    own = _number(stream.get("duration"))
    if own is not None:
        return own
    tag = (stream.get("tags") or {}).get("DURATION")
    if tag:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return _number(container.get("duration"))


def probe_source(ffprobe: str, url: str) -> dict[str, Any]:
    """The plan report's ``probe`` of a source: duration, frames, frame_rate,
    start_time, width, height, variable_frame_rate and audio (duration, streams)."""
    target = readable(url)
    info = _ffprobe([ffprobe, "-v", "error", "-show_entries",
                     "stream=codec_type,nb_frames,r_frame_rate,avg_frame_rate,start_time,"
                     "duration,width,height:stream_tags=DURATION:format=duration,start_time",
                     "-of", "json", target], "source")
    streams = info.get("streams") or []
    container = info.get("format") or {}
    videos = [stream for stream in streams if stream.get("codec_type") == "video"]
    audios = [stream for stream in streams if stream.get("codec_type") == "audio"]
    if not videos:
        raise JobError("cannot plan the source: it has no video stream")
    video = videos[0]
    rate = _rate(video.get("r_frame_rate"))
    average = _rate(video.get("avg_frame_rate"))
    if rate is None:
        raise JobError("cannot plan the source: its video stream has no frame rate")
    frames = int(_number(video.get("nb_frames")) or 0)
    if frames < 1:
        frames = count_packets(ffprobe, target, "v:0")
    variable = average is None or abs(rate - average) > rate * VFR_TOLERANCE
    duration = _duration(video, container)
    audio = None
    if audios:
        audio = {"duration": round(_duration(audios[0], container) or 0.0, 6),
                 "streams": len(audios)}
    return {"duration": round(duration if duration is not None else float(frames / rate), 6),
            "frames": frames, "frame_rate": f"{rate.numerator}/{rate.denominator}",
            "start_time": round(_number(video.get("start_time")) or 0.0, 6),
            "width": int(video.get("width") or 0), "height": int(video.get("height") or 0),
            "variable_frame_rate": variable, "audio": audio}


def count_packets(ffprobe: str, target: str | Path, stream: str) -> int:
    """The packet count of one stream (``v:0``), read through the whole file."""
    info = _ffprobe([ffprobe, "-v", "error", "-count_packets", "-select_streams", stream,
                     "-show_entries", "stream=nb_read_packets", "-of", "json", str(target)],
                    "the packets")
    streams = info.get("streams") or []
    return int(_number(streams[0].get("nb_read_packets")) or 0) if streams else 0


# How two chunks' video streams differ, named (ffprobe) when their starts differ.
PARAMETERS = ("codec_name", "profile", "width", "height", "pix_fmt", "time_base",
              "extradata_hash")
# Packets decoded from each join of a stitched output on (a few reorderings' worth).
JOIN_PACKETS = 8
# Joins decoded by one ffprobe run (its intervals are one argument, at most 128 KiB).
JOINS_PER_RUN = 2000


@dataclass(frozen=True)
class Track:
    """One stream of a file as its packets say: how many, how long it plays, and (video)
    each packet's time and whether it is a keyframe, in decode order."""

    kind: str
    packets: int
    duration: float
    points: tuple[tuple[float, bool], ...] = ()


def tracks(ffprobe: str, path: Path) -> list[Track]:
    """Each stream's packet count and duration (last packet's end - first packet's
    start), from the packets themselves: the same in every container."""
    info = _ffprobe([ffprobe, "-v", "error", "-show_entries",
                     "packet=stream_index,pts_time,duration_time,flags:stream=index,codec_type",
                     "-of", "json", str(path)], "the output")
    kinds = {stream.get("index"): stream.get("codec_type") for stream in info.get("streams", [])}
    spans: dict[int, list[float]] = {}
    points: dict[int, list[tuple[float, bool]]] = {}
    for packet in info.get("packets", []):
        index = packet.get("stream_index")
        start = _number(packet.get("pts_time"))
        if start is None:
            continue
        end = start + (_number(packet.get("duration_time")) or 0.0)
        span = spans.setdefault(index, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        points.setdefault(index, []).append((start, "K" in str(packet.get("flags", ""))))
    return [Track(str(kinds.get(index)), len(points[index]), spans[index][1] - spans[index][0],
                  tuple(points[index]) if kinds.get(index) == "video" else ())
            for index in sorted(spans)]


def headers_command(ffmpeg: str, paths: Sequence[Path], folder: Path) -> list[str]:
    """One ffmpeg run (each process costs ~60 ms) writing, for each file, its first
    video packet copied into ``folder/start-N.crc`` (the framecrc muxer: codec, time
    base, size, aspect, a CRC of the extradata, and ``F=`` on a packet that is not a
    keyframe)."""
    inputs = [part for path in paths for part in ("-i", str(path))]
    outputs = [part for number in range(len(paths)) for part in (
        "-map", f"{number}:v:0", "-c", "copy", "-frames:v", "1", "-f", "framecrc",
        str(folder / f"start-{number}.crc"))]
    return [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y", *inputs, *outputs]


def read_start(crc: Path) -> tuple[str, bool]:
    """What a ``headers_command`` file says: the header lines (what a join needs to
    be the same) and whether the first packet is a keyframe."""
    lines = crc.read_text(errors="replace").splitlines()
    header = [line for line in lines if line.startswith("#") and not line.startswith(
        "#software")]
    packets = [line for line in lines if line and not line.startswith("#")]
    return "\n".join(header), bool(packets) and "F=" not in packets[0]


def parameters(ffprobe: str, path: Path) -> dict[str, str]:
    """A file's first video stream's PARAMETERS as ffprobe names them (to say how two
    chunks differ)."""
    info = _ffprobe([ffprobe, "-v", "error", "-show_data_hash", "sha256", "-select_streams",
                     "v:0", "-show_entries", "stream=" + ",".join(PARAMETERS), "-of", "json",
                     str(path)], "a chunk")
    stream = (info.get("streams") or [{}])[0]
    return {name: str(stream.get(name, "")) for name in PARAMETERS}


def _brief(value: str) -> str:
    return value if len(value) <= 24 else value[:24] + "..."


def differences(first: dict[str, str], other: dict[str, str]) -> str:
    """``other``'s parameters that are not ``first``'s, for a message."""
    return ", ".join(f"{name} {_brief(other[name])!r}, not {_brief(first[name])!r}"
                     for name in PARAMETERS if other[name] != first[name]) or \
        "the container's description of the stream"


def decode_command(ffmpeg: str, path: Path, threads: int) -> list[str]:
    """A whole decode of ``path`` that prints nothing when it decodes cleanly."""
    return [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-threads", str(threads),
            "-i", str(path), "-f", "null", "-"]


def join_commands(ffprobe: str, path: Path, joins: Sequence[float], rate: Fraction,
                  threads: int) -> list[list[str]]:
    """Decodes of a stitched output at each join (the time of the keyframe that starts
    a chunk) through the JOIN_PACKETS packets from it, one run per JOINS_PER_RUN joins
    that reads the file's index once: ffprobe's ``-read_intervals`` seeks to the
    keyframe nearest each start (half a frame after the join: the join's own) and
    decodes from there (``-count_frames``; it prints the count). ffmpeg with an
    ``-ss`` input per join takes twice as long, opening the file once per join. Each
    prints no error line when its parts decode cleanly."""
    half = float(1 / rate) / 2
    return [[ffprobe, "-hide_banner", "-v", "error", "-threads", str(threads),
             "-read_intervals", ",".join(f"{at + half:.6f}%+#{JOIN_PACKETS}"
                                         for at in joins[first:first + JOINS_PER_RUN]),
             "-select_streams", "v:0", "-count_frames", "-show_entries",
             "stream=nb_read_frames", "-of", "csv=p=0", str(path)]
            for first in range(0, len(joins), JOINS_PER_RUN)]


def decode_errors(ffmpeg: str, path: Path) -> str:
    """What ``ffmpeg -v error -i OUT -f null -`` prints (empty: it decodes cleanly)."""
    try:
        result = subprocess.run(decode_command(ffmpeg, path, 0), capture_output=True,
                                text=True, errors="replace", timeout=DECODE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"decode check did not finish: {exc}"
    return (result.stdout + result.stderr).strip()


def verify(ffprobe: str, path: Path, expect: dict[str, Any],
           chunk_frames: Sequence[int]) -> tuple[list[str], list[float]]:
    """The stitch's checks of its output against ``expect`` (frames, duration,
    audio_duration, frame_rate), each failed one a sentence with the numbers, and the
    times of the joins (the first packet of each chunk after the first, in decode
    order, which must be a keyframe) for the decode around them."""
    problems = []
    found = tracks(ffprobe, path)
    videos = [track for track in found if track.kind == "video"]
    audios = [track for track in found if track.kind == "audio"]
    frame = float(1 / Fraction(expect["frame_rate"]))
    joins: list[float] = []
    if not videos:
        problems.append("the output has no video stream")
    else:
        video = videos[0]
        if video.packets != expect["frames"]:
            problems.append(f"video has {video.packets} frames, expected {expect['frames']}")
        if abs(video.duration - expect["duration"]) > frame + 1e-6:
            problems.append(f"video lasts {video.duration:.6f} s, expected "
                            f"{expect['duration']:.6f} s (± one frame, {frame:.6f} s)")
        at = 0
        for index, frames in enumerate(chunk_frames[:-1], start=1):
            at += frames
            if at < len(video.points):
                pts, key = video.points[at]
                if not key:
                    problems.append(f"the join before chunk {index} (packet {at}) is not "
                                    "a keyframe")
                joins.append(pts)
    wanted = expect.get("audio_duration")
    if wanted is not None:
        if not audios:
            problems.append("the output has no audio stream")
        for audio in audios:
            if abs(audio.duration - wanted) > 0.05:
                problems.append(f"audio lasts {audio.duration:.6f} s, expected "
                                f"{wanted:.6f} s (± 0.05 s)")
    return problems, joins
