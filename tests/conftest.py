"""Fixtures: a fresh app per test on a temporary state file, its client, the key header,
and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatch.bootstrap import build_app, open_server
from dispatch.config.settings import Settings
from dispatch.storage.memory import MemoryBackend

API_KEY = "test-key-0123456789"
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_settings(tmp_path: Any) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"api_key": API_KEY,
                                  "state_file": str(tmp_path / "server_state.json")}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def backend_kind(request: Any) -> str:
    """Where the apps keep their state: the journal, unless a module runs its tests
    on both backends (``BOTH_BACKENDS``)."""
    return getattr(request, "param", "journal")


# A module marked with this runs each test that builds an app on both backends.
BOTH_BACKENDS = pytest.mark.both_backends


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "both_backends: run on the journal and on PostgreSQL")


def pytest_generate_tests(metafunc: Any) -> None:
    if metafunc.definition.get_closest_marker("both_backends") \
            and "backend_kind" in metafunc.fixturenames:
        metafunc.parametrize("backend_kind", ["journal", "postgres"], indirect=True)


@pytest.fixture
def make_app(clock: FakeClock, backend_kind: str,
             request: Any) -> Iterator[Callable[..., Flask]]:
    """Build apps as the server does (on a real journal in tmp_path, unless a test
    passes its own store; or on an emptied PostgreSQL database, see ``backend_kind``);
    every one is shut down afterwards. A second app on the same settings is the same
    server restarted."""
    apps: list[Flask] = []
    database = None
    if backend_kind == "postgres":
        database = request.getfixturevalue("postgres")
        database.reset()

    def make(settings: Settings, store: Any = None) -> Flask:
        shared = database is not None and store is None
        if shared:
            settings = replace(settings, database_url=database.url,
                               leader_lease_seconds=3600.0)
        uow = None if store is None else MemoryBackend(store, clock)
        app = build_app(open_server(settings, clock=clock, uow=uow), background=False)
        if shared:
            # This app takes the background-work lease now (its thread is not started:
            # the test drives the background work by hand).
            app.extensions["dispatch"].uow.lease.round()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dispatch.runtime"].shutdown()


@pytest.fixture
def app(make_app: Callable[..., Flask], settings: Settings) -> Flask:
    return make_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


JOB = {"source_url": "http://example.com/input.mp4", "target_codec": "h264", "job_size": 100.5}


@pytest.fixture
def submit(client: FlaskClient, auth: dict[str, str]) -> Callable[..., dict[str, Any]]:
    """Submit a job (fields override the defaults) and return its JSON."""

    def do(**fields: Any) -> dict[str, Any]:
        response = client.post("/jobs/", json={**JOB, **fields}, headers=auth)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return do


@pytest.fixture
def heartbeat(client: FlaskClient, auth: dict[str, str]) -> Callable[..., dict[str, Any]]:
    """Send a heartbeat for ``engine_id`` and return the engine JSON (the answer's two
    instructions, ``cancelled_jobs`` and ``draining``, are checked and left out)."""

    def do(engine_id: str = "engine-001", **fields: Any) -> dict[str, Any]:
        response = client.post("/engines/heartbeat", json={"engine_id": engine_id, **fields},
                               headers=auth)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert isinstance(body.pop("cancelled_jobs"), list)
        assert body.pop("draining") == (body["status"] == "draining")
        return body

    return do


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server for the session (``tests/support/postgres.py``), its schema applied."""
    from tests.support.postgres import PostgresServer

    server = PostgresServer().init()
    yield server
    server.close()
