"""Getting a job's output: from the server's ``GET /jobs/{id}/output`` (a redirect to
a signed URL) when it stores outputs, else from the job's ``output_url`` when it is
http(s). Written under a temporary name, checked (size, SHA-256 when the job gives
them), then renamed into place: a file at PATH is always whole."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from dispatch.client import render
from dispatch.client.api import Api, Failure, error_of, job_path
from dispatch.client.fetch import fetch

CHUNK = 1 << 20
# The engine's containers by codec family, for a file named after its source.
EXTENSIONS = {"h264": ".mp4", "avc": ".mp4", "hevc": ".mp4", "h265": ".mp4",
              "vp9": ".webm", "vp8": ".webm", "av1": ".mkv"}


def name_in(folder: Path, job: dict[str, Any], source: str | None) -> Path:
    """The output's name in ``folder``: the source's name with the output's extension."""
    output = urlsplit(job.get("output_url") or "").path
    extension = PurePosixPath(output).suffix or EXTENSIONS.get(
        job["target_codec"].lower(), ".mkv")
    origin = source or unquote(PurePosixPath(urlsplit(job["source_url"]).path).name)
    stem = PurePosixPath(origin).stem or job["job_id"]
    return folder / f"{stem}{extension}"


def destination(output: str, job: dict[str, Any], source: str | None) -> Path:
    path = Path(output)
    if path.is_dir() or output.endswith(os.sep):
        path.mkdir(parents=True, exist_ok=True)
        return name_in(path, job, source)
    return path


def locate(api: Api, job: dict[str, Any]) -> str:
    """Where the output can be fetched from (without the API key)."""
    if job["status"] != "completed":
        raise Failure(f"job {job['job_id']} is {job['status']}, not completed: "
                      "it has no output")
    url = job.get("output_url") or ""
    if not job.get("output"):
        if url.startswith(("http://", "https://")):
            return url
        if "output" in job:  # a server with a store, and this output kept elsewhere
            raise Failure(f"job {job['job_id']}'s output is not in the server's store: "
                          f"it is at {url or 'no URL'}, which this machine cannot fetch")
    answer = api.send("GET", job_path(job["job_id"]) + "/output", accept=(404, 409))
    if answer.status_code == 404:
        raise Failure(f"this server cannot hand out outputs (it has no "
                      f"GET /jobs/{{id}}/output); job {job['job_id']}'s output is at "
                      f"{url or 'no URL'}, which this machine cannot fetch")
    if answer.status_code == 409:
        raise error_of(answer)
    if "location" not in answer.headers:
        raise Failure(f"the server answered {answer.status_code} without a location "
                      "for the output")
    return urljoin(api.settings.server + "/", answer.headers["location"])


def download(api: Api, job: dict[str, Any], target: Path, quiet: bool) -> Path:
    """Fetch the output of completed ``job`` to ``target``; returns it."""
    url = locate(api, job)
    expected = job.get("output") or {}
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".part", delete=False)
    temporary = Path(handle.name)
    bar = None if quiet else ByteBar(target.name)
    try:
        with handle:
            try:
                digest, size = fetch(url, handle.fileno(), api.settings.retries, bar)
            finally:
                if bar is not None:
                    bar.close()
            os.fsync(handle.fileno())
        if expected.get("size") is not None and size != expected["size"]:
            raise Failure(f"the download of job {job['job_id']} has {size} bytes, the "
                          f"job's output {expected['size']}: nothing written to {target}")
        if expected.get("sha256") and digest != expected["sha256"]:
            raise Failure(f"the download of job {job['job_id']} has SHA-256 {digest}, "
                          f"the job's output {expected['sha256']}: nothing written to "
                          f"{target}")
        os.replace(temporary, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        temporary.unlink(missing_ok=True)
    return target


class ByteBar:
    """A bytes bar on a terminal (with bytes/s), a line at the end otherwise."""

    def __init__(self, label: str) -> None:
        self.label, self.done = label, 0
        self.total: int | None = None
        self.started = time.monotonic()
        self.progress: Any = None
        if render.is_terminal(sys.stderr):
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     TimeRemainingColumn(), console=render.console(True))
            self.progress.start()
            self.task = self.progress.add_task(label, total=None)

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress.update(self.task, total=self.total, advance=count)

    def note(self, message: str) -> None:
        """A line above the bar on a terminal; a plain line otherwise."""
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            render.say(message)

    def rewind(self, done: int) -> None:
        """Back to ``done`` bytes: what was sent since goes again."""
        self.done = done
        if self.progress is not None:
            self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        seconds = max(time.monotonic() - self.started, 1e-6)
        render.say(f"{self.label}: {self.done} bytes in {seconds:.1f} s "
                   f"({self.done / seconds / 1e6:.1f} MB/s)")
