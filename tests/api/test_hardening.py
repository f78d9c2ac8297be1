"""Hardening (issue #7): bounded input, refused non-finite numbers, safe ids, safe
headers, and error bodies that never show internals.

Every string and list a request schema accepts has a length bound; bodies have a
nesting bound (16) and a size bound (1 MiB); ``NaN`` and ``Infinity`` are refused; ids
are restricted to safe characters; API responses carry ``X-Content-Type-Options:
nosniff`` and ``Cache-Control: no-store``; no error body holds a stack trace, a path, a
key or a setting's value.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import Schema, fields, validate
from werkzeug.test import TestResponse

from dispatch.app import MAX_BODY
from dispatch.config.settings import Settings
from dispatch.http.auth import KeyRing
from dispatch.http.common import MAX_DEPTH
from dispatch.storage.journal import FileIO, JournalStore
from tests.conftest import API_KEY, JOB
from tests.support.server import Server

CLIENT_KEY = "hardening-client-key-0123456789"
HEADERS = {"X-API-Key": API_KEY}


def assert_error(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """The contract's error shape with this status (and code)."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) <= {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


# ------------------------------------------------------------ non-finite numbers

NON_FINITE = ["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e999"]
NUMBER_SLOTS = {
    "job_size": ("/jobs/", '{"source_url": "http://e/x", "target_codec": "h264", '
                           '"job_size": %s}'),
    "storage_capacity_gb": ("/engines/heartbeat", '{"engine_id": "e1", '
                                                  '"storage_capacity_gb": %s}'),
    "telemetry": ("/engines/heartbeat", '{"engine_id": "e1", "cpu_temperature": %s}'),
    "benchmark_time": ("/engines/benchmark_result", '{"engine_id": "e1", '
                                                    '"benchmark_time": %s}'),
    "progress": ("/jobs/1_1/progress", '{"progress": %s}'),
}


