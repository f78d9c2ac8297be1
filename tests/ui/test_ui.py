"""The dashboard (/ui/) through Flask's test client: sign-in and the session cookie,
every page and filter, every action with and without its CSRF token as admin, client
and engine keys, the security headers, and HTML-escaping of what clients and engines
send. The browser tests are in test_ui_browser.py."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dispatch.config.settings import Settings
from dispatch.http.auth import key_fingerprint
from tests.conftest import API_KEY, JOB, FakeClock

CLIENT_KEY = "client-key-0123456789"
ENGINE_KEY = "engine-key-0123456789"
ORIGIN = "http://localhost"
XSS = "<script>alert(1)</script>"
PAGES = ("/ui/", "/ui/jobs", "/ui/engines")


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(client_keys=(CLIENT_KEY,), engine_keys=(ENGINE_KEY,))


class Browser:
    """A test client that signs in and posts forms the way the pages do."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, **kwargs)

    def token(self, path: str = "/ui/login") -> str:
        page = self.client.get(path, follow_redirects=True)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        assert found, page.get_data(as_text=True)[:500]
        return found.group(1)

    def login(self, key: str) -> TestResponse:
        return self.client.post("/ui/login", data={"api_key": key, "csrf_token": self.token()},
                                headers={"Origin": ORIGIN})

    def post(self, path: str, data: dict[str, str] | None = None, *, token: bool = True,
             confirm: bool = True, origin: str | None = ORIGIN) -> TestResponse:
        form = dict(data or {})
        if token:
            form["csrf_token"] = self.token("/ui/jobs")
        if confirm:
            form["confirmed"] = "yes"
        headers = {"Origin": origin} if origin else {}
        return self.client.post(path, data=form, headers=headers)


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def visible(response: TestResponse) -> str:
    """The page's text as a reader sees it (tags dropped, entities decoded)."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", text(response))))


@pytest.fixture
def make_browser(app: Flask) -> Callable[[str | None], Browser]:
    def make(key: str | None = API_KEY) -> Browser:
        browser = Browser(app.test_client())
        if key is not None:
            assert browser.login(key).status_code == 303
        return browser

    return make


@pytest.fixture
def admin(make_browser: Callable[[str | None], Browser]) -> Browser:
    return make_browser(API_KEY)


@pytest.fixture
def viewer(make_browser: Callable[[str | None], Browser]) -> Browser:
    return make_browser(CLIENT_KEY)


ENGINE_AUTH = {"X-API-Key": ENGINE_KEY}


def run_job(client: FlaskClient, auth: dict[str, str], engine_id: str = "engine-001",
            **job_fields: Any) -> str:
    """Submit a job and have ``engine_id`` (registered if new) take it; return its id."""
    client.post("/engines/heartbeat", json={"engine_id": engine_id}, headers=auth)
    job = client.post("/jobs/", json={**JOB, **job_fields}, headers=auth).get_json()
    assigned = client.post("/assign_job/", json={"engine_id": engine_id}, headers=auth)
    assert assigned.get_json()["job_id"] == job["job_id"], assigned.get_json()
    return str(job["job_id"])


def api_job(client: FlaskClient, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    return client.get(f"/jobs/{job_id}", headers=auth).get_json()


# ------------------------------------------------------------------ sign-in

@pytest.mark.parametrize("path", [*PAGES, "/ui/jobs/123_0", "/ui/engines/engine-001",
                                  "/ui/jobs?status=failed"])
def test_every_page_without_a_session_redirects_to_sign_in(
        make_browser: Callable[[str | None], Browser], path: str) -> None:
    response = make_browser(None).get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/ui/login")


def test_sign_in_page_has_an_api_key_field_and_a_sign_in_button(
        make_browser: Callable[[str | None], Browser]) -> None:
    page = make_browser(None).get("/ui/login")
    assert page.status_code == 200
    assert re.search(r'<label for="api_key">API key</label>', text(page))
    assert re.search(r'<input id="api_key" name="api_key" type="password"', text(page))
    assert re.search(r'<button type="submit">Sign in</button>', text(page))


@pytest.mark.parametrize("key, role", [(API_KEY, "admin"), (CLIENT_KEY, "client")])
def test_admin_and_client_keys_sign_in_with_a_strict_httponly_cookie(
        make_browser: Callable[[str | None], Browser], key: str, role: str) -> None:
    browser = make_browser(None)
    response = browser.login(key)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("distconv_ui=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/ui", "Expires="):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http, no proxy
    page = browser.get("/ui/")
    assert page.status_code == 200
    assert f"{role} key" in visible(page) and key_fingerprint(key) in text(page)
    assert key not in text(page)  # the key itself is never shown


def test_engine_key_and_wrong_key_cannot_sign_in(
        make_browser: Callable[[str | None], Browser]) -> None:
    browser = make_browser(None)
    refused = browser.login(ENGINE_KEY)
    assert refused.status_code == 403
    assert "engine key cannot sign in" in visible(refused)
    wrong = browser.login("not-a-key-0123456789")
    assert wrong.status_code == 401 and "not accepted" in visible(wrong)
    assert browser.get("/ui/").status_code == 302


def test_sign_in_without_csrf_token_or_from_another_site_is_refused(
        make_browser: Callable[[str | None], Browser]) -> None:
    browser = make_browser(None)
    no_token = browser.client.post("/ui/login", data={"api_key": API_KEY},
                                   headers={"Origin": ORIGIN})
    assert no_token.status_code == 403 and "security token" in visible(no_token)
    cross = browser.client.post("/ui/login", data={"api_key": API_KEY,
                                                   "csrf_token": browser.token()},
                                headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site" in visible(cross)
    assert browser.get("/ui/").status_code == 302


def test_cookie_is_secure_when_https_came_through_a_trusted_proxy(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings]) -> None:
    app = make_app(make_settings(trusted_proxies=1))
    browser = Browser(app.test_client())
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.9"}
    page = browser.client.get("/ui/login", headers=headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', text(page)).group(1)  # type: ignore[union-attr]
    response = browser.client.post("/ui/login", data={"api_key": API_KEY, "csrf_token": token},
                                   headers={**headers, "Origin": "https://localhost"})
    assert response.status_code == 303
    assert "; Secure" in response.headers["Set-Cookie"]


def test_sign_out_ends_the_session(admin: Browser) -> None:
    response = admin.post("/ui/logout", confirm=False)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/login"
    assert admin.get("/ui/").status_code == 302


def test_session_expires(admin: Browser, make_settings: Callable[..., Settings],
                         make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    """The signature carries its time; past ui_session_lifetime the server refuses it."""
    import itsdangerous.timed

    assert admin.get("/ui/").status_code == 200
    later = itsdangerous.timed.TimestampSigner.get_timestamp(None) + 43200 + 5  # type: ignore[arg-type]
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                        lambda self: later)
    assert admin.get("/ui/").status_code == 302


def test_generated_secret_is_kept_beside_the_state_and_survives_a_restart(
        app: Flask, make_app: Callable[..., Flask], settings: Settings, admin: Browser) -> None:
    path = Path(settings.state_file + ".ui-secret")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(path.read_text().strip()) >= 32
    cookie = admin.client.get_cookie("distconv_ui", path="/ui")
    assert cookie is not None
    app.extensions["dispatch.runtime"].shutdown()
    restarted = make_app(settings).test_client()  # a new app on the same state file
    restarted.set_cookie("distconv_ui", cookie.value, path="/ui")
    assert restarted.get("/ui/").status_code == 200


def test_configured_secret_signs_sessions(make_app: Callable[..., Flask],
                                          make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ui_secret="s" * 40)
    app = make_app(settings)
    assert app.secret_key == "s" * 40
    assert not Path(settings.state_file + ".ui-secret").exists()


def test_secret_settings_flag_variable_file_and_length(tmp_path: Path) -> None:
    from dispatch.config.settings import SettingsError, load_settings

    secret_file = tmp_path / "ui-secret"
    secret_file.write_text("f" * 40 + "\n")
    env = {"DISTCONV_API_KEY": API_KEY}
    assert load_settings(["--ui-secret-file", str(secret_file)], env).ui_secret == "f" * 40
    assert load_settings([], {**env, "DISTCONV_UI_SECRET_FILE": str(secret_file)}
                         ).ui_secret == "f" * 40
    assert load_settings([], {**env, "DISTCONV_UI_SECRET": "e" * 32}).ui_secret == "e" * 32
    assert load_settings([], {**env, "DISTCONV_UI_SESSION_LIFETIME": "600"}
                         ).ui_session_lifetime == 600
    assert "e" * 32 not in repr(load_settings([], {**env, "DISTCONV_UI_SECRET": "e" * 32}))
    with pytest.raises(SettingsError, match="DISTCONV_UI_SECRET.*at least 32"):
        load_settings([], {**env, "DISTCONV_UI_SECRET": "short"})
    secret_file.write_text("short")
    with pytest.raises(SettingsError, match="dashboard secret file .*at least 32"):
        load_settings(["--ui-secret-file", str(secret_file)], env)
    with pytest.raises(SettingsError, match="cannot read dashboard secret file"):
        load_settings(["--ui-secret-file", str(tmp_path / "missing")], env)


def test_removing_a_key_ends_its_sessions(make_app: Callable[..., Flask],
                                          make_settings: Callable[..., Settings],
                                          tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("client client-from-file-0123456789\n")
    app = make_app(make_settings(keys_file=str(keys)))
    browser = Browser(app.test_client())
    assert browser.login("client-from-file-0123456789").status_code == 303
    assert browser.get("/ui/").status_code == 200
    keys.write_text("")
    app.extensions["dispatch.keys"].reload()
    assert browser.get("/ui/").status_code == 302


# ------------------------------------------------------------------ headers

@pytest.mark.parametrize("path", [*PAGES, "/ui/login", "/ui/jobs/{job}", "/ui/engines/engine-001"])
def test_every_page_has_the_security_headers_and_no_inline_script_or_style(
        admin: Browser, make_browser: Callable[[str | None], Browser], client: FlaskClient,
        auth: dict[str, str], path: str) -> None:
    job_id = run_job(client, auth)
    browser = make_browser(None) if path == "/ui/login" else admin
    response = browser.get(path.format(job=job_id))
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "style-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    html = text(response)
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/ui/static/ui.js" defer>']
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"<[^>]*\son\w+=", html)  # no onclick= and the like


def test_static_files_are_served_without_a_session(
        make_browser: Callable[[str | None], Browser]) -> None:
    browser = make_browser(None)
    for name, kind in (("ui.css", "text/css"), ("ui.js", "text/javascript")):
        response = browser.get(f"/ui/static/{name}")
        assert response.status_code == 200 and response.mimetype == kind
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        response.close()


# ------------------------------------------------------------------ pages

def test_navigation_links_and_status_words(admin: Browser, viewer: Browser) -> None:
    page = admin.get("/ui/")
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', text(page), re.S).group(1)  # type: ignore[union-attr]
    assert re.findall(r">(\w+)</a>", nav) == ["Overview", "Jobs", "Engines"]
    client_nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', text(viewer.get("/ui/")),  # type: ignore[union-attr]
                           re.S).group(1)
    # Engines are shown to admin keys only, as in the API.
    assert re.findall(r">(\w+)</a>", client_nav) == ["Overview", "Jobs"]


def test_overview_counts_queue_engines_and_last_hour_chart(
        admin: Browser, client: FlaskClient, auth: dict[str, str], clock: FakeClock,
        heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001")
    heartbeat("engine-002")
    client.post("/engines/engine-002/drain", headers=auth)
    done = run_job(client, auth)
    client.post(f"/jobs/{done}/complete", json={"output_url": "s3://out/a.mp4"}, headers=auth)
    clock.advance(120)
    client.post("/jobs/", json={**JOB, "target_codec": "vp9", "priority": 5}, headers=auth)
    client.post("/jobs/", json={**JOB, "target_codec": "vp9", "priority": 5}, headers=auth)
    client.post("/jobs/", json={**JOB, "target_codec": "h264"}, headers=auth)
    clock.advance(90)
    page = admin.get("/ui/")
    shown = visible(page)
    assert "pending 3" in shown and "completed 1" in shown and "total 4" in shown
    assert "vp9 5 2" in shown and "h264 0 1" in shown
    assert "Oldest pending job: 1 min 30 s old" in shown
    assert "idle 1" in shown and "draining 1" in shown and "offline 0" in shown
    assert "Completed: 1 in the last hour" in shown
    assert "Failed (no retries left): 0 in the last hour" in shown
    # One bar, three minutes before the current one; drawn by the server as SVG.
    bars = re.findall(r'<rect [^>]*class="bar-completed"><title>([^<]*)</title>', text(page))
    assert bars == ["1 completed, 3 min ago"]
    assert "<svg" in text(page)


def test_overview_counts_a_job_in_backoff_as_pending(admin: Browser, client: FlaskClient,
                                                      auth: dict[str, str]) -> None:
    job_id = run_job(client, auth, target_codec="av1", priority=-3)
    client.post(f"/jobs/{job_id}/fail", json={"error_message": "flaky"}, headers=auth)
    assert api_job(client, auth, job_id)["waiting_reason"]["code"] == "backoff"
    assert "av1 -3 1" in visible(admin.get("/ui/"))


def make_jobs_for_filters(client: FlaskClient, auth: dict[str, str]) -> dict[str, str]:
    ids = {}
    ids["h264"] = client.post("/jobs/", json={**JOB, "source_url": "http://media/cats.mp4"},
                              headers=auth).get_json()["job_id"]
    ids["x264"] = client.post("/jobs/", json={**JOB, "target_codec": "libx264"},
                              headers=auth).get_json()["job_id"]
    ids["vp9"] = client.post("/jobs/", json={**JOB, "target_codec": "vp9"},
                             headers=auth).get_json()["job_id"]
    ids["failed"] = run_job(client, auth, "engine-7", target_codec="av1", max_retries=0)
    client.post(f"/jobs/{ids['failed']}/fail", json={"error_message": "Decoder EXPLODED"},
                headers=auth)
    return ids


def rows(response: TestResponse) -> list[str]:
    """Job ids of the jobs table's rows, in order."""
    return re.findall(r'<td><a href="/ui/jobs/([^"]+)">', text(response))


