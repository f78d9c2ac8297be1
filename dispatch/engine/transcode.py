"""One job's work on this machine: fetch the source, probe it, run ffmpeg with
machine-readable progress, stop it on request, publish the output atomically.

Nothing here talks to the server: the loop decides what to report.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit
from urllib.request import url2pathname

import requests

from dispatch.domain.codecs import family
from dispatch.engine.capabilities import Encoder

CHUNK = 1 << 20
DOWNLOAD_TIMEOUT = (10.0, 60.0)
# Free space kept beyond the source itself, for the output being written.
SPACE_MARGIN = 256 << 20
STDERR_LINES = 8
# A URL's query: a signed URL's is its permission, never shown in a message, a report
# or a log (chunk tasks also give ffmpeg signed URLs, and its errors name the input).
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?]+)\?[^\s'\"]*", re.IGNORECASE)


def without_queries(text: str) -> str:
    """``text`` with the query of every URL in it replaced by ``?...``."""
    return _URL_QUERY.sub(r"\1?...", text)
# Stop escalation: "q" on stdin lets ffmpeg close its files; SIGTERM if it does not
# within QUIT_GRACE; SIGKILL after TERM_GRACE more. Both fit in the 2 s promise.
QUIT_GRACE = 0.5
TERM_GRACE = 0.5
PROBE_TIMEOUT = 60.0
WORK_PREFIX = "job-"
PARTIAL_SUFFIX = ".partial"


class JobError(Exception):
    """The job cannot be done here; the message is the one-line reason reported."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Interrupted(Exception):
    """The job was stopped while downloading (cancelled, lost or shutdown)."""


@dataclass(frozen=True)
class Container:
    extension: str
    muxer: str
    audio: str
    extra: tuple[str, ...] = ()


_MP4 = Container("mp4", "mp4", "aac", ("-movflags", "+faststart"))
_CONTAINERS = {
    "h264": _MP4, "h265": Container("mp4", "mp4", "aac", ("-movflags", "+faststart",
                                                           "-tag:v", "hvc1")),
    "av1": _MP4, "mpeg4": _MP4,
    "vp9": Container("webm", "webm", "libopus"), "vp8": Container("webm", "webm", "libopus"),
}
_MATROSKA = Container("mkv", "matroska", "aac")


def container_for(target_codec: str) -> Container:
    return _CONTAINERS.get(family(target_codec), _MATROSKA)


def safe_name(job_id: str) -> str:
    """A file name part from a job id (server ids are digits and "_" already)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in job_id)[:200]


# ------------------------------------------------------------------ work folders

def clean_leftovers(work_dir: Path, output_dir: Path) -> list[Path]:
    """Remove what an earlier run left behind (killed mid-job, crashed): every job file
    in the work folder and partial copies in the output folder. Returns them."""
    removed = []
    for path in [*work_dir.glob(WORK_PREFIX + "*"), *output_dir.glob(".*" + PARTIAL_SUFFIX)]:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass


# ------------------------------------------------------------------ the source

def fetch_source(url: str, destination: Path, max_bytes: int,
                 stopped: Callable[[], bool]) -> Path:
    """The local path of the source: a ``file://`` source is read where it is, an
    ``http(s)://`` one is downloaded to ``destination`` (size limit, free-space check).
    Raises JobError, or Interrupted when ``stopped()`` turns true mid-download."""
    parts = urlsplit(url)
    # A signed URL's query is its permission: never in a message or a log line.
    shown = without_queries(url)
    if parts.scheme == "file":
        path = Path(url2pathname(unquote(parts.path)))
        if not path.is_file() or not os.access(path, os.R_OK):
            raise JobError(f"cannot read source {shown}: no such readable file")
        return path
    if parts.scheme not in ("http", "https"):
        raise JobError(f"cannot download source {shown}: unsupported scheme {parts.scheme!r}")
    try:
        with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as response:
            if response.status_code != 200:
                raise JobError(f"cannot download source {shown}: HTTP {response.status_code} "
                               f"{response.reason}")
            length = int(response.headers.get("Content-Length") or 0)
            if length > max_bytes:
                raise JobError(f"source {shown} is {length} bytes, over the "
                               f"{max_bytes}-byte download limit")
            free = shutil.disk_usage(destination.parent).free
            if length + SPACE_MARGIN > free:
                raise JobError(f"not enough free space for source {shown}: {length} bytes "
                               f"needed, {free} free in the work folder")
            received = 0
            with open(destination, "wb") as handle:
                for chunk in response.iter_content(CHUNK):
                    if stopped():
                        raise Interrupted()
                    received += len(chunk)
                    if received > max_bytes:
                        raise JobError(f"source {shown} is over the {max_bytes}-byte "
                                       "download limit")
                    handle.write(chunk)
    except requests.RequestException as exc:
        text = str(exc).replace(parts.query, "...") if parts.query else str(exc)
        raise JobError(f"cannot download source {shown}: {exc.__class__.__name__}: "
                       f"{text[:300]}") from None
    except OSError as exc:
        raise JobError(f"cannot store source {shown} in the work folder: {exc}") from None
    return destination


def probe(ffprobe: str, path: Path) -> float | None:
    """The source's duration in seconds (None when it has none, e.g. a raw stream).
    JobError when ffprobe cannot read it or it has no video stream."""
    command = [ffprobe, "-v", "error", "-select_streams", "v:0",
               "-show_entries", "stream=codec_type:format=duration", "-of", "json", str(path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobError(f"cannot probe source: {exc}") from None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0:
        raise JobError("cannot decode source: " + (lines[-1] if lines else
                                                   f"ffprobe exit status {result.returncode}"),
                       "\n".join(lines[-STDERR_LINES:]))
    try:
        info = json.loads(result.stdout or "{}")
    except ValueError:
        raise JobError("cannot decode source: unreadable ffprobe output") from None
    if not info.get("streams"):
        raise JobError("cannot decode source: it has no video stream")
    try:
        duration = float(info.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        return None
    return duration if duration > 0 else None


# ------------------------------------------------------------------ ffmpeg

def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: SIGKILL when the engine dies (kill -9 included), so
    no ffmpeg outlives it writing into the work folder."""
    PR_SET_PDEATHSIG = 1
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _PREEXEC: Callable[[], None] | None = _die_with_parent if hasattr(_libc, "prctl") else None
except OSError:  # pragma: no cover - not Linux
    _PREEXEC = None


