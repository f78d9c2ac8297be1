"""Issue #24 over HTTP, against a real ``dispatch-server``: wrong keys from one address
block it (429, ``Retry-After``, the error shape) and not the others; the block outlives
a key reload and lifts by itself; the dashboard's sign-in form is throttled the same
way; a flood from many addresses keeps the throttle's tables at their bound and the
server's memory flat; a short admin key is warned about at start.

Requests from a second loopback address (127.0.0.2) come through ``http.client``'s
``source_address``; many addresses through the trusted proxy header.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.support.helpers import metric_families, metric_value, poll
from tests.support.server import Server

pytestmark = pytest.mark.e2e

ADMIN = "throttle-admin-key-0123456789abcdef"
WRONG = "not-the-key-0123456789abcdef"
ELSEWHERE = "127.0.0.2"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


def call(server: Server, method: str, path: str, key: str | None = None,
         source: str = "127.0.0.1", headers: dict[str, str] | None = None,
         connection: http.client.HTTPConnection | None = None) -> Answer:
    """One request from ``source`` (a loopback address), on ``connection`` if given."""
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10,
                                                    source_address=(source, 0))
    sent = dict(headers or {})
    if key is not None:
        sent["X-API-Key"] = key
    try:
        conn.request(method, path, headers=sent)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        if own:
            conn.close()


def assert_too_many(answer: Answer, block_seconds: int) -> int:
    """429 in the error shape with a whole Retry-After; returns it."""
    assert answer.status == 429, answer.body[:300]
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] == "too_many_requests"
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    retry_after = int(answer.headers["retry-after"])
    assert 1 <= retry_after <= block_seconds
    return retry_after


def worker_pid(server: Server) -> int:
    assert server.proc is not None
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    (pid,) = children.split()
    return int(pid)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1))


def test_wrong_keys_block_one_address_until_the_block_lifts(tmp_path: Path) -> None:
    """20 wrong keys: then even the right key is 429 from that address, not from
    another; /health and /metrics answer; the (short) block lifts by itself."""
    block = 4
    server = Server(tmp_path, ADMIN, "--auth-block-seconds", str(block)).start()
    try:
        for _ in range(20):
            assert call(server, "GET", "/jobs/", WRONG).status == 401
        assert_too_many(call(server, "GET", "/jobs/", ADMIN), block)  # the right key too
        assert_too_many(call(server, "POST", "/jobs/", WRONG), block)
        assert call(server, "GET", "/health").status == 200
        assert call(server, "GET", "/metrics").status == 200
        assert call(server, "GET", "/jobs/", ADMIN, source=ELSEWHERE).status == 200

        listed = call(server, "GET", "/auth/blocks", ADMIN, source=ELSEWHERE).json()
        assert [(b["address"], b["failures"]) for b in listed["blocks"]] == [("127.0.0.1", 20)]

        poll(lambda: call(server, "GET", "/jobs/", ADMIN).status == 200, block + 10,
             "the right key accepted again once the block lifted")
        families = metric_families(call(server, "GET", "/metrics").body.decode())
        assert metric_value(families, "distconv_auth_failures_total") == 20
        assert metric_value(families, "distconv_auth_blocked_requests_total") >= 2

        output = server.output()
        assert "blocked 127.0.0.1 for 4s after 20 failed authentications" in output
        assert "block on 127.0.0.1 lifted" in output
        assert WRONG not in output and ADMIN not in output
        assert server.terminate() == 0
    finally:
        server.stop()


def _login_page(session: requests.Session, server: Server) -> str:
    page = session.get(server.url + "/ui/login", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    return token.group(1)


def test_dashboard_sign_in_form_is_throttled_the_same_way(tmp_path: Path) -> None:
    """20 wrong keys through the form block the address for the form and the API; a
    key reload keeps the block; an admin clears it from another address."""
    server = Server(tmp_path, ADMIN).start()
    try:
        session = requests.Session()
        token = _login_page(session, server)
        origin = {"Origin": server.url}

        def sign_in(key: str) -> requests.Response:
            return session.post(server.url + "/ui/login", data={"api_key": key,
                                "csrf_token": token}, headers=origin, timeout=10,
                                allow_redirects=False)

        for _ in range(20):
            assert sign_in(WRONG).status_code == 401
        refused = sign_in(ADMIN)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 300
        assert "Too many wrong keys were tried from your address" in refused.text
        assert_too_many(call(server, "GET", "/jobs/", ADMIN), 300)  # the API as well

        # A key reload (SIGUSR1) rebuilds the keys, not the blocks.
        os.kill(server.proc.pid, signal.SIGUSR1)  # type: ignore[union-attr]
        poll(lambda: "reloaded the API keys" in server.output(), 10, "the key reload")
        assert_too_many(call(server, "GET", "/jobs/", ADMIN), 300)
        assert sign_in(ADMIN).status_code == 429

        elsewhere = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10,
                                               source_address=(ELSEWHERE, 0))
        cleared = call(server, "DELETE", "/auth/blocks/127.0.0.1", ADMIN, connection=elsewhere)
        elsewhere.close()
        assert cleared.status == 204
        assert sign_in(ADMIN).status_code == 303
        assert "block on 127.0.0.1 cleared by admin key" in server.output()
        assert server.terminate() == 0
    finally:
        server.stop()


def test_a_flood_from_many_addresses_stays_within_the_bound(tmp_path: Path) -> None:
    """Through the trusted proxy header, wrong keys from ever new addresses: every
    other one sends two (and is blocked), the rest one (and is remembered). Both tables
    stay at their bound (seen in the metrics and in GET /auth/blocks) and the worker's
    resident memory stays flat."""
    bound = 200
    server = Server(tmp_path, ADMIN, "--trusted-proxies", "1", "--auth-failure-limit", "2",
                    "--auth-throttle-table-size", str(bound), "--log-level", "ERROR").start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

        def flood(first: int, count: int) -> None:
            for n in range(first, first + count):
                address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
                for _ in range(2 - n % 2):
                    answer = call(server, "GET", "/jobs/", WRONG, connection=conn,
                                  headers={"X-Forwarded-For": address})
                    assert answer.status == 401, answer.body

        def tables() -> tuple[float, float]:
            families = metric_families(call(server, "GET", "/metrics").body.decode())
            return (metric_value(families, "distconv_auth_tracked_addresses"),
                    metric_value(families, "distconv_auth_blocked_addresses"))

        flood(0, 4 * bound)  # the tables full, the worker's memory warmed up
        assert tables() == (bound, bound)
        pid = worker_pid(server)
        before = rss_kib(pid)
        flood(4 * bound, 24 * bound)
        after = rss_kib(pid)
        conn.close()
        assert tables() == (bound, bound)
        blocks = call(server, "GET", "/auth/blocks", ADMIN).json()["blocks"]
        assert len(blocks) == bound
        last = 28 * bound - 2  # the newest address that was blocked
        assert blocks[-1]["address"] == f"10.{last >> 16 & 255}.{last >> 8 & 255}.{last & 255}"
        print(f"worker RSS before the flood {before} KiB, after {after} KiB; "
              f"{len(blocks)} blocks held")
        assert after - before < 4 * 1024, (before, after)  # 7,200 more requests
        assert server.terminate() == 0
    finally:
        server.stop()


@pytest.mark.parametrize(("key", "warned"), [("abc", True), ("a" * 64, False)])
def test_a_short_admin_key_is_warned_about_at_start(tmp_path: Path, key: str,
                                                    warned: bool) -> None:
    server = Server(tmp_path, key).start()
    try:
        assert call(server, "GET", "/jobs/", key).status == 200  # it starts and serves
        output = server.output()
        assert ("the admin API key (api_key / DISTCONV_API_KEY) has 3 characters" in output) \
            is warned
        assert ("secrets.token_hex(32)" in output) is warned
        assert server.terminate() == 0
    finally:
        server.stop()