@pytest.mark.parametrize("content_type", ["application/json",
                                          "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("slot", list(NUMBER_SLOTS))
def test_nan_and_infinity_literals_are_400(client: FlaskClient, slot: str, literal: str,
                                           content_type: str) -> None:
    """``NaN``, ``Infinity`` and numbers that overflow to infinity are not JSON numbers
    the server takes, wherever they stand (even in ignored telemetry): 400."""
    path, template = NUMBER_SLOTS[slot]
    response = client.post(path, data=template % literal, content_type=content_type,
                           headers=HEADERS)
    assert_error(response, 400)


@pytest.mark.parametrize("text", ['"NaN"', '"Infinity"', '"1e400"', "true", "null"])
def test_number_fields_refuse_strings_booleans_and_null(client: FlaskClient,
                                                        text: str) -> None:
    """A number given as a string (``"NaN"``), a boolean or null: 400 naming the field."""
    response = client.post("/jobs/", data=NUMBER_SLOTS["job_size"][1] % text,
                           headers=HEADERS)
    assert "job_size" in assert_error(response, 400, "validation_error")["details"]


HUGE = [2**63, 2**64, 2**70, -(2**70), 10**30]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("name", ["offset", "limit"])
def test_huge_integers_in_the_query_never_give_a_5xx(client: FlaskClient, name: str,
                                                     value: int) -> None:
    """Query integers of 64 bits and more: refused (400), or answered with the value
    echoed back exactly; never a 5xx (an answer cannot carry an integer beyond 64 bits)."""
    response = client.get(f"/jobs/?{name}={value}", headers=HEADERS)
    if response.status_code == 200:
        assert response.get_json()[name] == value
    else:
        assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("field", ["max_retries", "priority", "job_size", "attempt"])
def test_huge_numbers_in_bodies_never_give_a_5xx(client: FlaskClient, submit: Any,
                                                 heartbeat: Any, field: str,
                                                 value: int) -> None:
    """Numbers beyond 64 bits in a body are refused or handled, never a 5xx; the job
    they concern is unchanged when refused."""
    if field == "attempt":
        heartbeat("e1")
        job = submit()
        assert client.post("/assign_job/", json={"engine_id": "e1"},
                           headers=HEADERS).status_code == 200
        response = client.post(f"/jobs/{job['job_id']}/progress",
                               data=f'{{"progress": 5, "attempt": {value}}}', headers=HEADERS)
        assert response.status_code in (400, 409), response.get_json()
        assert client.get(f"/jobs/{job['job_id']}", headers=HEADERS).get_json()["progress"] is None
        return
    body = orjson.dumps(JOB).decode()[:-1] + f', "{field}": {value}}}'
    response = client.post("/jobs/", data=body, headers=HEADERS)
    assert response.status_code in (201, 400), response.get_json()
    if response.status_code == 400:
        assert field in assert_error(response, 400, "validation_error")["details"]


# ------------------------------------------------------------ nesting and size

def _nested_heartbeat(depth: int, kind: str = "list") -> str:
    """A heartbeat whose ignored telemetry makes the body ``depth`` levels deep (the
    body object itself is level 1)."""
    inner = "1"
    for _ in range(depth - 2):
        inner = f"[{inner}]" if kind == "list" else f'{{"a": {inner}}}'
    return f'{{"engine_id": "e1", "telemetry": {inner}}}'


@pytest.mark.parametrize("kind", ["list", "object"])
def test_nesting_up_to_16_is_taken_deeper_is_400(client: FlaskClient, kind: str) -> None:
    """Depth 16 is accepted; 17 is 400 bad_request; so is 100 000 (no recursion
    error, no 500)."""
    ok = client.post("/engines/heartbeat", data=_nested_heartbeat(MAX_DEPTH, kind),
                     headers=HEADERS)
    assert ok.status_code == 200, ok.get_json()
    for depth in (MAX_DEPTH + 1, 100_000):
        response = client.post("/engines/heartbeat", data=_nested_heartbeat(depth, kind),
                               headers=HEADERS)
        assert_error(response, 400, "bad_request")
    assert client.get("/engines/", headers=HEADERS).get_json()["engines"][0]["engine_id"] == "e1"


BODY_PATHS = ["/jobs/", "/jobs/batch", "/engines/heartbeat", "/engines/benchmark_result",
              "/assign_job/", "/jobs/1_1/progress", "/jobs/1_1/complete", "/jobs/1_1/fail"]


def _padded(body: dict[str, Any], size: int) -> bytes:
    """Valid JSON of exactly ``size`` bytes: the object, then spaces."""
    data = orjson.dumps(body)
    return data + b" " * (size - len(data))


@pytest.mark.parametrize("path", BODY_PATHS)
def test_bodies_over_1_mib_are_413(client: FlaskClient, path: str) -> None:
    """One byte over 1 MiB (valid JSON padded with spaces): 413 payload_too_large."""
    response = client.post(path, data=_padded({"engine_id": "e1"}, MAX_BODY + 1),
                           headers=HEADERS)
    assert_error(response, 413, "payload_too_large")


def test_body_of_exactly_1_mib_is_read(client: FlaskClient) -> None:
    """The limit is inclusive: a 1 MiB heartbeat is taken."""
    response = client.post("/engines/heartbeat",
                           data=_padded({"engine_id": "e1"}, MAX_BODY), headers=HEADERS)
    assert response.status_code == 200, response.get_json()


def _raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` and read the answer. A server that refuses a body may answer
    and close before the client has sent it all (as an HTTP client must expect), so
    the sending side stops quietly when the server has closed, and whatever answer
    arrived is returned."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=_send_until_closed, args=(sock, request))
        sender.start()
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            if not chunks:
                raise
        sender.join()
    return b"".join(chunks)


def _send_until_closed(sock: socket.socket, request: bytes) -> None:
    try:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


@pytest.mark.e2e
def test_chunked_body_over_1_mib_is_413_on_a_real_server(tmp_path: Path) -> None:
    """Without Content-Length (chunked transfer, as streaming clients send), a body
    over 1 MiB is still 413, not cut at 1 MiB and read: here the first MiB alone is a
    valid submission."""
    server = Server(tmp_path, API_KEY, "--state-file", str(tmp_path / "state.json"))
    try:
        server.start()
        body = _padded(JOB, 2 * MAX_BODY)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                          for part in (body[i:i + 65536] for i in range(0, len(body), 65536)))
        answer = _raw_http(server.port, (
            f"POST /jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode() + chunks + b"0\r\n\r\n")
        status_line = answer.split(b"\r\n", 1)[0]
        assert b" 413 " in status_line, answer[:300]
        assert server.request("GET", "/jobs/").json()["total"] == 0
        assert server.request("GET", "/health").status_code == 200
    finally:
        server.stop()


# ------------------------------------------------------------ ids

UNSAFE_IDS = ["", " ", "a b", "a/b", "../etc/passwd", "a\\b", "a\nb", "a\rb", "a\x00b",
              "a\tb", "é", "engine-😀", "x" * 129, "<script>", "a;b", "a%2Fb", "a?b", "a#b",
              "a'b", 'a"b', "a,b", "a@b", "*"]
SAFE_IDS = ["e", "x" * 128, "engine-01.rack_2:gpu0", "A.b_C-d:9"]
ENGINE_ID_SLOTS = {
    "heartbeat": ("/engines/heartbeat", {}),
    "assign": ("/assign_job/", {}),
    "benchmark": ("/engines/benchmark_result", {"benchmark_time": 1.0}),
    "progress": ("/jobs/1_1/progress", {"progress": 1}),
    "complete": ("/jobs/1_1/complete", {"output_url": "http://e/o"}),
    "fail": ("/jobs/1_1/fail", {"error_message": "x"}),
}


@pytest.mark.parametrize("engine_id", UNSAFE_IDS, ids=[repr(i)[:20] for i in UNSAFE_IDS])
@pytest.mark.parametrize("slot", list(ENGINE_ID_SLOTS))
def test_unsafe_engine_ids_are_400(client: FlaskClient, slot: str, engine_id: str) -> None:
    """An engine id outside 1-128 letters, digits and ``._:-``: 400 naming engine_id,
    and no engine is registered."""
    path, body = ENGINE_ID_SLOTS[slot]
    response = client.post(path, json={**body, "engine_id": engine_id}, headers=HEADERS)
    assert "engine_id" in assert_error(response, 400, "validation_error")["details"]
    assert client.get("/engines/", headers=HEADERS).get_json()["engines"] == []


@pytest.mark.parametrize("engine_id", SAFE_IDS)
def test_safe_engine_ids_are_taken(client: FlaskClient, engine_id: str) -> None:
    """Letters, digits and ``._:-`` up to 128 characters register, and read back by
    path."""
    response = client.post("/engines/heartbeat", json={"engine_id": engine_id},
                           headers=HEADERS)
    assert response.status_code == 200
    read = client.get(f"/engines/{quote(engine_id, safe='')}", headers=HEADERS)
    assert read.get_json()["engine_id"] == engine_id


ODD_IDS = ["..", ".", "%2e%2e", "a%00b", "x%0D%0Ay", "%F0%9F%98%80", "%27%20OR%201=1--",
           "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "%ff%fe", "a" * 2000, "%25", "1_1;rm -rf",
           "nul", "1_1%20", "-1", "99999999999999999999999999_0", "%C0%AF", "a%5Cb", "%E2%80%AE"]
ID_PATHS = [("GET", "/jobs/{}"), ("DELETE", "/jobs/{}"), ("GET", "/jobs/{}/events"),
            ("POST", "/jobs/{}/retry"), ("POST", "/jobs/{}/progress"),
            ("GET", "/engines/{}"), ("DELETE", "/engines/{}"), ("POST", "/engines/{}/drain")]


@pytest.mark.parametrize("odd", ODD_IDS, ids=[i[:24] for i in ODD_IDS])
@pytest.mark.parametrize(("method", "template"), ID_PATHS,
                         ids=[f"{m} {t}" for m, t in ID_PATHS])
def test_unknown_ids_with_odd_characters_are_404(client: FlaskClient, submit: Any,
                                                 method: str, template: str,
                                                 odd: str) -> None:
    """An id that names nothing, whatever its characters (traversal, NUL, CR/LF,
    invalid UTF-8, markup, SQL): 404 not_found in the error shape, never a 5xx."""
    submit()
    body = {"progress": 1} if template.endswith("progress") else None
    response = client.open(template.format(odd), method=method, json=body, headers=HEADERS)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/jobs/x%0D%0A2024-01-01%20INFO%20dispatch.access%20forged",
                                  "/jobs/x%00y", "/nope%0Aforged", "/jobs/x%1B[31mred"])
def test_ids_in_the_path_cannot_forge_log_lines(app: Flask, path: str) -> None:
    """The access log line of a request whose path holds CR, LF, NUL or ESC is still one
    line of printable text (anyone, even without a key, chooses the path)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("dispatch.access")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for headers in (HEADERS, {}):
            assert app.test_client().get(path, headers=headers).status_code in (401, 404)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 2
    for line in lines:
        assert line.isprintable(), repr(line)


# ------------------------------------------------------------ schemas

def _request_schemas(app: Flask) -> dict[str, Schema]:
    """Every schema a view reads its arguments (body, query, headers) with."""
    found = {}
    for name, view in app.view_functions.items():
        for parameter in getattr(view, "_apidoc", {}).get("arguments", {}).get("parameters", []):
            schema = parameter["schema"]
            schema = schema() if isinstance(schema, type) else schema
            found[f"{name}:{type(schema).__name__}"] = schema
    return found


def _walk(schema: Schema, where: str) -> Iterator[tuple[str, fields.Field]]:
    for name, field in schema.fields.items():
        yield from _walk_field(field, f"{where}.{name}")


def _walk_field(field: fields.Field, where: str) -> Iterator[tuple[str, fields.Field]]:
    yield where, field
    if isinstance(field, fields.List):
        yield from _walk_field(field.inner, f"{where}[]")
    elif isinstance(field, fields.Nested):
        yield from _walk(field.schema, where)
    elif isinstance(field, fields.Dict):
        for part, inner in (("keys", field.key_field), ("values", field.value_field)):
            if inner is not None:
                yield from _walk_field(inner, f"{where}{{{part}}}")


def _validators(field: fields.Field) -> list[Any]:
    return list(field.validators)


def _has_length_bound(field: fields.Field) -> bool:
    return any(isinstance(v, validate.Length) and (v.max is not None or v.equal is not None)
               for v in _validators(field))


def test_request_schemas_are_found(app: Flask) -> None:
    """The introspection below sees the request schemas (so it cannot pass vacuously)."""
    names = {type(schema).__name__ for schema in _request_schemas(app).values()}
    assert {"JobSubmitSchema", "JobListQuerySchema", "ProgressSchema", "CompleteSchema",
            "FailSchema", "HeartbeatSchema", "BenchmarkSchema", "AssignSchema"} <= names


def test_every_request_string_has_a_bound(app: Flask) -> None:
    """Every string field of every request schema (nested and list items included) has
    a Length with a maximum, a Regexp or a OneOf."""
    unbounded = [
        where
        for key, schema in _request_schemas(app).items()
        for where, field in _walk(schema, key)
        if isinstance(field, fields.String) and not (
            _has_length_bound(field)
            or any(isinstance(v, (validate.Regexp, validate.OneOf)) for v in _validators(field))
        )
    ]
    assert unbounded == []


def test_every_request_list_and_dict_has_a_length_bound(app: Flask) -> None:
    """Every list (and mapping) field of every request schema has a Length maximum."""
    unbounded = [
        where
        for key, schema in _request_schemas(app).items()
        for where, field in _walk(schema, key)
        if isinstance(field, (fields.List, fields.Dict)) and not _has_length_bound(field)
    ]
    assert unbounded == []


def test_every_request_number_is_finite_and_no_field_is_untyped(app: Flask) -> None:
    """Every float field refuses NaN and Infinity by itself (query strings and values
    that do not pass through the JSON parser too), and no request field is the untyped
    ``Raw``/``Field``, which would take anything of any size."""
    problems = []
    for key, schema in _request_schemas(app).items():
        for where, field in _walk(schema, key):
            if isinstance(field, fields.Float) and field.allow_nan:
                problems.append(f"{where}: allows NaN")
            if type(field) in (fields.Raw, fields.Field):
                problems.append(f"{where}: untyped")
            if isinstance(field, fields.Float):
                for text in ("nan", "inf", "-Infinity"):
                    try:
                        field.deserialize(text)
                    except Exception:
                        continue
                    problems.append(f"{where}: takes {text!r}")
    assert problems == []


# ------------------------------------------------------------ provoking every path

class FailingIO(FileIO):
    """A disk that is full while ``broken`` is set; the error names the file, as
    ``str(OSError)`` does, so a careless message would leak the path."""

    def __init__(self, path: str) -> None:
        self.broken = False
        self.path = path

    def write(self, fd: int, data: bytes) -> int:
        if self.broken:
            raise OSError(28, "No space left on device", self.path)
        return super().write(fd, data)

    def sync(self, fd: int) -> None:
        if self.broken:
            raise OSError(5, "Input/output error", self.path)
        super().sync(fd)


@dataclass
class World:
    app: Flask
    client: FlaskClient
    settings: Settings
    io: FailingIO
    monkeypatch: pytest.MonkeyPatch

    def submit(self) -> str:
        response = self.client.post("/jobs/", json=JOB, headers=HEADERS)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["job_id"]

    @property
    def service(self) -> Any:
        return self.app.extensions["dispatch"]


@pytest.fixture
def world(make_settings: Callable[..., Settings], make_app: Callable[..., Flask],
          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"client {CLIENT_KEY}\n", encoding="utf-8")
    settings = make_settings(job_queue_max_size=1, keys_file=str(keys),
                             log_file=str(tmp_path / "dispatch.log"))
    io = FailingIO(settings.state_file + ".wal")
    app = make_app(settings, JournalStore(settings.state_file, io=io))
    return World(app, app.test_client(), settings, io, monkeypatch)


def _leak(world: World, path: str) -> TestResponse:
    """A bug: the service raises with a path, the key and a setting in its message."""
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"cannot open /etc/secret/{API_KEY} under {world.settings.state_file}")

    for name in ("stats", "get_job"):
        world.monkeypatch.setattr(world.service.queries, name, boom)
    return world.client.get(path, headers=HEADERS)


def _auth_bug(world: World) -> TestResponse:
    def boom(self: KeyRing, presented: str | None) -> Any:
        raise OSError(13, "Permission denied", world.settings.keys_file)

    world.monkeypatch.setattr(KeyRing, "identify", boom)
    return world.client.get("/jobs/", headers=HEADERS)


def _disk_full(world: World, path: str = "/jobs/") -> TestResponse:
    world.io.broken = True
    response = world.client.post("/jobs/", json=JOB, headers=HEADERS)
    return response if path == "/jobs/" else world.client.get(path)


def _queue_full(world: World) -> TestResponse:
    world.submit()
    return world.client.post("/jobs/", json=JOB, headers=HEADERS)


def _conflict(world: World) -> TestResponse:
    return world.client.post(f"/jobs/{world.submit()}/retry", headers=HEADERS)


def _assign_nothing(world: World) -> TestResponse:
    world.client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=HEADERS)
    return world.client.post("/assign_job/", json={"engine_id": "e1"}, headers=HEADERS)


# name -> (status, error code or None, how to get it)
PATHS: dict[str, tuple[int, str | None, Callable[[World], TestResponse]]] = {
    "200 list": (200, None, lambda w: w.client.get("/jobs/", headers=HEADERS)),
    "201 submit": (201, None, lambda w: w.client.post("/jobs/", json=JOB, headers=HEADERS)),
    "204 assign": (204, None, _assign_nothing),
    "200 health": (200, None, lambda w: w.client.get("/health")),
    "200 metrics": (200, None, lambda w: w.client.get("/metrics")),
    "200 openapi": (200, None, lambda w: w.client.get("/openapi.json")),
    "400 validation": (400, "validation_error", lambda w: w.client.post(
        "/jobs/", json={"source_url": "/etc/passwd", "job_size": -1, "max_retires": 2},
        headers=HEADERS)),
    "400 bad json": (400, "bad_request", lambda w: w.client.post(
        "/jobs/", data=b'{"source_url": "http://e/x", \xff', headers=HEADERS)),
    "400 not an object": (400, "bad_request", lambda w: w.client.post(
        "/jobs/", data="[1, 2]", headers=HEADERS)),
    "400 too deep": (400, "bad_request", lambda w: w.client.post(
        "/engines/heartbeat", data=_nested_heartbeat(MAX_DEPTH + 1), headers=HEADERS)),
    "400 very deep": (400, "bad_request", lambda w: w.client.post(
        "/engines/heartbeat", data=_nested_heartbeat(200_000), headers=HEADERS)),
    "400 nan": (400, "bad_request", lambda w: w.client.post(
        "/jobs/", data=NUMBER_SLOTS["job_size"][1] % "NaN", headers=HEADERS)),
    "400 unsafe id": (400, "validation_error", lambda w: w.client.post(
        "/engines/heartbeat", json={"engine_id": "../../etc/passwd"}, headers=HEADERS)),
    "400 query": (400, "validation_error", lambda w: w.client.get(
        "/jobs/?status=/etc&limit=0&offset=-1&debug=1", headers=HEADERS)),
    "400 huge offset": (400, "validation_error", lambda w: w.client.get(
        f"/jobs/?offset={2**64}", headers=HEADERS)),
    "400 idempotency key": (400, None, lambda w: w.client.post(
        "/jobs/", json=JOB, headers={**HEADERS, "Idempotency-Key": "\x01/etc"})),
    "401 missing": (401, "unauthorized", lambda w: w.client.get("/jobs/")),
    "401 wrong": (401, "unauthorized", lambda w: w.client.get(
        "/jobs/", headers={"X-API-Key": API_KEY[:-1]})),
    "403": (403, "forbidden", lambda w: w.client.get(
        "/engines/", headers={"X-API-Key": CLIENT_KEY})),
    "404 path": (404, "not_found", lambda w: w.client.get("/etc/passwd", headers=HEADERS)),
    "404 job": (404, "not_found", lambda w: w.client.get("/jobs/..%2F..%2Fetc",
                                                          headers=HEADERS)),
    "404 engine": (404, "not_found", lambda w: w.client.get("/engines/nope",
                                                             headers=HEADERS)),
    "405": (405, "method_not_allowed", lambda w: w.client.put("/jobs/", headers=HEADERS)),
    "409": (409, "conflict", _conflict),
    "413": (413, "payload_too_large", lambda w: w.client.post(
        "/jobs/", data=_padded(JOB, MAX_BODY + 1), headers=HEADERS)),
    "503 queue_full": (503, "queue_full", _queue_full),
    "503 unavailable": (503, "unavailable", _disk_full),
    "503 unhealthy": (503, None, lambda w: _disk_full(w, "/health")),
    "500 service bug": (500, "internal_error", lambda w: _leak(w, "/stats")),
    "500 bug on read": (500, "internal_error", lambda w: _leak(w, "/jobs/1_1")),
    "500 auth bug": (500, "internal_error", _auth_bug),
}
ERRORS = [name for name, (status, _, _) in PATHS.items() if status >= 400]


def _secrets(world: World) -> list[str]:
    """What no error body may hold: traces, paths, keys, and every setting value long
    enough to be recognised."""
    values = ["Traceback", 'File "', "/work", "/tmp", "/etc", "site-packages", ".py",
              "RuntimeError", "OSError", "Errno", "secret", API_KEY, CLIENT_KEY,
              str(Path(world.settings.state_file).parent)]
    for field in dataclasses.fields(world.settings):
        value = getattr(world.settings, field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str) and len(item) >= 8:
                values.append(item)
    return values


@pytest.mark.parametrize("name", list(PATHS))
def test_api_responses_carry_nosniff_and_no_store(world: World, name: str) -> None:
    """Every answer, success or error, has ``X-Content-Type-Options: nosniff`` and
    ``Cache-Control: no-store``."""
    status, _, provoke = PATHS[name]
    response = provoke(world)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("Cache-Control") == "no-store"


@pytest.mark.parametrize("name", ERRORS)
def test_error_bodies_leak_no_internals(world: World, name: str) -> None:
    """Each error path answers in the contract's shape, and its body holds no stack
    trace, file path, exception text, key or setting value."""
    status, code, provoke = PATHS[name]
    response = provoke(world)
    if code is not None:
        assert_error(response, status, code)
    else:
        assert response.status_code == status
        assert response.mimetype == "application/json"
    text = response.get_data(as_text=True)
    leaked = [value for value in _secrets(world) if value.lower() in text.lower()]
    assert leaked == [], text[:500]