@pytest.mark.parametrize("query, expected", [
    ("", ["failed", "vp9", "x264", "h264"]),  # newest first
    ("?status=pending", ["vp9", "x264", "h264"]),
    ("?status=failed", ["failed"]),
    ("?codec=h264", ["x264", "h264"]),  # libx264 is an h264 encoder
    ("?codec=vp9&status=pending", ["vp9"]),
    ("?engine=engine-7", ["failed"]),
    ("?q=cats", ["h264"]),  # text in the source
    ("?q=exploded", ["failed"]),  # text in the error, any case
    ("?q={failed}", ["failed"]),  # text in the id
    ("?status=completed", []),
])
def test_jobs_page_filters(admin: Browser, client: FlaskClient, auth: dict[str, str],
                           heartbeat: Callable[..., dict[str, Any]], query: str,
                           expected: list[str]) -> None:
    heartbeat("engine-7", supported_codecs=["av1"])
    ids = make_jobs_for_filters(client, auth)
    page = admin.get("/ui/jobs" + query.format(**ids))
    assert page.status_code == 200
    assert rows(page) == [ids[name] for name in expected]
    assert f"{len(expected)} jobs match" in visible(page)


def test_jobs_page_refuses_unknown_status(admin: Browser) -> None:
    page = admin.get("/ui/jobs?status=bogus")
    assert page.status_code == 400 and "Unknown status 'bogus'" in visible(page)