def ffmpeg_head(ffmpeg: str) -> list[str]:
    """How every encode starts: quiet, machine-readable progress, overwrite."""
    return [ffmpeg, "-hide_banner", "-nostats", "-v", "warning", "-progress", "pipe:1", "-y"]


def ffmpeg_command(ffmpeg: str, source: Path, encoder: Encoder, container: Container,
                   output: Path) -> list[str]:
    return [*ffmpeg_head(ffmpeg), *encoder.input_args, "-i", str(source),
            "-map", "0:v:0", "-map", "0:a?", "-c:v", encoder.name, *encoder.output_args,
            "-c:a", container.audio, *container.extra, "-f", container.muxer, str(output)]


def with_video_filter(args: tuple[str, ...], first: str) -> list[str]:
    """An encoder's output options with ``first`` run before its own ``-vf`` filters
    (ffmpeg takes one ``-vf``: a second one would replace the encoder's)."""
    if "-vf" not in args:
        return [*args, "-vf", first]
    at = args.index("-vf") + 1
    return [*args[:at], f"{first},{args[at]}", *args[at + 1:]]


def figures(block: dict[str, str]) -> dict[str, float]:
    """fps and speed (× real time) of one ``-progress`` block; ffmpeg writes ``N/A``
    or nothing before it knows, and such a figure is left out."""
    found: dict[str, float] = {}
    for key in ("fps", "speed"):
        text = block.get(key, "").strip().removesuffix("x")
        try:
            value = float(text)
        except ValueError:
            continue
        if value >= 0 and value != float("inf"):
            found[key] = value
    return found


class FFmpeg:
    """A running ffmpeg: progress from its ``-progress pipe:1`` output, the last lines
    of its stderr, and :meth:`stop` (q, then SIGTERM, then SIGKILL)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.started = time.monotonic()
        self.elapsed = 0.0
        self._stopping = threading.Lock()
        self._stop_requested = False
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_PREEXEC,  # noqa: PLW1509 - prctl only, nothing that takes locks
        )
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True,
                                               name="ffmpeg-stderr")
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = without_queries(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.stderr_tail.append(line)

    def follow(self, on_progress: Callable[[float, dict[str, float]], None]) -> int:
        """Read progress blocks until ffmpeg exits, calling ``on_progress(out_time
        seconds, figures)`` after each (``figures``: the block's fps and speed that
        ffmpeg knew, see :func:`figures`); returns ffmpeg's exit status."""
        assert self.proc.stdout is not None
        block: dict[str, str] = {}
        for raw in self.proc.stdout:
            key, _, value = raw.decode("ascii", "replace").strip().partition("=")
            block[key] = value
            if key == "progress":
                try:
                    seconds = int(block.get("out_time_us", "")) / 1e6
                except ValueError:
                    seconds = 0.0
                on_progress(max(seconds, 0.0), figures(block))
                block = {}
        status = self.proc.wait()
        self.elapsed = time.monotonic() - self.started
        self._stderr_reader.join(5)
        with self._stopping:  # not while a stop is writing "q"
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return status

    def stop(self) -> None:
        """Stop ffmpeg within QUIT_GRACE + TERM_GRACE seconds; returns at once (the
        escalation runs on its own thread, so a heartbeat is never held up)."""
        if self._stop_requested:
            return
        self._stop_requested = True
        threading.Thread(target=self._escalate, daemon=True, name="ffmpeg-stop").start()

    def _escalate(self) -> None:
        proc = self.proc
        with self._stopping:
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"q")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass  # it has exited, or its pipes are closed already
        for sig, grace in ((signal.SIGTERM, QUIT_GRACE), (signal.SIGKILL, TERM_GRACE)):
            try:
                proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                pass
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return

    def failure(self, status: int) -> JobError:
        tail = list(self.stderr_tail)
        reason = f"ffmpeg exited with status {status}"
        if status < 0:
            reason = f"ffmpeg killed by signal {-status}"
        if tail:
            reason += f": {tail[-1]}"
        return JobError(reason, "\n".join(tail))


# ------------------------------------------------------------------ the output

def publish(produced: Path, output_dir: Path, name: str) -> Path:
    """Move the finished output into the output folder under its final name in one
    atomic step: readers of the folder never see a partial file. Across file systems
    it is copied to a hidden partial name there first, then renamed."""
    final = output_dir / name
    try:
        os.replace(produced, final)
        return final
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system
            raise
    partial = output_dir / f".{name}{PARTIAL_SUFFIX}"
    try:
        shutil.copyfile(produced, partial)
        os.replace(partial, final)
    finally:
        remove(partial, produced)
    return final


def output_url(final: Path, output_dir: Path, base: str | None) -> str:
    if base:
        return base + "/" + quote(final.relative_to(output_dir).as_posix())
    return final.resolve().as_uri()
