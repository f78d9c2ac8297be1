"""A request body read into the caller's buffer, for the embedded store's part uploads.

Through ``wsgi.input`` (werkzeug's stream over gunicorn's ``Body``) every byte is
copied four or five times in buffers that grow and are sliced; a 1 GiB upload cost
about half a CPU second in these copies alone. Under gunicorn's HTTP/1.1 workers a
body of known length is read here straight from the connection into one reused
buffer instead (``recv_into``), never past the body's end; what gunicorn has
already read past the headers is taken through its own reader first. gunicorn's own count of what
is left of the body is kept up to date on every read, so whatever happens (an error
answered halfway, a client that stops) it reads or drops the rest exactly as if it
had read the body itself, and the connection stays usable. Anything else (another
server, the test client, a chunked body, HTTP/2) is read through the stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

ReadInto = Callable[[memoryview], int]


def _gunicorn_reader(environ: dict[str, Any], size: int) -> tuple[Any, Any, Any] | None:
    """(the Body, its LengthReader, the socket) when the body can be read from the
    socket safely: gunicorn's HTTP/1.1 body of exactly ``size`` bytes, untouched."""
    try:
        from gunicorn.http.body import Body, LengthReader
        from gunicorn.http.unreader import SocketUnreader
    except ImportError:
        return None
    body: Any = environ.get("wsgi.input")
    sock: Any = environ.get("gunicorn.socket")
    if type(body) is not Body or sock is None:
        return None
    reader: Any = getattr(body, "reader", None)
    if type(reader) is not LengthReader or reader.length != size \
            or type(getattr(reader, "unreader", None)) is not SocketUnreader \
            or body.buf.tell() != 0 or not hasattr(reader.unreader, "buf"):
        return None
    return body, reader, sock


def body_reader(environ: dict[str, Any], stream: IO[bytes], size: int) -> ReadInto:
    """A function filling a buffer with the next bytes of a ``size``-byte body (0 at
    its end)."""
    found = _gunicorn_reader(environ, size)
    if found is None:
        return _from_stream(stream)
    body, reader, sock = found
    unreader = reader.unreader

    def read_into(buffer: memoryview) -> int:
        wanted = min(len(buffer), reader.length)
        if wanted <= 0:
            return 0
        buffered = unreader.buf.seek(0, os.SEEK_END)  # (gunicorn replaces buf)
        if buffered:  # read past the headers already: through gunicorn, exactly
            data = reader.read(min(wanted, buffered))
            buffer[:len(data)] = data
            return len(data)
        try:
            count = int(sock.recv_into(buffer[:wanted]))
        except Exception:
            body.failed = True  # where the next request starts is unknown now
            raise
        reader.length -= count
        return count

    return read_into


def _from_stream(stream: IO[bytes]) -> ReadInto:
    def read_into(buffer: memoryview) -> int:
        data = stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
    return read_into
