"""A local file into the farm through ``POST /uploads`` (issue 21's API): the file's
SHA-256 first (a file the store already holds is not sent again), each part PUT to
its signed URL with a bytes/s bar, a part retried from its start after a network error
or a 5xx (a server restart between parts included), then ``complete``. Returns the
``source_url`` that ``POST /jobs/`` takes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from dispatch.client.api import UNREACHABLE, Api, Failure, backoff, error_of
from dispatch.client.transfer import CHUNK, ByteBar


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:  # read into one reused buffer
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _part(path: Path, offset: int, size: int, bar: ByteBar | None) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = size
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                raise Failure(f"{path} shrank while it was being uploaded")
            left -= len(chunk)
            if bar is not None:
                bar.advance(len(chunk))
            yield chunk


def upload(api: Api, path: Path, digest: str, quiet: bool) -> str:
    """Upload ``path`` (whose SHA-256 is ``digest``); returns its ``source_url``."""
    import httpx

    size = path.stat().st_size
    answer = api.send("POST", "/uploads", json={"filename": path.name, "size": size,
                                                "sha256": digest}, accept=(404, 405))
    if answer.status_code in (404, 405):
        raise Failure("this server does not take uploads (it has no POST /uploads): "
                      "put the file on a web server the engines can reach and submit "
                      "its http(s):// URL")
    body: dict[str, Any] = answer.json()
    parts = sorted(body.get("parts") or [], key=lambda part: part["part_number"])
    if not parts:  # the store holds this content already
        return str(body["source_url"])
    bar = None if quiet else ByteBar(path.name)
    if bar is not None:
        bar.total = size
    etags = []
    offset = 0
    try:
        with httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as http:
            for part in parts:
                label = f"{path.name}: part {part['part_number']} of {len(parts)}"
                etags.append({"part_number": part["part_number"],
                              "etag": _put(http, api, path, offset, part, bar, label)})
                offset += int(part["size"])
                if bar is not None and len(parts) > 1:
                    bar.note(f"{label} stored")
    finally:
        if bar is not None:
            bar.close()
    api.send("POST", f"/uploads/{quote(str(body['upload_id']), safe='')}/complete",
             json={"parts": etags})
    return str(body["source_url"])


def _put(http: Any, api: Api, path: Path, offset: int, part: dict[str, Any],
         bar: ByteBar | None, label: str) -> str:
    """PUT one part, again from its first byte after a failure; returns its ETag."""
    import httpx

    size = int(part["size"])
    # The embedded store's URLs may be the server's own paths.
    url = urljoin(api.settings.server + "/", str(part["url"]))
    attempt = 0
    while True:
        sent_before = bar.done if bar is not None else 0
        try:
            # An explicit Content-Length: stores refuse a chunked PUT to a signed URL.
            response = http.put(url, content=_part(path, offset, size, bar),
                                headers={"Content-Length": str(size)})
            if response.status_code < 500:
                if response.status_code >= 400:
                    raise error_of(response)
                return str(response.headers.get("etag", ""))
            problem = f"{response.status_code} from the store"
        except httpx.TransportError as exc:
            problem = f"{exc.__class__.__name__}: {exc}"
        if bar is not None:  # the part goes again from its start
            bar.rewind(sent_before)
        if attempt >= api.settings.retries:
            raise Failure(f"upload of {path.name} part {part['part_number']} failed "
                          f"({problem}) after {attempt + 1} attempts", UNREACHABLE)
        if bar is not None:  # a person sees why the bar stopped, and that it goes on
            bar.note(f"{label} failed ({problem}); sending it again in "
                     f"{backoff(attempt):g} s")
        time.sleep(backoff(attempt))
        attempt += 1
