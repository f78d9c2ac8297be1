"""Sending a finished output to the server's store: the engine asks the server for
the upload (``POST /jobs/{id}/output_upload``), PUTs each part to its signed URL (no
store credentials on the engine), and reports ``complete`` with the upload, its size
and SHA-256. A part that fails (the store unreachable, a 5xx) is sent again with
backoff until it is stored or the job is stopped. Signed URLs are never logged."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests

from dispatch.engine.client import ServerClient, Stopped, backoff
from dispatch.engine.transcode import CHUNK, Interrupted, JobError

log = logging.getLogger("dispatch.engine")

PART_TIMEOUT = (10.0, 120.0)
CONTENT_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska"}


class _Slice:
    """``size`` bytes of an open file from ``offset``: a body requests streams (its
    ``len`` is the Content-Length) without reading the part into memory."""

    def __init__(self, handle: IO[bytes], offset: int, size: int) -> None:
        handle.seek(offset)
        self.handle = handle
        self.left = size
        self.size = size

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        amount = self.left if amount is None or amount < 0 else min(amount, self.left)
        data = self.handle.read(min(amount, CHUNK))
        self.left -= len(data)
        return data


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def upload_output(client: ServerClient, job_id: str, stamp: dict[str, Any], path: Path,
                  extension: str, stopped: Callable[[], bool],
                  wake: threading.Event) -> dict[str, Any]:
    """Upload ``path`` as the job's output; returns the ``complete`` report's body.
    JobError when the server or the store refuses it; Interrupted when stopped."""
    size = path.stat().st_size
    sha256 = sha256_of(path)
    try:
        answer = client.until_answered(
            "POST", f"/jobs/{job_id}/output_upload",
            {"engine_id": client.engine_id, **stamp, "size": size, "extension": extension,
             "content_type": CONTENT_TYPES.get(extension, "application/octet-stream")},
            wake, stopped)
    except Stopped:
        raise Interrupted() from None
    if answer.status != 201 or not isinstance(answer.body, dict):
        raise JobError(f"the server refused the output upload: {answer.message}")
    upload = answer.body
    done = []
    offset = 0
    with open(path, "rb") as handle:
        for part in upload["parts"]:
            etag = _put_part(handle, offset, part, job_id, stopped, wake)
            done.append({"part_number": part["part_number"], "etag": etag})
            offset += part["size"]
    log.info("job %s: output uploaded (%d bytes, %d parts, upload %s)", job_id, size,
             len(done), upload["upload_id"])
    return {"output_url": upload["source_url"], "upload_id": upload["upload_id"],
            "parts": done, "size": size, "sha256": sha256}


def _put_part(handle: IO[bytes], offset: int, part: dict[str, Any], job_id: str,
              stopped: Callable[[], bool], wake: threading.Event) -> str:
    attempt = 0
    number = part["part_number"]
    while True:
        if stopped():
            raise Interrupted()
        problem = ""
        try:
            response = requests.put(part["url"], data=_Slice(handle, offset, part["size"]),
                                    timeout=PART_TIMEOUT)
            if response.status_code < 300:
                if attempt:
                    log.info("job %s: part %d stored after %d retries", job_id, number,
                             attempt)
                return response.headers.get("ETag", "").strip('"')
            if response.status_code < 500:
                # The URL was refused (expired, or the upload is gone): not worth
                # retrying; the job fails and is tried again with a new upload.
                raise JobError(f"the store refused output part {number}: HTTP "
                               f"{response.status_code}")
            problem = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            problem = exc.__class__.__name__  # not str(exc): it holds the signed URL
        attempt += 1
        if attempt == 1:
            log.warning("job %s: output part %d not stored (%s); retrying", job_id, number,
                        problem)
        wake.wait(backoff(attempt))
