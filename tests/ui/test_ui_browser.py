"""The dashboard in a real browser: headless Chromium (/usr/bin/chromium, installed by
scripts/test-deps.sh) driven by Playwright, against a real ``dispatch-server``.

Screenshots of every page, at a laptop's and a phone's width, are saved in
tests/artifacts/ui/ (gitignored) for a person to look at."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.deploy.test_deploy import NGINX, Nginx
from tests.support.helpers import poll
from tests.support.server import Server

CHROMIUM = Path("/usr/bin/chromium")
ADMIN = "browser-admin-key-0123456789"
CLIENT = "browser-client-key-0123456789"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
JOB = {"source_url": "http://media.example/in/cats.mov", "target_codec": "h264",
       "job_size": 120.0}
SIZES = {"laptop": {"width": 1366, "height": 860}, "phone": {"width": 390, "height": 844}}
WAIT_MS = 15_000  # a refresh comes every 2 s; this is the deadline, not a sleep

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run scripts/test-deps.sh (make test does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ui-server"), ADMIN,
                    env={"DISTCONV_CLIENT_KEYS": CLIENT}).start()
    yield server
    server.stop()


@pytest.fixture
def open_page(browser: Browser, server: Server) -> Iterator[Callable[..., Page]]:
    contexts = []

    def open_as(key: str, size: str = "laptop") -> Page:
        context = browser.new_context(viewport=SIZES[size])  # type: ignore[arg-type]
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.url + "/ui/")
        assert page.url.startswith(server.url + "/ui/login")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(server.url + "/ui/")
        return page

    yield open_as
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api(server: Server, method: str, path: str, **kwargs: Any) -> Any:
    response = server.request(method, path, **kwargs)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def mark_document(page: Page) -> None:
    """Leave a mark in the page's JavaScript world; a reload would wipe it."""
    page.evaluate("window.__notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__notReloaded === true")


def test_admin_sees_a_new_job_appear_opens_it_and_cancels_it(
        server: Server, open_page: Callable[..., Page]) -> None:
    page = open_page(ADMIN)
    page.get_by_role("link", name="Jobs").click()
    page.wait_for_url(re.compile(r".*/ui/jobs$"))
    mark_document(page)
    job = api(server, "POST", "/jobs/", json=JOB)
    job_link = page.get_by_role("link", name=job["job_id"])
    job_link.wait_for()  # appears by the in-place refresh
    assert_not_reloaded(page)
    row = page.locator("tr", has=job_link)
    assert "pending" in row.inner_text()
    shot(page, "jobs-laptop")

    job_link.click()
    page.wait_for_url(re.compile(rf".*/ui/jobs/{job['job_id']}$"))
    assert page.locator("#job-status").inner_text() == "pending"
    shot(page, "job-laptop")
    page.get_by_role("button", name="Cancel job").click()
    page.get_by_role("button", name="Yes, cancel job").click()  # the confirmation
    page.wait_for_url(re.compile(rf".*/ui/jobs/{job['job_id']}$"))
    assert page.locator("#job-status").inner_text() == "cancelled"
    assert f"Job {job['job_id']} cancelled." in page.locator(".messages").inner_text()
    assert api(server, "GET", f"/jobs/{job['job_id']}")["status"] == "cancelled"
    events = api(server, "GET", f"/jobs/{job['job_id']}/events")["events"]
    assert [event["event"] for event in events] == ["submitted", "cancelled"]


def test_a_job_moves_on_its_page_without_a_reload(server: Server,
                                                  open_page: Callable[..., Page]) -> None:
    api(server, "POST", "/engines/heartbeat", json={"engine_id": "mover"})
    job = api(server, "POST", "/jobs/", json={**JOB, "target_codec": "mover-codec"})
    page = open_page(ADMIN)
    page.goto(f"{server.url}/ui/jobs/{job['job_id']}")
    mark_document(page)
    api(server, "POST", "/engines/heartbeat", json={"engine_id": "mover",
                                                     "supported_codecs": ["mover-codec"]})
    assert api(server, "POST", "/assign_job/", json={"engine_id": "mover"})["job_id"] \
        == job["job_id"]
    api(server, "POST", f"/jobs/{job['job_id']}/progress", json={"progress": 40})
    page.locator("#job-status", has_text="processing").wait_for()
    page.locator("strong", has_text="40%").wait_for()
    assert_not_reloaded(page)


