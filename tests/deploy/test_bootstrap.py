"""Both entry points, ``dispatch-server`` and ``gunicorn -c gunicorn.conf.py wsgi:app``,
build the same server (dispatch/bootstrap.py): on the backend the settings choose (the
embedded journal), with as many gunicorn workers as that backend allows (one)."""

from __future__ import annotations

import runpy
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from dispatch.bootstrap import DatabaseBackend, JournalBackend, choose_backend, open_server
from dispatch.cli import DispatchApplication
from dispatch.config.settings import Settings
from dispatch.runtime.gunicorn_config import options
from tests.conftest import API_KEY, JOB
from tests.support.server import BIN, Server

REPO = Path(__file__).resolve().parents[2]


def test_gunicorn_runs_the_workers_the_backend_allows(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded journal holds the state in the serving process: both entry points
    tell gunicorn to run exactly one worker."""
    server = open_server(settings)
    try:
        assert isinstance(server.backend, JournalBackend)
        assert 1 == DispatchApplication(server).cfg.workers
    finally:
        server.loaded_service().close()
    monkeypatch.setenv("DISTCONV_API_KEY", API_KEY)
    monkeypatch.delenv("DISTCONV_CONFIG", raising=False)
    assert 1 == runpy.run_path(str(REPO / "gunicorn.conf.py"))["workers"]


def test_a_shared_database_runs_the_workers_the_settings_ask_for(settings: Settings) -> None:
    """With a database_url, gunicorn runs ``workers`` processes (the database is not
    opened to decide it); without one, one."""
    for workers in (1, 3):
        shared = replace(settings, database_url="postgresql://a@b/c", workers=workers)
        assert workers == options(shared)["workers"]
        assert isinstance(choose_backend(shared), DatabaseBackend)
    assert 1 == options(settings)["workers"]


@pytest.mark.e2e
@pytest.mark.parametrize("entry", ["dispatch-server", "wsgi"])
def test_each_entry_point_serves_and_keeps_jobs_in_the_state_file(
        tmp_path: Path, entry: str) -> None:
    """A job submitted through either entry point is in the state file after SIGTERM
    and served again after a restart."""
    state_file = tmp_path / "server_state.json"
    server = Server(tmp_path, API_KEY, env={"DISTCONV_STATE_FILE": str(state_file)})
    if entry == "wsgi":
        server.env["DISTCONV_PORT"] = str(server.port)
        server.command = [str(BIN.with_name("gunicorn")), "-c", str(REPO / "gunicorn.conf.py"),
                          "--chdir", str(REPO), "wsgi:app"]
    server.start()
    try:
        created = server.request("POST", "/jobs/", json=JOB)
        assert 201 == created.status_code, created.text
        job_id = created.json()["job_id"]
        assert 0 == server.terminate()
        state = orjson.loads(state_file.read_bytes())
        assert JOB["source_url"] == state["jobs"][job_id]["source_url"]

        server.start()
        again = server.request("GET", f"/jobs/{job_id}")
        assert 200 == again.status_code
        assert "pending" == again.json()["status"]
        assert 0 == server.terminate()
    finally:
        server.stop()
