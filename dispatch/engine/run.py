"""The job or task in hand: why it was stopped if it was, the ffmpeg it runs, and what
the work needs from the engine (:class:`Host`), shared by whole jobs and tasks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dispatch.engine.capabilities import Capabilities
from dispatch.engine.config import EngineConfig
from dispatch.engine.transcode import FFmpeg, Interrupted

Follower = Callable[[float, dict[str, float]], None]


class JobRun:
    """The job in hand, and why it was stopped if it was."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job_id: str = job["job_id"]
        self.attempt: int | None = job.get("attempt")
        self.codec: str = job["target_codec"]
        self.source_url: str = job["source_url"]
        # Where the server's store takes the output (absent on servers without one).
        self.output_upload: str | None = job.get("output_upload")
        # A part of a chunked job (issue 23), None for a whole job.
        self.task: dict[str, Any] | None = job.get("task")
        self.stop_reason: str | None = None  # "cancelled", "lost" or "shutdown"
        self.ffmpeg: FFmpeg | None = None
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            ffmpeg = self.ffmpeg
        if ffmpeg is not None:
            ffmpeg.stop()

    def attach(self, ffmpeg: FFmpeg) -> None:
        with self._lock:
            self.ffmpeg = ffmpeg
            stopped = self.stop_reason is not None
        if stopped:
            ffmpeg.stop()

    def stamp(self) -> dict[str, Any]:
        return {} if self.attempt is None else {"attempt": self.attempt}

    def encode(self, command: list[str], produced: Path, on_progress: Follower) -> FFmpeg:
        """Run ffmpeg (stoppable through :meth:`stop`) until it has written
        ``produced``. Interrupted when stopped, JobError when ffmpeg failed."""
        if self.stopped:
            raise Interrupted()
        ffmpeg = FFmpeg(command)
        self.attach(ffmpeg)
        status = ffmpeg.follow(on_progress)
        if self.stopped:
            raise Interrupted()
        if status != 0 or not produced.is_file() or produced.stat().st_size == 0:
            raise ffmpeg.failure(status)
        return ffmpeg

    def check(self, command: list[str]) -> list[str]:
        """Run a checking ffmpeg that writes no file (a decode to ``-f null``),
        stoppable like :meth:`encode`; the lines it printed (its last
        ``STDERR_LINES``), with its exit status when that is not 0."""
        if self.stopped:
            raise Interrupted()
        ffmpeg = FFmpeg(command)
        self.attach(ffmpeg)
        status = ffmpeg.follow(lambda seconds, figures: None)
        if self.stopped:
            raise Interrupted()
        lines = list(ffmpeg.stderr_tail)
        return lines + [f"ffmpeg exit status {status}"] if status != 0 else lines


class Host(Protocol):
    """What a job's work uses of the engine: its settings and codecs, and the reports
    (progress, and the output's delivery) that the loop owns."""

    config: EngineConfig
    capabilities: Capabilities

    def progress(self, run: JobRun, percent: float,
                 figures: dict[str, float] | None = None) -> None: ...

    def follower(self, run: JobRun, duration: float | None) -> Follower: ...

    def deliver(self, run: JobRun, produced: Path,
                extension: str) -> tuple[dict[str, Any], Path | None]: ...
