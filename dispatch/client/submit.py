"""``distconv submit``: each source a job, sent with an ``Idempotency-Key`` made from
what identifies the submission (the file's content or the URL, and the options), so
the same command run again after a dropped connection finds the job it made."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dispatch.client import render
from dispatch.client.api import Api, Failure


@dataclass
class Source:
    given: str  # as typed
    name: str  # the file's name, for messages and for naming the output
    url: str | None = None  # http(s) source, or where an upload put the file
    path: Path | None = None  # a local file
    digest: str | None = None  # its SHA-256
    size: int | None = None  # bytes, when known


def read_sources(given: tuple[str, ...]) -> list[Source]:
    """Check every source before anything is sent (a typo fails the whole command)."""
    sources = []
    for text in given:
        # file:// passes as is too: a path every engine mounts (a shared disk).
        if text.startswith(("http://", "https://", "file://")):
            name = unquote(Path(urlsplit(text).path).name) or text
            sources.append(Source(text, name, url=text))
            continue
        path = Path(text)
        if not path.is_file():
            raise Failure(f"{text}: no such file (a source is a file, an http(s):// URL, "
                          "or a file:// URL every engine can read)", 2)
        sources.append(Source(text, path.name, path=path, size=path.stat().st_size))
    return sources


def url_size(url: str) -> int | None:
    """The source's size from a HEAD request, when its server says (job_size is what
    the scheduler uses to place large jobs; unknown is 0)."""
    import httpx

    try:
        answer = httpx.head(url, timeout=5.0, follow_redirects=True)
        return int(answer.headers["content-length"]) if answer.status_code == 200 else None
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def idempotency_key(source: Source, options: dict[str, Any]) -> str:
    """Same content (or URL) and same options: same key, so the same job."""
    identity = {"sha256": source.digest} if source.digest else {"url": source.url}
    text = json.dumps({"source": identity, **options}, sort_keys=True)
    return "distconv-" + hashlib.sha256(text.encode()).hexdigest()


def submit(api: Api, sources: list[Source], options: dict[str, Any],
           quiet: bool) -> list[dict[str, Any]]:
    """One job per source, in order; returns them as the server answered."""
    jobs = []
    for source in sources:
        if source.path is not None:
            from dispatch.client.upload import sha256_of, upload

            source.digest = sha256_of(source.path)
            source.url = upload(api, source.path, source.digest, quiet)
        elif source.size is None and not str(source.url).startswith("file://"):
            source.size = url_size(str(source.url))
        body = {"source_url": source.url,
                "job_size": round((source.size or 0) / 1e6, 3),
                **{key: value for key, value in options.items() if value is not None}}
        answer = api.send("POST", "/jobs/", json=body,
                          headers={"Idempotency-Key": idempotency_key(source, options)})
        job: dict[str, Any] = answer.json()
        jobs.append(job)
        if not quiet:
            again = " (submitted before: the same job)" if answer.status_code == 200 else ""
            render.say(f"{source.name}: job {job['job_id']}, {job['status']}{again}")
    return jobs
