"""Issue #13, item 5: defects found from outside, each with its regression test.

(The schemathesis run with every check is ``tests/api/test_fuzz.py``.)"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatch.config.settings import Settings, SettingsError, load_settings
from dispatch.storage.journal import FileIO, JournalStore
from tests.conftest import API_KEY, JOB
from tests.support.server import Server

AUTH = {"X-API-Key": API_KEY}
FIXED_ROUTES = ["/engines/heartbeat", "/engines/benchmark_result", "/jobs/batch"]


# ------------------------------------------------------------ Allow and engine ids


@pytest.mark.parametrize("path", FIXED_ROUTES)
@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH"])
def test_fixed_routes_allow_only_their_own_methods(client: FlaskClient, path: str,
                                                   method: str) -> None:
    """``GET /engines/benchmark_result`` used to look up an engine of that name; now
    every other method is a 405 whose Allow lists the route's own methods."""
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_fixed_route_names_are_not_engine_ids(client: FlaskClient) -> None:
    for name in ("heartbeat", "benchmark_result"):
        response = client.post("/engines/heartbeat", json={"engine_id": name}, headers=AUTH)
        assert response.status_code == 400
        assert "engine_id" in response.get_json()["error"]["details"]
        assert client.get(f"/engines/{name}/drain", headers=AUTH).status_code == 404
    assert client.get("/engines/", headers=AUTH).get_json() == {"engines": []}
    # Names that only start or end like them are ids as any other.
    for name in ("heartbeat-2", "my_benchmark_result"):
        assert client.post("/engines/heartbeat", json={"engine_id": name},
                           headers=AUTH).status_code == 200
        assert client.get(f"/engines/{name}", headers=AUTH).status_code == 200
    with pytest.raises(SettingsError, match="heartbeat"):
        load_settings([], {"DISTCONV_API_KEY": API_KEY,
                           "DISTCONV_ENGINE_KEYS": "k" * 24 + "@heartbeat"})


def test_an_engine_id_with_a_trailing_newline_is_refused(client: FlaskClient) -> None:
    response = client.post("/engines/heartbeat", json={"engine_id": "e1\n"}, headers=AUTH)
    assert response.status_code == 400


def test_unknown_query_parameters_are_refused(client: FlaskClient) -> None:
    response = client.get("/jobs/?limit=5&colour=blue", headers=AUTH)
    assert response.status_code == 400
    assert "colour" in response.get_json()["error"]["details"]
    assert client.get("/jobs/?limit=5&status=pending", headers=AUTH).status_code == 200


# -------------------------------------------- the OpenAPI document and enforcement

URLS = [
    "http://example.com/in.mp4", "HTTPS://Example.com:8443/a?b=c#d", "s3://bucket/key",
    "file:///srv/in.mp4", "FILE:/srv/in.mp4", "ftp://h", "http://a b/c", "http://a/b c",
    "http://a/b\n", "http://a/\u00a0", "http://a/\x1e", "no-scheme.mp4", "http://",
    "file:", "//host/path", " http://example.com/x", "http://example.com/\u00e9",
]
CALLBACKS = [
    "http://hooks.example.com/cb", "HTTPS://HOOKS.example.COM/cb?x=1",
    "https://hooks.example.com:8443/cb", "http://hooks.example.com:0080/",
    "http://hooks.example.com:99999/", "http://user:pw@hooks.example.com/",
    "http://evil.example.com/cb", "http://hooks.example.com.evil.com/",
    "ftp://hooks.example.com/", "http://hooks.example.com/a b", "http://hooks.example.com/\n",
    "http://127.0.0.1:9000/cb", "http://127.0.0.1:9001/cb", "http://127.0.0.1/cb",
]


def _schema(client: FlaskClient) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()["components"]["schemas"]["JobSubmit"]


def _accepted(client: FlaskClient, body: dict[str, Any]) -> bool:
    status = client.post("/jobs/", json=body, headers=AUTH).status_code
    assert status in (201, 400)
    return status == 201


@pytest.mark.parametrize("url", URLS)
def test_source_url_documented_as_enforced(client: FlaskClient, url: str) -> None:
    """The document's pattern (read as the fuzzer reads it) and the server agree on
    every URL."""
    pattern = _schema(client)["properties"]["source_url"]["pattern"]
    assert _accepted(client, {**JOB, "source_url": url}) == bool(re.fullmatch(pattern, url))


def test_callback_url_is_absent_from_the_document_and_refused_without_allowed_hosts(
        client: FlaskClient) -> None:
    schema = _schema(client)
    assert "callback_url" not in schema["properties"]
    assert schema["additionalProperties"] is False
    response = client.post("/jobs/", json={**JOB, "callback_url": "http://a/b"}, headers=AUTH)
    assert response.status_code == 400
    assert "webhook_allowed_hosts" in str(response.get_json()["error"]["details"])