def test_jobs_page_pages_newest_first(admin: Browser, client: FlaskClient,
                                      auth: dict[str, str]) -> None:
    created = client.post("/jobs/batch", json={"jobs": [JOB] * 120}, headers=auth).get_json()
    ids = [job["job_id"] for job in created["jobs"]]
    first = admin.get("/ui/jobs")
    assert rows(first) == ids[::-1][:50]
    assert "120 jobs match; showing 1–50" in visible(first)
    older = re.search(r'<a href="([^"]+)" rel="next">', text(first)).group(1)  # type: ignore[union-attr]
    second = admin.get(unescape(older))
    assert rows(second) == ids[::-1][50:100]
    third = admin.get("/ui/jobs?offset=100")
    assert rows(third) == ids[::-1][100:]
    assert 'rel="next"' not in text(third) and 'rel="prev"' in text(third)
    filtered = admin.get("/ui/jobs?codec=h264&offset=100")
    assert rows(filtered) == ids[::-1][100:]
    assert admin.get("/ui/jobs?offset=-1").status_code == 400


def test_job_page_shows_every_field_progress_history_error_and_webhook(
        admin: Browser, client: FlaskClient, auth: dict[str, str],
        make_settings: Callable[..., Settings], heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001")
    job_id = run_job(client, auth, priority=3)
    client.post(f"/jobs/{job_id}/progress", json={"progress": 42.5, "fps": 61.5,
                                                  "speed": 2.46, "eta_seconds": 75},
                headers=auth)
    page = admin.get(f"/ui/jobs/{job_id}")
    shown = visible(page)
    assert "42.5% · 61.5 fps · 2.46× real time · ETA 1:15" in shown
    api = api_job(client, auth, job_id)
    for key in api:
        if key not in ("waiting_reason", "webhook"):
            assert re.search(rf"<dt>{key}</dt>", text(page)), key
    assert "Status: processing" in shown
    assert '<progress max="100" value="42.5">' in text(page) and "42.5%" in shown
    assert re.findall(r"<td>(submitted|assigned|processing|progress)</td>", text(page)) == [
        "submitted", "assigned", "processing", "progress"]
    assert "No callback URL." in shown
    # A failed attempt: the error in full, and the job waits in backoff.
    long_error = "ffmpeg exited 1\n" + "x" * 500 + "\nlast line of the error"
    client.post(f"/jobs/{job_id}/fail", json={"error_message": long_error}, headers=auth)
    page = admin.get(f"/ui/jobs/{job_id}")
    assert f'<pre class="error-text">{long_error}</pre>' in text(page)
    assert "Waiting: backoff" in visible(page)
    assert re.search(r"<td>failed_attempt</td>", text(page))


def test_job_page_shows_webhook_delivery_state(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(webhook_allowed_hosts=("hooks.example",),
                             webhook_secret="w" * 32)
    app = make_app(settings)
    client = app.test_client()
    auth = {"X-API-Key": API_KEY}
    job = client.post("/jobs/", json={**JOB, "callback_url": "https://hooks.example/done"},
                      headers=auth).get_json()
    browser = Browser(app.test_client())
    browser.login(API_KEY)
    assert "nothing sent yet" in visible(browser.get(f"/ui/jobs/{job['job_id']}"))
    client.delete(f"/jobs/{job['job_id']}", headers=auth)
    shown = visible(browser.get(f"/ui/jobs/{job['job_id']}"))
    assert "url https://hooks.example/done state pending attempts 0" in shown


def test_unknown_job_or_engine_is_a_404_page(admin: Browser) -> None:
    for path in ("/ui/jobs/nope_1", "/ui/engines/nope"):
        page = admin.get(path)
        assert page.status_code == 404 and page.mimetype == "text/html"
        assert "not found" in visible(page)


def test_engines_page_shows_heartbeat_age_codecs_storage_benchmark_job_and_drain(
        admin: Browser, client: FlaskClient, auth: dict[str, str], clock: FakeClock,
        heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001", supported_codecs=["h264", "vp9"], storage_capacity_gb=500,
              hostname="node-1")
    client.post("/engines/benchmark_result", json={"engine_id": "engine-001",
                                                  "benchmark_time": 12.5}, headers=auth)
    heartbeat("engine-002", status="draining")
    job_id = run_job(client, auth)
    client.post(f"/jobs/{job_id}/progress", json={"progress": 30, "fps": 24, "speed": 0.5,
                                                  "eta_seconds": 3},
                headers=auth)
    clock.advance(4)
    page = admin.get("/ui/engines")
    assert "<th scope=\"col\">Last heartbeat</th>" in text(page)
    shown = visible(page)
    assert ("engine-001 node-1 busy 4 s h264, vp9 500 GB 12.5 s (avg 12.5 s) "
            f"{job_id} 30% 30% · 24 fps · 0.5× real time · ETA 0:03 not draining") in shown
    assert f"{job_id} 30% 30% · 24 fps · 0.5× real time · ETA 0:03" in visible(
        admin.get("/ui/engines/engine-001"))
    assert "engine-002 draining 4 s any — — — draining (engine's request)" in shown
    clock.advance(61)
    assert "engine-001 node-1 busy 1 min 5 s" in visible(admin.get("/ui/engines"))


def test_engine_page_shows_its_recent_jobs(admin: Browser, client: FlaskClient,
                                           auth: dict[str, str],
                                           heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001")
    heartbeat("engine-002")
    first = run_job(client, auth, "engine-001")
    client.post(f"/jobs/{first}/complete", json={"output_url": "s3://o"}, headers=auth)
    other = run_job(client, auth, "engine-002")
    second = run_job(client, auth, "engine-001")
    page = admin.get("/ui/engines/engine-001")
    assert page.status_code == 200
    recent = re.search(r"<h2>Recent jobs</h2>(.*)", text(page), re.S).group(1)  # type: ignore[union-attr]
    assert re.findall(r'<a href="/ui/jobs/([^"]+)">', recent) == [second, first]
    assert other not in recent
    assert "Current job " + second in visible(page)


def test_live_fragment_is_only_the_live_part(admin: Browser) -> None:
    for path in PAGES:
        fragment = admin.get(path, headers={"X-Live-Fragment": "1"})
        assert fragment.status_code == 200 and fragment.headers["X-Live-Fragment"] == "1"
        assert "<html" not in text(fragment) and 'aria-label="Main"' not in text(fragment)
        whole = admin.get(path)
        assert 'data-live data-refresh-ms="2000"' in text(whole)


# ------------------------------------------------------------------ actions

JOB_BUTTONS = ("Cancel job", "Retry job", "Change priority")
ENGINE_BUTTONS = ("Drain engine", "Resume engine", "Remove engine")


def buttons(response: TestResponse) -> list[str]:
    return [b for b in re.findall(r"<button[^>]*>([^<]+)</button>", text(response))
            if b != "Sign out"]


def test_admin_sees_the_actions_that_apply(admin: Browser, client: FlaskClient,
                                           auth: dict[str, str],
                                           heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001")
    job_id = run_job(client, auth)
    assert buttons(admin.get(f"/ui/jobs/{job_id}")) == ["Cancel job", "Change priority"]
    client.delete(f"/jobs/{job_id}", headers=auth)
    assert buttons(admin.get(f"/ui/jobs/{job_id}")) == ["Retry job"]
    assert buttons(admin.get("/ui/engines/engine-001")) == ["Drain engine", "Remove engine"]
    assert buttons(admin.get("/ui/jobs")) == ["Filter", "Retry matching jobs",
                                              "Cancel matching jobs"]


def test_client_session_has_no_action_buttons_and_a_forged_post_is_403(
        viewer: Browser, client: FlaskClient, auth: dict[str, str],
        heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001")
    job_id = run_job(client, auth)
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{job_id}"):
        page = viewer.get(path)
        assert page.status_code == 200
        assert buttons(page) in ([], ["Filter"])
    assert viewer.get("/ui/engines").status_code == 403
    assert viewer.get("/ui/engines/engine-001").status_code == 403
    for path, data in ((f"/ui/jobs/{job_id}/cancel", {}), (f"/ui/jobs/{job_id}/priority",
                                                            {"priority": "9"}),
                       ("/ui/jobs/bulk", {"action": "cancel"}),
                       ("/ui/engines/engine-001/remove", {})):
        response = viewer.post(path, data)
        assert response.status_code == 403, path
        assert "Only an admin session" in visible(response)
    assert api_job(client, auth, job_id)["status"] == "assigned"
    assert api_job(client, auth, job_id)["priority"] == 0
    assert client.get("/engines/engine-001", headers=auth).status_code == 200


def test_a_post_without_a_session_changes_nothing(
        make_browser: Callable[[str | None], Browser], client: FlaskClient,
        auth: dict[str, str]) -> None:
    job_id = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    stranger = make_browser(None)
    response = stranger.post(f"/ui/jobs/{job_id}/cancel")  # a token of its own, no sign-in
    assert response.status_code == 302 and response.headers["Location"].startswith("/ui/login")
    assert api_job(client, auth, job_id)["status"] == "pending"


@pytest.mark.parametrize("action, button, before, after, event", [
    ("cancel", "Cancel job", "pending", "cancelled", "cancelled"),
    ("retry", "Retry job", "cancelled", "pending", "retried"),
])
def test_job_action_needs_token_and_confirmation_then_goes_through_the_service(
        admin: Browser, client: FlaskClient, auth: dict[str, str], action: str, button: str,
        before: str, after: str, event: str, caplog: pytest.LogCaptureFixture) -> None:
    job_id = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    if before == "cancelled":
        client.delete(f"/jobs/{job_id}", headers=auth)
    path = f"/ui/jobs/{job_id}/{action}"
    no_token = admin.post(path, token=False)
    assert no_token.status_code == 403 and "security token" in visible(no_token)
    wrong_token = admin.post(path, {"csrf_token": "forged"}, token=False)
    assert wrong_token.status_code == 403
    cross_site = admin.post(path, origin="http://evil.example")
    assert cross_site.status_code == 403 and "another site" in visible(cross_site)
    assert api_job(client, auth, job_id)["status"] == before
    ask = admin.post(path, confirm=False)
    assert ask.status_code == 200
    assert f"Yes, {button.lower()}" in buttons(ask)
    assert 'name="confirmed" value="yes"' in text(ask)
    assert api_job(client, auth, job_id)["status"] == before
    with caplog.at_level(logging.INFO, logger="dispatch.ui"):
        done = admin.post(path)
    assert done.status_code == 303 and done.headers["Location"] == f"/ui/jobs/{job_id}"
    assert api_job(client, auth, job_id)["status"] == after
    events = client.get(f"/jobs/{job_id}/events", headers=auth).get_json()["events"]
    assert events[-1]["event"] == event
    page = admin.get(f"/ui/jobs/{job_id}")
    assert f"Status: {after}" in visible(page) and "Done:" in visible(page)
    assert f"dashboard: {action} job {job_id} by admin key {key_fingerprint(API_KEY)}" \
        in caplog.text


def test_job_action_errors_are_the_services_shown_on_the_page(
        admin: Browser, client: FlaskClient, auth: dict[str, str]) -> None:
    job_id = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    client.delete(f"/jobs/{job_id}", headers=auth)
    response = admin.post(f"/ui/jobs/{job_id}/cancel")
    assert response.status_code == 303
    page = admin.get(response.headers["Location"])
    api_error = client.delete(f"/jobs/{job_id}", headers=auth).get_json()["error"]["message"]
    assert f"Problem: {api_error}" in visible(page)
    retried = admin.post(f"/ui/jobs/{job_id}/retry")  # valid for a cancelled job
    assert retried.status_code == 303
    assert admin.post("/ui/jobs/nope_1/cancel").status_code == 404


def test_priority_change_through_the_page(admin: Browser, client: FlaskClient,
                                          auth: dict[str, str]) -> None:
    job_id = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    path = f"/ui/jobs/{job_id}/priority"
    assert admin.post(path, {"priority": "7"}, token=False).status_code == 403
    ask = admin.post(path, {"priority": "7"}, confirm=False)
    assert "Change the priority of job" in visible(ask) and "from 0 to 7" in visible(ask)
    assert "Yes, change priority" in buttons(ask)
    assert api_job(client, auth, job_id)["priority"] == 0
    assert admin.post(path, {"priority": "7"}).status_code == 303
    assert api_job(client, auth, job_id)["priority"] == 7
    events = client.get(f"/jobs/{job_id}/events", headers=auth).get_json()["events"]
    assert events[-1]["event"] == "priority" and events[-1]["detail"] == "0 -> 7"
    for bad, message in (("500", "Must be greater than or equal to -100 and less than or "
                                 "equal to 100."), ("high", "Not a valid integer.")):
        response = admin.post(path, {"priority": bad})
        page = admin.get(response.headers["Location"])
        assert f"Priority not changed: {message}" in visible(page)
    assert api_job(client, auth, job_id)["priority"] == 7


@pytest.mark.parametrize("action, button, drain_after, status_after", [
    ("drain", "Drain engine", True, "draining"),
    ("resume", "Resume engine", False, "idle"),
])
def test_engine_drain_and_resume(admin: Browser, client: FlaskClient, auth: dict[str, str],
                                 heartbeat: Callable[..., dict[str, Any]], action: str,
                                 button: str, drain_after: bool, status_after: str) -> None:
    heartbeat("engine-001")
    if action == "resume":
        client.post("/engines/engine-001/drain", headers=auth)
    path = f"/ui/engines/engine-001/{action}"
    assert admin.post(path, token=False).status_code == 403
    ask = admin.post(path, confirm=False)
    assert f"Yes, {button.lower()}" in buttons(ask)
    assert admin.post(path).status_code == 303
    engine = client.get("/engines/engine-001", headers=auth).get_json()
    assert engine["status"] == status_after
    answer = client.post("/engines/heartbeat", json={"engine_id": "engine-001"}, headers=auth)
    assert answer.get_json()["draining"] is drain_after


def test_engine_removal_releases_its_jobs(admin: Browser, client: FlaskClient,
                                          auth: dict[str, str],
                                          heartbeat: Callable[..., dict[str, Any]]) -> None:
    heartbeat("engine-001")
    job_id = run_job(client, auth)
    path = "/ui/engines/engine-001/remove"
    assert admin.post(path, token=False).status_code == 403
    assert "Yes, remove engine" in buttons(admin.post(path, confirm=False))
    assert client.get("/engines/engine-001", headers=auth).status_code == 200
    done = admin.post(path)
    assert done.status_code == 303 and done.headers["Location"] == "/ui/engines"
    assert client.get("/engines/engine-001", headers=auth).status_code == 404
    assert api_job(client, auth, job_id)["status"] == "pending"
    events = client.get(f"/jobs/{job_id}/events", headers=auth).get_json()["events"]
    assert events[-1]["event"] == "released"


def test_bulk_retry_by_filter_confirms_the_count_and_reports_failures(
        make_app: Callable[..., Flask], make_settings: Callable[..., Settings]) -> None:
    app = make_app(make_settings(job_queue_max_size=3))
    client = app.test_client()
    auth = {"X-API-Key": API_KEY}
    vp9 = [client.post("/jobs/", json={**JOB, "target_codec": "vp9"}, headers=auth)
           .get_json()["job_id"] for _ in range(3)]
    for job_id in vp9:
        client.delete(f"/jobs/{job_id}", headers=auth)
    h264 = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    client.delete(f"/jobs/{h264}", headers=auth)
    pending = client.post("/jobs/", json={**JOB, "target_codec": "vp9"},
                          headers=auth).get_json()["job_id"]
    admin = Browser(app.test_client())
    admin.login(API_KEY)
    form = {"action": "retry", "codec": "vp9"}
    assert admin.post("/ui/jobs/bulk", form, token=False).status_code == 403
    ask = admin.post("/ui/jobs/bulk", form, confirm=False)
    assert "4 jobs match codec=vp9; retry applies to 3 of them" in visible(ask)
    assert "Yes, retry 3 jobs" in buttons(ask)
    assert all(api_job(client, auth, j)["status"] == "cancelled" for j in vp9)
    done = admin.post("/ui/jobs/bulk", form)
    assert done.status_code == 303 and done.headers["Location"] == "/ui/jobs?codec=vp9"
    page = visible(admin.get(done.headers["Location"]))
    # The queue holds 3: one pending already, so two retries fit and the third is
    # refused by the service, exactly as POST /jobs/{id}/retry would be.
    assert "2 jobs retried; 1 skipped (their status does not allow it); 1 failed." in page
    statuses = [api_job(client, auth, j)["status"] for j in vp9]
    assert sorted(statuses) == ["cancelled", "pending", "pending"]
    refused = vp9[statuses.index("cancelled")]
    api_message = client.post(f"/jobs/{refused}/retry", headers=auth).get_json()
    assert f"{refused}: {api_message['error']['message']}" in page
    assert api_job(client, auth, h264)["status"] == "cancelled"  # outside the filter
    assert api_job(client, auth, pending)["status"] == "pending"


def test_bulk_cancel_of_a_status(admin: Browser, client: FlaskClient,
                                 auth: dict[str, str]) -> None:
    ids = [client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
           for _ in range(3)]
    form = {"action": "cancel", "status": "pending"}
    assert "3 jobs match status=pending; cancel applies to 3" in visible(
        admin.post("/ui/jobs/bulk", form, confirm=False))
    admin.post("/ui/jobs/bulk", form)
    assert [api_job(client, auth, j)["status"] for j in ids] == ["cancelled"] * 3
    assert admin.post("/ui/jobs/bulk", {"action": "explode"}).status_code == 400


# ------------------------------------------------------------------ escaping

def test_values_sent_by_clients_and_engines_are_shown_as_text(
        admin: Browser, client: FlaskClient, auth: dict[str, str],
        heartbeat: Callable[..., dict[str, Any]]) -> None:
    engine_id = "engine-x"
    heartbeat(engine_id, hostname=XSS, engine_type=XSS, supported_codecs=[XSS, "h264"])
    job = client.post("/jobs/", json={**JOB, "source_url": f"http://x/{XSS}.mp4",
                                      "target_codec": "h264"}, headers=auth).get_json()
    assigned = client.post("/assign_job/", json={"engine_id": engine_id}, headers=auth)
    assert assigned.get_json()["job_id"] == job["job_id"]
    client.post(f"/jobs/{job['job_id']}/fail", json={"error_message": f"bad {XSS} \"quoted\""},
                headers=auth)
    codec_job = client.post("/jobs/", json={**JOB, "target_codec": XSS}, headers=auth)
    assert codec_job.status_code == 201
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{job['job_id']}", "/ui/engines",
                 f"/ui/engines/{engine_id}", f"/ui/jobs?q={XSS}"):
        page = admin.get(path)
        assert page.status_code == 200
        html = text(page)
        assert "<script>" not in html, path
        assert "&lt;script&gt;" in html, path
    assert "bad <script>alert(1)</script> \"quoted\"" in visible(
        admin.get(f"/ui/jobs/{job['job_id']}"))


# ------------------------------------------------------------------ API: priority

def test_priority_endpoint_reorders_the_queue_and_is_recorded(
        app: Flask, client: FlaskClient, auth: dict[str, str], make_app: Callable[..., Flask],
        settings: Settings) -> None:
    client.post("/engines/heartbeat", json={"engine_id": "engine-001"}, headers=auth)
    first = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    second = client.post("/jobs/", json=JOB, headers=auth).get_json()["job_id"]
    response = client.post(f"/jobs/{second}/priority", json={"priority": 10},
                           headers={"X-API-Key": CLIENT_KEY})
    assert response.status_code == 200 and response.get_json()["priority"] == 10
    assert response.get_json()["waiting_reason"]["position"] == 1
    assert client.post(f"/jobs/{second}/priority", json={"priority": 10},
                       headers=ENGINE_AUTH).status_code == 403
    for body in ({"priority": 101}, {"priority": "1"}, {}, {"priority": 1, "x": 1}):
        bad = client.post(f"/jobs/{first}/priority", json=body, headers=auth)
        assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "validation_error"
    assert client.post("/jobs/nope_1/priority", json={"priority": 1},
                       headers=auth).status_code == 404
    # Survives a restart (journaled like every change), with its history event.
    app.extensions["dispatch.runtime"].shutdown()
    client = make_app(settings).test_client()
    assert api_job(client, auth, second)["priority"] == 10
    events = client.get(f"/jobs/{second}/events", headers=auth).get_json()["events"]
    assert [e["event"] for e in events] == ["submitted", "priority"]
    client.post("/engines/heartbeat", json={"engine_id": "engine-001"}, headers=auth)
    taken = client.post("/assign_job/", json={"engine_id": "engine-001"}, headers=auth)
    assert taken.get_json()["job_id"] == second
    client.delete(f"/jobs/{first}", headers=auth)
    finished = client.post(f"/jobs/{first}/priority", json={"priority": 1}, headers=auth)
    assert finished.status_code == 409 and "already cancelled" in \
        finished.get_json()["error"]["message"]


def test_a_stored_output_has_a_download_link_without_a_signature_in_the_page(
        admin: Browser, client: FlaskClient, auth: dict[str, str]) -> None:
    """Issue #21: the job page links to the output; the link is the dashboard's own,
    which answers with a URL signed at that moment (the page holds no signature)."""
    job_id = run_job(client, auth)
    output = b"transcoded bytes"
    upload = client.post(f"/jobs/{job_id}/output_upload", json={
        "engine_id": "engine-001", "size": len(output), "extension": "mp4",
        "content_type": "video/mp4"}, headers=auth).get_json()
    part = client.put(upload["parts"][0]["url"].replace("http://localhost", ""), data=output)
    assert part.status_code == 200
    done = client.post(f"/jobs/{job_id}/complete", headers=auth, json={
        "engine_id": "engine-001", "output_url": upload["source_url"],
        "upload_id": upload["upload_id"], "size": len(output),
        "parts": [{"part_number": 1, "etag": part.headers["ETag"].strip('"')}]})
    assert done.status_code == 200, done.get_json()
    page = admin.get(f"/ui/jobs/{job_id}")
    assert f'href="/ui/jobs/{job_id}/output"' in text(page)
    assert "Download" in visible(page) and "signature=" not in text(page)
    link = admin.get(f"/ui/jobs/{job_id}/output")
    assert link.status_code == 302 and "signature=" in link.headers["Location"]
    file = client.get(link.headers["Location"].replace("http://localhost", ""))
    assert file.get_data() == output
    file.close()
    other = run_job(client, auth, "engine-002")
    assert admin.get(f"/ui/jobs/{other}/output").status_code == 409