def test_engine_heartbeat_age_is_shown_and_grows(server: Server,
                                                 open_page: Callable[..., Page]) -> None:
    api(server, "POST", "/engines/heartbeat",
        json={"engine_id": "gpu-01", "supported_codecs": ["h264", "vp9"],
              "storage_capacity_gb": 500, "hostname": "gpu-01.farm"})
    page = open_page(ADMIN)
    page.get_by_role("link", name="Engines").click()
    page.wait_for_url(re.compile(r".*/ui/engines$"))
    headers = page.locator("table.engines thead th").all_inner_texts()
    column = headers.index("Last heartbeat")
    row = page.locator("table.engines tbody tr", has=page.get_by_role("link", name="gpu-01"))
    cell = row.locator("td").nth(column)
    first = cell.inner_text()
    assert re.fullmatch(r"\d+ s", first), first
    mark_document(page)
    wait_until(lambda: int(cell.inner_text().split()[0]) > int(first.split()[0]),
               f"the heartbeat age to grow from {first}")
    assert_not_reloaded(page)
    shot(page, "engines-laptop")
    page.get_by_role("link", name="gpu-01", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/engines/gpu-01$"))
    shot(page, "engine-laptop")


def test_client_session_has_no_action_buttons(server: Server,
                                              open_page: Callable[..., Page]) -> None:
    job = api(server, "POST", "/jobs/", json=JOB)
    page = open_page(CLIENT)
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{job['job_id']}"):
        page.goto(server.url + path)
        names = page.get_by_role("button").all_inner_texts()
        assert set(names) <= {"Sign out", "Filter"}, (path, names)
    assert page.get_by_role("link", name="Engines").count() == 0


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds (the page's CSP forbids wait_for_function's eval)."""
    poll(check, WAIT_MS / 1000, what, interval=0.1)


def test_refresh_pauses_while_the_tab_is_hidden(server: Server,
                                                open_page: Callable[..., Page]) -> None:
    page = open_page(ADMIN)
    live = page.locator("#live")
    wait_until(lambda: live.get_attribute("data-refreshed") is not None, "a first refresh")
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(500)  # a request already in flight may still land
    paused_at = live.get_attribute("data-refreshed")
    page.wait_for_timeout(5000)  # 2.5 refresh periods: none may come while hidden
    assert live.get_attribute("data-refreshed") == paused_at
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    wait_until(lambda: live.get_attribute("data-refreshed") != paused_at,
               "a refresh once visible again")


def test_keyboard_reaches_the_skip_link_and_the_navigation(
        server: Server, open_page: Callable[..., Page]) -> None:
    page = open_page(ADMIN)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Overview"
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/ui/jobs$"))


def test_screenshots_of_every_page_at_laptop_and_phone_width(
        server: Server, open_page: Callable[..., Page]) -> None:
    api(server, "POST", "/engines/heartbeat",
        json={"engine_id": "shot-engine", "supported_codecs": ["shot"],
              "storage_capacity_gb": 200, "hostname": "node-7"})
    api(server, "POST", "/engines/benchmark_result",
        json={"engine_id": "shot-engine", "benchmark_time": 14.2})
    running = api(server, "POST", "/jobs/", json={**JOB, "target_codec": "shot"})
    api(server, "POST", "/assign_job/", json={"engine_id": "shot-engine"})
    api(server, "POST", f"/jobs/{running['job_id']}/progress", json={"progress": 63})
    failing = api(server, "POST", "/jobs/", json={**JOB, "target_codec": "shot",
                                                  "max_retries": 0})
    api(server, "POST", f"/jobs/{running['job_id']}/complete", json={"output_url": "s3://o/1"})
    api(server, "POST", "/assign_job/", json={"engine_id": "shot-engine"})
    api(server, "POST", f"/jobs/{failing['job_id']}/fail",
        json={"error_message": "ffmpeg exited with status 1:\nInvalid data found when "
                               "processing input"})
    api(server, "POST", "/jobs/batch", json={"jobs": [
        {**JOB, "target_codec": codec, "priority": priority}
        for codec, priority in (("h264", 0), ("h264", 5), ("vp9", 0), ("av1", 2))]})
    pages = {"overview": "/ui/", "jobs": "/ui/jobs", "job": f"/ui/jobs/{failing['job_id']}",
             "engines": "/ui/engines", "engine": "/ui/engines/shot-engine"}
    for size in SIZES:
        page = open_page(ADMIN, size)
        for name, path in pages.items():
            page.goto(server.url + path)
            assert page.locator("h1").count() == 1
            # Nothing wider than the screen but the tables' own scrolling boxes.
            overflow = page.evaluate("document.documentElement.scrollWidth") \
                - page.evaluate("document.documentElement.clientWidth")
            assert overflow <= 1, f"{name} at {size} width is {overflow}px too wide"
            shot(page, f"{name}-{size}")
    login = open_page(CLIENT, "phone")
    login.get_by_role("button", name="Sign out").click()
    login.wait_for_url(re.compile(r".*/ui/login$"))
    shot(login, "login-phone")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Nginx]]:
    """A server behind the shipped nginx site (on a port of its own, not 80)."""
    assert Path(NGINX).exists(), "run scripts/test-deps.sh first"
    server = Server(tmp_path_factory.mktemp("ui-proxied"), ADMIN, "--trusted-proxies", "1")
    nginx = Nginx(tmp_path_factory.mktemp("ui-nginx"), server.port)
    server.start()
    try:
        nginx.start()
        yield server, nginx
    finally:
        nginx.stop()
        server.stop()


def test_sign_in_and_act_through_nginx(browser: Browser,
                                       proxied: tuple[Server, Nginx]) -> None:
    server, nginx = proxied
    api(server, "POST", "/engines/heartbeat", json={"engine_id": "behind-proxy"})
    context = browser.new_context(viewport=SIZES["laptop"])  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(nginx.url + "/ui/engines/behind-proxy")
        assert page.url.startswith(nginx.url + "/ui/login"), (page.url, page.content()[:500])
        page.get_by_label("API key").fill(ADMIN)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(nginx.url + "/ui/engines/behind-proxy")
        cookie = next(c for c in context.cookies() if c["name"] == "distconv_ui")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert not cookie["secure"]  # plain http to nginx here; https makes it Secure
        page.get_by_role("button", name="Drain engine").click()
        page.get_by_role("button", name="Yes, drain engine").click()
        page.wait_for_url(nginx.url + "/ui/engines/behind-proxy")
        assert "is draining" in page.locator(".messages").inner_text()
        assert api(server, "GET", "/engines/behind-proxy")["status"] == "draining"
    finally:
        context.close()
