"""Key rotation (issue #7) against a real server started with ``--keys-file``.

The operator's procedure: add the new key to the file, SIGUSR1, move the clients over,
remove the old key, SIGUSR1. Clients keep working throughout: no request whose key was
valid when it was sent fails, and no key ever reaches the server's log.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.server import Server

pytestmark = pytest.mark.e2e

ADMIN = "rotation-admin-key-0123456789"
KEY_A = "client-key-AAAA-0123456789"
KEY_B = "client-key-BBBB-0123456789"
ENGINE_KEY = "engine-key-EEEE-0123456789"
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 1.0}
DEADLINE = 15.0
THREADS = 4


def _write_keys(path: Path, *lines: str) -> None:
    """Replace the key file whole (write a temporary file, rename), as an operator's
    editor or config management does."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    os.replace(temporary, path)


def _status(server: Server, key: str) -> int:
    return server.request("GET", "/jobs/", params={"limit": 1},
                          headers={"X-API-Key": key}).status_code


def _poll(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> float:
    """Wait until ``condition()`` holds; return when it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


def _reload(server: Server) -> float:
    """SIGUSR1 to the gunicorn master, which passes it to the worker; returns when sent."""
    assert server.proc is not None
    sent = time.monotonic()
    os.kill(server.proc.pid, signal.SIGUSR1)
    return sent


@dataclass(frozen=True)
class Call:
    key: str
    sent: float
    done: float
    status: int | None  # None: no HTTP answer at all
    error: str = ""


class Clients:
    """Threads sending requests back to back with whichever key is current."""

    def __init__(self, server: Server, key: str) -> None:
        self.server = server
        self.key = key
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(THREADS)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, n: int) -> None:
        session = requests.Session()
        count = 0
        while not self._stop.is_set():
            key = self.key
            sent = time.monotonic()
            try:
                if count % 2:
                    response = session.post(self.server.url + "/jobs/", json=JOB, timeout=10,
                                            headers={"X-API-Key": key})
                else:
                    response = session.get(self.server.url + "/jobs/", timeout=10,
                                           params={"limit": 1}, headers={"X-API-Key": key})
                call = Call(key, sent, time.monotonic(), response.status_code)
            except requests.RequestException as exc:
                call = Call(key, sent, time.monotonic(), None, type(exc).__name__)
            with self._lock:
                self.calls.append(call)
            count += 1
        session.close()

    def count(self, key: str, after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for call in self.calls if call.key == key and call.sent > after)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    _write_keys(path, f"client {KEY_A}", f"engine {ENGINE_KEY} engine-1")
    return path


@pytest.fixture
def server(tmp_path: Path, keys_file: Path) -> Iterator[Server]:
    server = Server(tmp_path, ADMIN, "--keys-file", str(keys_file), "--state-file",
                    str(tmp_path / "server_state.json"), "--queue-size", "100000",
                    "--log-level", "DEBUG")
    server.start()
    yield server
    server.stop()


def _assert_no_key_in_log(server: Server) -> None:
    log = server.output()
    for key in (ADMIN, KEY_A, KEY_B, ENGINE_KEY):
        assert key not in log, f"a key reached the server log: {key[:8]}..."


def test_rotation_with_requests_in_flight(server: Server, keys_file: Path) -> None:
    """Add B, signal, move the clients to B, remove A, signal: while threads send
    requests back to back, nothing fails that had a valid key when sent (no 5xx, no
    lost connection, no 401 for A before its removal was signalled, none for B once it
    was accepted), and A is refused in the end."""
    with Clients(server, KEY_A) as clients:
        _poll(lambda: clients.count(KEY_A) >= 20, "clients sending with A")

        _write_keys(keys_file, f"client {KEY_A}", f"client {KEY_B}",
                    f"engine {ENGINE_KEY} engine-1")
        _reload(server)
        b_accepted = _poll(lambda: _status(server, KEY_B) == 200, "B accepted after SIGUSR1")

        clients.key = KEY_B
        _poll(lambda: clients.count(KEY_B, after=b_accepted) >= 20, "clients sending with B")

        _write_keys(keys_file, f"client {KEY_B}", f"engine {ENGINE_KEY} engine-1")
        a_removal = _reload(server)
        a_refused = _poll(lambda: _status(server, KEY_A) == 401, "A refused after SIGUSR1")
        _poll(lambda: clients.count(KEY_B, after=a_refused) >= 20, "clients go on with B")

    calls = clients.calls
    assert [call for call in calls if call.status is None or call.status >= 500] == []
    a_calls = [call for call in calls if call.key == KEY_A]
    b_calls = [call for call in calls if call.key == KEY_B]
    assert a_calls and b_calls
    assert {call.status for call in a_calls if call.done < a_removal} <= {200, 201}
    assert {call.status for call in a_calls if call.sent > a_refused} <= {401}
    assert {call.status for call in b_calls} <= {200, 201}
    assert _status(server, KEY_A) == 401
    assert _status(server, KEY_B) == 200
    assert _status(server, ADMIN) == 200
    _assert_no_key_in_log(server)


def test_malformed_or_missing_key_file_on_sigusr1_keeps_the_old_keys(
    server: Server, keys_file: Path
) -> None:
    """A key file with a bad line, or no key file at all, at SIGUSR1: the server says
    so in its log and keeps the keys it had (A works, B does not); a good file at the
    next SIGUSR1 is taken. No key reaches the log."""
    reports = 0

    def reported() -> bool:
        return server.output().count("key file not reloaded") > reports

    _write_keys(keys_file, f"client {KEY_B}", "client short-key")
    _reload(server)
    _poll(reported, "the rejected key file reported in the log")
    reports += 1
    assert _status(server, KEY_A) == 200
    assert _status(server, KEY_B) == 401

    keys_file.unlink()
    _reload(server)
    _poll(reported, "the missing key file reported in the log")
    assert _status(server, KEY_A) == 200
    assert _status(server, KEY_B) == 401
    assert _status(server, ADMIN) == 200

    _write_keys(keys_file, f"client {KEY_B}")
    _reload(server)
    _poll(lambda: _status(server, KEY_B) == 200, "B accepted from the repaired file")
    assert _status(server, KEY_A) == 401
    assert server.request("GET", "/health").status_code == 200
    _assert_no_key_in_log(server)


def test_engine_key_binding_follows_the_reloaded_file(server: Server, keys_file: Path) -> None:
    """A reload can rebind an engine key: bound to engine-1 it may not act as engine-2;
    rebound to engine-2 by the file and SIGUSR1, it may, and no longer as engine-1."""
    def heartbeat(engine_id: str) -> int:
        return server.request("POST", "/engines/heartbeat", json={"engine_id": engine_id},
                              headers={"X-API-Key": ENGINE_KEY}).status_code

    assert heartbeat("engine-1") == 200
    assert heartbeat("engine-2") == 403
    _write_keys(keys_file, f"client {KEY_A}", f"engine {ENGINE_KEY} engine-2")
    _reload(server)
    _poll(lambda: heartbeat("engine-2") == 200, "the key rebound to engine-2")
    assert heartbeat("engine-1") == 403
    _assert_no_key_in_log(server)