def test_callback_url_documented_as_enforced(make_app: Callable[..., Flask],
                                             make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(webhook_allowed_hosts=("hooks.example.com", "127.0.0.1:9000"),
                             webhook_secret="s" * 32)
    client = make_app(settings).test_client()
    pattern = _schema(client)["properties"]["callback_url"]["pattern"]
    verdicts = {url: _accepted(client, {**JOB, "callback_url": url}) for url in CALLBACKS}
    assert verdicts == {url: bool(re.fullmatch(pattern, url)) for url in CALLBACKS}
    assert [url for url, ok in verdicts.items() if ok] == [
        "http://hooks.example.com/cb", "HTTPS://HOOKS.example.COM/cb?x=1",
        "https://hooks.example.com:8443/cb", "http://hooks.example.com:0080/",
        "http://127.0.0.1:9000/cb"]


# --------------------------------------------------- the state folder goes away


class VanishingFolder(FileIO):
    """Moves the state folder away just before the first fsync it is asked for: the
    change is written, then its file loses its name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.armed = False

    def sync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.folder.rename(self.folder.with_name("moved-away"))
        super().sync(fd)


def test_nothing_is_acknowledged_into_a_file_that_lost_its_name(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    settings = make_settings(state_file=str(folder / "server_state.json"))
    io = VanishingFolder(folder)
    client = make_app(settings, JournalStore(settings.state_file, io=io)).test_client()
    first = client.post("/jobs/", json=JOB, headers=AUTH)
    assert first.status_code == 201
    io.armed = True
    lost = client.post("/jobs/", json=JOB, headers=AUTH)
    assert lost.status_code == 503
    assert "removed" in lost.get_json()["error"]["message"]
    assert client.get("/jobs/", headers=AUTH).get_json()["total"] == 1
    health = client.get("/health")
    assert health.status_code == 503 and "state folder" in health.get_json()["reason"]
    # The folder comes back: the server takes changes again, from where it was.
    folder.with_name("moved-away").rename(folder)
    assert client.get("/health").status_code == 200
    assert client.post("/jobs/", json=JOB, headers=AUTH).status_code == 201
    assert client.get("/jobs/", headers=AUTH).get_json()["total"] == 2


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_state_folder_removed_or_replaced_under_a_running_server(
        tmp_path: Path, how: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    server = Server(tmp_path, API_KEY, "--state-file", str(folder / "server_state.json"))
    try:
        server.start()
        job = server.request("POST", "/jobs/", json=JOB)
        assert job.status_code == 201
        if how == "removed":
            shutil.rmtree(folder)
        else:
            folder.rename(tmp_path / "old-data")
            folder.mkdir()
            (folder / "server_state.json").write_text('{"jobs": {}, "engines": {}}')
        response = server.request("POST", "/jobs/", json=JOB)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable"
        health = server.request("GET", "/health")
        assert health.status_code == 503
        assert health.json()["reason"].startswith(f"the state folder or its journal was {how}")
        job_path = f"/jobs/{job.json()['job_id']}"
        assert server.request("DELETE", job_path).status_code == 503
        assert server.request("GET", job_path).json()["status"] == "pending"
        assert "Traceback" not in server.output()
    finally:
        server.stop()


# ------------------------------------------------------------ gunicorn's records


@pytest.mark.e2e
def test_gunicorn_records_go_through_the_server_format(tmp_path: Path) -> None:
    server = Server(tmp_path, API_KEY, "--state-file", str(tmp_path / "s.json"),
                    "--log-level", "INFO")
    bad = [b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 9000 + b"\r\n\r\n"]
    try:
        server.start()
        for payload in bad:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(payload)
                assert sock.recv(64).split(b" ")[1] in (b"400", b"414", b"431")
        assert server.terminate() == 0
    finally:
        server.stop()
    output = server.output()
    assert "Logging error" not in output and "Traceback" not in output
    lines = [line for line in output.splitlines() if "gunicorn.error" in line]
    assert len(lines) == len(bad), output
    for line in lines:
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING gunicorn\.error "
                        r"Invalid request from ip=127\.0\.0\.1: ", line), line


# --------------------------------------------------------------- the ready line


@pytest.mark.e2e
def test_dispatch_server_says_when_it_is_ready(tmp_path: Path) -> None:
    state = tmp_path / "server_state.json"
    state.write_bytes(orjson.dumps({
        "jobs": {f"job_{n}": {"id": f"job_{n}", "codec": "h264", "source_url": "http://a/b",
                              "created_at": 1771301536301 + n} for n in range(3)},
        "engines": {"old": {"engine_id": "old", "last_heartbeat": 1771301536301}},
    }))
    server = Server(tmp_path, API_KEY, "--state-file", str(state), "--log-level", "ERROR")
    try:
        server.start()  # returns once /health answers: the worker has printed the line
        output = server.output()
    finally:
        server.stop()
    # One line, even at log level ERROR; the C++ layout's jobs and engine counted.
    assert [line for line in output.splitlines() if "ready" in line] == [
        f"dispatch-server ready: serving {server.url}, state file {state}, "
        "3 jobs and 1 engines loaded"], output

