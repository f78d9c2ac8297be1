"""Issue #21 on the wire: a real ``dispatch-server`` reads a part's body straight from
the connection (``dispatch.http.body``). Parts sent one after the other on one
connection, each with a request pipelined right behind its body, are all answered
and stored whole; a body that stops short is a 400 and the part can be sent again."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.server import Server

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def head(method: str, url: str, length: int | None = None) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read from the connection's file."""
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline().strip()):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def test_parts_on_one_connection_with_a_request_pipelined_behind_each(
        server: Server) -> None:
    for size in (13 * MiB, 3000):  # read from the socket; already read with the headers
        data = os.urandom(size)
        upload = server.request("POST", "/uploads", json={"filename": "a.bin",
                                                          "size": size}).json()
        etags, offset = [], 0
        with socket.create_connection(("127.0.0.1", server.port)) as sock, \
                sock.makefile("rb") as reader:
            for part in upload["parts"]:
                body = data[offset:offset + part["size"]]
                sock.sendall(head("PUT", part["url"], len(body)) + body
                             + head("GET", server.url + "/health"))
                status, headers, text = answer(reader)
                assert status == 200, text
                etags.append({"part_number": part["part_number"],
                              "etag": headers["etag"].strip('"')})
                status, _, text = answer(reader)
                assert status == 200 and json.loads(text)["status"] == "healthy"
                offset += part["size"]
        done = server.request("POST", f"/uploads/{upload['upload_id']}/complete",
                              json={"parts": etags})
        assert done.status_code == 200, done.text
        assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_body_cut_short_is_refused_and_the_part_sent_again(server: Server) -> None:
    data = os.urandom(5 * MiB)
    upload = server.request("POST", "/uploads", json={"filename": "a.bin",
                                                      "size": len(data)}).json()
    url = upload["parts"][0]["url"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head("PUT", url, len(data)) + data[:MiB])
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as reader:
            status, _, text = answer(reader)
    assert status == 400
    assert json.loads(text)["error"]["message"] == \
        f"the part ended after {MiB} of {len(data)} bytes"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head("PUT", url, len(data)) + data)
        with sock.makefile("rb") as reader:
            status, headers, text = answer(reader)
    assert status == 200, text
    done = server.request("POST", f"/uploads/{upload['upload_id']}/complete", json={
        "parts": [{"part_number": 1, "etag": headers["etag"].strip('"')}]})
    assert done.status_code == 200, done.text
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
