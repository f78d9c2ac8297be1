"""Issue #24: wrong keys throttled per client address, in-process.

The throttle on its own with a clock the test moves (``dispatch.http.throttle``), then the
app: a blocked address gets ``429`` with ``Retry-After`` before its key is looked at,
other addresses and the endpoints that need no key are untouched, an admin lists and
clears blocks, the dashboard's sign-in is throttled the same way, the OpenAPI document
lists the answers, and the logs and metrics say what happened. Over HTTP against a
real server: tests/api/test_auth_throttle_e2e.py.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatch.config.settings import Settings, SettingsError, load_settings
from dispatch.http.throttle import Throttle
from tests.conftest import API_KEY
from tests.support.helpers import assert_error, epoch, metric_value, scrape

CLIENT_KEY = "client-key-0123456789abcdef"
WRONG = "wrong-key-0123456789abcdef"
GUESSER, OTHER = "198.51.100.7", "198.51.100.8"
ORIGIN = "http://localhost"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the throttle

def test_blocks_at_the_limit_within_the_window_and_lifts_after_the_block_time(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "dispatch.auth")
    clock = Clock()
    throttle = Throttle(limit=3, window=60, block_seconds=300, clock=clock)
    assert [throttle.failed(GUESSER) for _ in range(3)] == [False, False, True]
    assert throttle.retry_after(GUESSER) == 300
    assert throttle.retry_after(OTHER) is None
    clock.now += 299.5
    assert throttle.retry_after(GUESSER) == 1  # whole seconds, at least 1
    clock.now += 0.5
    assert throttle.retry_after(GUESSER) is None
    assert throttle.sizes() == (0, 0)
    assert throttle.failed(GUESSER) is False  # counting starts again
    # A block that lifts with no request since is logged when the tables are read.
    for _ in range(3):
        throttle.failed(OTHER)
    clock.now += 300
    assert throttle.sizes() == (1, 0)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        f"auth: blocked {GUESSER} for 300s after 3 failed authentications within 60s",
        f"auth: block on {GUESSER} lifted (it had 3 failed authentications)",
        f"auth: blocked {OTHER} for 300s after 3 failed authentications within 60s",
        f"auth: block on {OTHER} lifted (it had 3 failed authentications)"]


def test_failures_further_apart_than_the_window_do_not_block() -> None:
    clock = Clock()
    throttle = Throttle(limit=3, window=60, block_seconds=300, clock=clock)
    for _ in range(10):
        assert throttle.failed(GUESSER) is False
        assert throttle.failed(GUESSER) is False
        clock.now += 60
    assert throttle.retry_after(GUESSER) is None


def test_both_tables_are_bounded_and_drop_the_oldest_first() -> None:
    throttle = Throttle(limit=2, window=60, block_seconds=300, table_size=3, clock=Clock())
    for n in range(10):
        throttle.failed(f"192.0.2.{n}")
    assert throttle.sizes() == (3, 0)
    # The three newest are remembered: one more failure blocks them, not the oldest.
    assert throttle.failed("192.0.2.9") is True
    assert throttle.failed("192.0.2.0") is False
    for n in range(20, 30):
        throttle.failed(f"192.0.2.{n}")
        throttle.failed(f"192.0.2.{n}")
    assert throttle.sizes()[1] == 3
    assert [block.address for block in throttle.blocks()] == [
        "192.0.2.27", "192.0.2.28", "192.0.2.29"]


def test_clear_lifts_a_block_and_forgets_the_failures() -> None:
    throttle = Throttle(limit=2, window=60, block_seconds=300, clock=Clock())
    throttle.failed(GUESSER)
    throttle.failed(GUESSER)
    assert throttle.clear(GUESSER, "admin key x") is True
    assert throttle.retry_after(GUESSER) is None
    assert throttle.failed(GUESSER) is False
    assert throttle.clear(OTHER, "admin key x") is False


def test_limit_zero_never_blocks_but_still_counts() -> None:
    counted: list[int] = []
    throttle = Throttle(limit=0, on_failure=lambda: counted.append(1))
    assert not any(throttle.failed(GUESSER) for _ in range(100))
    assert throttle.retry_after(GUESSER) is None
    assert len(counted) == 100


# ------------------------------------------------------------------ the app

@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(client_keys=(CLIENT_KEY,), auth_failure_limit=3)


def _get(client: FlaskClient, path: str, key: str | None, address: str = GUESSER) -> Any:
    headers = {"X-API-Key": key} if key is not None else {}
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": address})


def _block(client: FlaskClient, address: str = GUESSER) -> None:
    for _ in range(3):
        assert _get(client, "/jobs/", WRONG, address).status_code == 401


def test_a_blocked_address_gets_429_without_its_key_being_checked(
        app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    _block(client)
    checked: list[str] = []
    ring = app.extensions["dispatch.keys"]
    real = ring.identify
    monkeypatch.setattr(ring, "identify", lambda key: checked.append(key) or real(key))

    for key in (API_KEY, WRONG, None):
        response = _get(client, "/jobs/", key)
        error = assert_error(response, 429, "too_many_requests")
        assert 1 <= int(response.headers["Retry-After"]) <= 300
        assert "try again" in error["message"]
    assert checked == []
    assert _get(client, "/jobs/", API_KEY, OTHER).status_code == 200  # another address
    assert checked == [API_KEY]
    for path in ("/health", "/metrics", "/openapi.json"):  # no key needed: untouched
        assert _get(client, path, None).status_code == 200, path


def test_a_missing_key_is_not_a_guess(client: FlaskClient) -> None:
    for _ in range(10):
        assert _get(client, "/jobs/", None).status_code == 401
    assert _get(client, "/jobs/", API_KEY).status_code == 200


def test_a_key_reload_keeps_the_blocks(app: Flask, client: FlaskClient) -> None:
    _block(client)
    app.extensions["dispatch.keys"].reload()
    assert _get(client, "/jobs/", API_KEY).status_code == 429


def test_an_admin_lists_and_clears_blocks(client: FlaskClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "dispatch.auth")
    assert _get(client, "/auth/blocks", API_KEY, OTHER).get_json() == {"blocks": []}
    before = time.time()
    _block(client)
    listed = _get(client, "/auth/blocks", API_KEY, OTHER)
    assert listed.status_code == 200
    (block,) = listed.get_json()["blocks"]
    assert block["address"] == GUESSER and block["failures"] == 3
    assert 299 <= block["retry_after"] <= 300
    assert before + 299 <= epoch(block["blocked_until"]) <= time.time() + 301
    assert_error(_get(client, "/auth/blocks", CLIENT_KEY, OTHER), 403, "forbidden")

    cleared = client.delete(f"/auth/blocks/{GUESSER}", headers={"X-API-Key": API_KEY},
                            environ_base={"REMOTE_ADDR": OTHER})
    assert cleared.status_code == 204 and cleared.data == b""
    assert _get(client, "/jobs/", API_KEY).status_code == 200
    again = client.delete(f"/auth/blocks/{GUESSER}", headers={"X-API-Key": API_KEY},
                          environ_base={"REMOTE_ADDR": OTHER})
    assert_error(again, 404, "not_found")

    lines = [record.getMessage() for record in caplog.records]
    assert any(re.search(rf"blocked {GUESSER} for 300s after 3 failed", line) for line in lines)
    assert any(re.search(rf"block on {GUESSER} cleared by admin key [0-9a-f]{{12}} \(it had 3",
                         line) for line in lines)
    assert not any(WRONG in line or API_KEY in line for line in lines)


def test_metrics_count_wrong_keys_refused_requests_and_blocked_addresses(
        client: FlaskClient) -> None:
    _block(client)
    _get(client, "/jobs/", API_KEY)
    _get(client, "/stats", API_KEY)
    families = scrape(client)
    assert metric_value(families, "distconv_auth_failures_total") == 3
    assert metric_value(families, "distconv_auth_blocked_requests_total") == 2
    assert metric_value(families, "distconv_auth_blocked_addresses") == 1
    assert metric_value(families, "distconv_auth_tracked_addresses") == 0


def test_openapi_lists_429_with_retry_after_and_the_parser_refusals(
        client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert {"400", "414", "431"} <= set(responses), (method, path)
            if operation.get("security", document["security"]):
                assert "Retry-After" in responses["429"]["headers"], (method, path)
            else:
                assert "429" not in responses, (method, path)
    blocks = document["paths"]["/auth/blocks/{address}"]["delete"]["responses"]
    assert {"204", "404"} <= set(blocks)


def _sign_in(client: FlaskClient, key: str, address: str = GUESSER) -> Any:
    page = client.get("/ui/login", environ_base={"REMOTE_ADDR": address})
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token, page.get_data(as_text=True)[:300]
    return client.post("/ui/login", data={"api_key": key, "csrf_token": token.group(1)},
                       headers={"Origin": ORIGIN}, environ_base={"REMOTE_ADDR": address})


def test_dashboard_sign_in_is_throttled_and_counts_towards_the_api_block(
        app: Flask) -> None:
    browser = app.test_client()
    assert _sign_in(browser, WRONG).status_code == 401
    assert _get(browser, "/jobs/", WRONG).status_code == 401
    assert _sign_in(browser, WRONG).status_code == 401
    refused = _sign_in(browser, API_KEY)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    assert "Too many wrong keys" in refused.get_data(as_text=True)
    assert _get(browser, "/jobs/", API_KEY).status_code == 429
    assert _sign_in(app.test_client(), API_KEY, OTHER).status_code == 303


def test_the_overview_shows_blocks_to_an_admin_only(app: Flask) -> None:
    admin, viewer = app.test_client(), app.test_client()
    assert _sign_in(admin, API_KEY, OTHER).status_code == 303
    assert _sign_in(viewer, CLIENT_KEY, OTHER).status_code == 303
    page = admin.get("/ui/", environ_base={"REMOTE_ADDR": OTHER}).get_data(as_text=True)
    assert "No address is blocked for wrong keys." in page
    _block(app.test_client())
    page = admin.get("/ui/", environ_base={"REMOTE_ADDR": OTHER}).get_data(as_text=True)
    row = re.search(rf"<td>{re.escape(GUESSER)}</td><td class=\"num\">3</td><td>(\d+) min",
                    page)
    assert row and int(row.group(1)) >= 4, page
    shown = viewer.get("/ui/", environ_base={"REMOTE_ADDR": OTHER}).get_data(as_text=True)
    assert "Blocked addresses" not in shown and GUESSER not in shown


def test_weak_admin_key_is_warned_about_naming_the_setting(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    caplog.set_level(logging.WARNING, "dispatch.auth")
    make_app(make_settings(api_key="secret123", state_file=str(tmp_path / "weak.json")))
    (warning,) = [r.getMessage() for r in caplog.records if "admin API key" in r.getMessage()]
    assert "DISTCONV_API_KEY" in warning and "api_key" in warning
    assert "secrets.token_hex(32)" in warning and "secret123" not in warning
    caplog.clear()
    make_app(make_settings(api_key="a-strong-key-of-sixteen+",
                           state_file=str(tmp_path / "strong.json")))
    assert not [r for r in caplog.records if "admin API key" in r.getMessage()]


def test_throttle_settings_from_flags_variables_and_the_file(tmp_path: Any) -> None:
    defaults = load_settings(["--api-key", API_KEY], {})
    assert (defaults.auth_failure_limit, defaults.auth_failure_window,
            defaults.auth_block_seconds, defaults.auth_throttle_table_size) == (20, 60, 300, 10000)
    conf = tmp_path / "server.conf"
    conf.write_text("auth_failure_limit = 5\nauth_failure_window = 30\n"
                    "auth_block_seconds = 600\nauth_throttle_table_size = 50\n")
    from_file = load_settings(["--api-key", API_KEY, "--config", str(conf)], {})
    assert (from_file.auth_failure_limit, from_file.auth_failure_window,
            from_file.auth_block_seconds, from_file.auth_throttle_table_size) == (5, 30, 600, 50)
    env = load_settings(["--api-key", API_KEY, "--config", str(conf)],
                        {"DISTCONV_AUTH_FAILURE_LIMIT": "7", "DISTCONV_AUTH_BLOCK_SECONDS": "9"})
    assert (env.auth_failure_limit, env.auth_block_seconds) == (7, 9)
    flags = load_settings(["--api-key", API_KEY, "--auth-failure-limit", "0",
                           "--auth-throttle-table-size", "1", "--auth-failure-window", "1"],
                          {"DISTCONV_AUTH_FAILURE_LIMIT": "7"})
    assert (flags.auth_failure_limit, flags.auth_throttle_table_size) == (0, 1)
    for flag, value in (("--auth-failure-limit", "-1"), ("--auth-block-seconds", "0"),
                        ("--auth-throttle-table-size", "0"), ("--auth-failure-window", "x")):
        with pytest.raises(SettingsError, match=flag):
            load_settings(["--api-key", API_KEY, flag, value], {})
