"""One URL's bytes into an open file, SHA-256 hashed on the way, resumed with
``Range`` after a dropped connection.

The body is read with the standard library's ``http.client`` into reused buffers,
not through httpx: httpx hands a body over in 64 KiB ``bytes`` that its HTTP/1.1
parser has copied twice, which cost about 1 s of CPU per GiB here, as much as curl
spends on the whole download (docs/performance.md). Writing and hashing run on a
second thread (both release the GIL), so they overlap the reads. Proxies from the
environment are honoured, as httpx honours them for the API."""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import ssl
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import urljoin, urlsplit

from dispatch.client.api import UNREACHABLE, Failure, Refused, backoff

BLOCK = 1 << 20  # bytes per read into a buffer; a few buffers are in use at once
BUFFERS = 4
REDIRECTS = 5


class Sink:
    """Writes and hashes the blocks it is given, on a thread of its own."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, 0
        self.digest = hashlib.sha256()
        self.error: OSError | None = None
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(BUFFERS):
            self.free.put(bytearray(BLOCK))
        self._full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="download-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, count = item
            if self.error is None:
                view = memoryview(buffer)[:count]
                try:
                    while view:  # os.write may write less than asked
                        view = view[os.write(self.fd, view):]
                    self.digest.update(memoryview(buffer)[:count])
                except OSError as exc:  # a full disk: raised in the reading thread
                    self.error = exc
            self.free.put(buffer)
            self._full.task_done()

    def put(self, buffer: bytearray, count: int) -> None:
        """Hand over ``count`` bytes of ``buffer`` (it comes back through ``free``)."""
        if self.error is not None:
            raise self.error
        self.size += count
        self._full.put((buffer, count))

    def restart(self) -> None:
        """Start the file again from its first byte (a server that ignored Range)."""
        self._full.join()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size, self.digest = 0, hashlib.sha256()

    def abandon(self) -> None:
        """Stop the writer thread (after close, or after an error)."""
        if self._thread.is_alive():
            self._full.put(None)
            self._thread.join()

    def close(self) -> str:
        """Everything written (not yet fsynced); returns the SHA-256."""
        self._full.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.digest.hexdigest()


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` (through the environment's proxy for it, if any) and
    the request target to send on it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Failure(f"cannot download from {url}: not an http(s) URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and urllib.request.proxy_bypass(parts.hostname):
        proxy = None
    host, connect_port = parts.hostname, port
    if proxy:
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, connect_port = via.hostname or "", via.port or 80
        if not https:  # a plain proxy is sent the whole URL
            target = url
    connection: http.client.HTTPConnection
    if https:
        import certifi  # httpx's own CA bundle: the same certificates as the API

        context = ssl.create_default_context(cafile=certifi.where())
        connection = http.client.HTTPSConnection(host, connect_port, timeout=timeout,
                                                 context=context)
        if proxy:
            connection.set_tunnel(parts.hostname, port)
    else:
        connection = http.client.HTTPConnection(host, connect_port, timeout=timeout)
    return connection, target


def _refusal(response: http.client.HTTPResponse) -> Refused:
    text = response.read(4096).decode("utf-8", "replace").strip()
    return Refused(response.status, "http_error",
                   (text.splitlines() or [response.reason or "no message"])[0][:200])


def _open(url: str, offset: int, timeout: float
          ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The response to GET ``url`` from byte ``offset``, after redirects."""
    for _ in range(REDIRECTS + 1):
        connection, target = _connect(url, timeout)
        headers = {"Accept-Encoding": "identity", "User-Agent": "distconv"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        if response.status in (301, 302, 303, 307, 308) and response.getheader("location"):
            url = urljoin(url, response.getheader("location", ""))
            connection.close()
            continue
        if response.status >= 400:
            refused = _refusal(response)
            connection.close()
            raise refused
        return connection, response
    raise Failure(f"the download of {url} was redirected more than {REDIRECTS} times")


def fetch(url: str, fd: int, retries: int, bar: Any = None,
          timeout: float = 60.0) -> tuple[str, int]:
    """Stream ``url`` into the empty file ``fd``; returns (SHA-256, size). A dropped
    connection resumes with ``Range`` (or starts over when the server ignores it)."""
    sink, attempt = Sink(fd), 0
    try:
        while True:
            connection = None
            buffer, count = None, 0
            try:
                connection, response = _open(url, sink.size, timeout)
                if sink.size and response.status != 206:  # Range ignored
                    sink.restart()
                    if bar is not None:
                        bar.rewind(0)
                length = response.getheader("content-length")
                expected = None if length is None else sink.size + int(length)
                if bar is not None and expected is not None:
                    bar.total = expected
                while True:
                    buffer, count = sink.free.get(), 0
                    view = memoryview(buffer)
                    while count < BLOCK and (read := response.readinto(view[count:])):
                        count += read
                    sink.put(buffer, count)
                    buffer = None
                    if bar is not None:
                        bar.advance(count)
                    if count < BLOCK:
                        break
                if expected is not None and sink.size < expected:
                    # http.client ends a body cut short quietly.
                    raise http.client.IncompleteRead(b"", expected - sink.size)
                return sink.close(), sink.size
            except (http.client.HTTPException, OSError) as exc:
                if exc is sink.error:  # the disk, not the network
                    raise
                if buffer is not None:  # what arrived before the connection dropped
                    sink.put(buffer, count)
                    if bar is not None:
                        bar.advance(count)
                if attempt >= retries:
                    raise Failure(f"download from the store failed ({exc.__class__.__name__}"
                                  f": {exc}) after {attempt + 1} attempts",
                                  UNREACHABLE) from None
                time.sleep(backoff(attempt))
                attempt += 1
            finally:
                if connection is not None:
                    connection.close()
    finally:
        sink.abandon()
