"""Roles (issue #7): every endpoint against every kind of key, table-driven.

Keys come from settings (``client_keys``, ``engine_keys`` with ``KEY@ENGINE_ID`` for a
bound engine key) or from the key file (``ROLE KEY [ENGINE_ID]`` lines); both sources
give the same table. A bound engine key acts as its own engine only: claiming another
engine is ``403``, and it reads only the jobs its engine holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dispatch import cli
from dispatch.app import make_keyring
from dispatch.config.settings import Settings, SettingsError, load_settings
from dispatch.http.auth import KeyFileError
from dispatch.http.converters import route_label
from tests.conftest import API_KEY, JOB

ADMIN2 = "admin-key-two-0123456789"
CLIENT1, CLIENT2 = "client-key-one-0123456789", "client-key-two-0123456789"
ENGINE1, ENGINE2 = "engine-key-one-0123456789", "engine-key-two-0123456789"
BOUND1, BOUND2 = "bound-key-one-0123456789", "bound-key-two-0123456789"
MINE, OTHER = "engine-b1", "engine-b2"  # the engines BOUND1 and BOUND2 are bound to

KEYS = {
    "admin": API_KEY,
    "client": CLIENT1,
    "engine": ENGINE1,
    "bound": BOUND1,
    "wrong": "not-a-key-0123456789abcdef",
}
ROLES = ("admin", "client", "engine", "bound")
PRINCIPALS = (*ROLES, "none", "wrong")

EVERYONE = frozenset(PRINCIPALS)
WRITERS = frozenset({"admin", "client"})
READERS = frozenset({"admin", "client", "engine", "bound"})
REPORTERS = frozenset({"admin", "engine", "bound"})
OPERATORS = frozenset({"admin"})

# (method, Flask rule) -> (who may call it, JSON body). {job} and {engine} in the rule
# are a job assigned to MINE and MINE itself, so a bound key acts on its own things.
TABLE: dict[tuple[str, str], tuple[frozenset[str], dict[str, Any] | None]] = {
    ("POST", "/jobs/"): (WRITERS, JOB),
    ("POST", "/jobs/batch"): (WRITERS, {"jobs": [JOB]}),
    ("GET", "/jobs/"): (WRITERS, None),
    ("GET", "/jobs/<job_id>"): (READERS, None),
    ("GET", "/jobs/<job_id>/events"): (WRITERS, None),
    ("GET", "/jobs/<job_id>/chunks"): (WRITERS, None),
    ("DELETE", "/jobs/<job_id>"): (WRITERS, None),
    ("POST", "/jobs/<job_id>/progress"): (REPORTERS, {"progress": 50}),
    ("POST", "/jobs/<job_id>/complete"): (REPORTERS, {"output_url": "http://example.com/o"}),
    ("POST", "/jobs/<job_id>/fail"): (REPORTERS, {"error_message": "decoder crashed"}),
    ("POST", "/jobs/<job_id>/retry"): (WRITERS, None),
    ("POST", "/jobs/<job_id>/priority"): (WRITERS, {"priority": 5}),
    ("POST", "/engines/heartbeat"): (REPORTERS, {"engine_id": MINE}),
    ("POST", "/engines/benchmark_result"): (REPORTERS, {"engine_id": MINE,
                                                        "benchmark_time": 12.5}),
    ("GET", "/engines/"): (OPERATORS, None),
    ("GET", "/engines/<engine_id>"): (OPERATORS, None),
    ("DELETE", "/engines/<engine_id>"): (OPERATORS, None),
    ("POST", "/engines/<engine_id>/drain"): (OPERATORS, None),
    ("DELETE", "/engines/<engine_id>/drain"): (OPERATORS, None),
    ("POST", "/assign_job/"): (REPORTERS, {"engine_id": MINE}),
    ("GET", "/health"): (EVERYONE, None),
    ("GET", "/stats"): (WRITERS, None),
    ("GET", "/metrics"): (EVERYONE, None),
    ("GET", "/auth/blocks"): (OPERATORS, None),
    ("DELETE", "/auth/blocks/<address>"): (OPERATORS, None),
    ("POST", "/uploads"): (WRITERS, {"filename": "clip.mp4", "size": 10}),
    ("GET", "/uploads/<upload_id>"): (WRITERS, None),
    ("POST", "/uploads/<upload_id>/complete"): (WRITERS, {"parts": [
        {"part_number": 1, "etag": "x"}]}),
    ("POST", "/jobs/<job_id>/output_upload"): (REPORTERS, {"size": 10}),
    ("GET", "/jobs/<job_id>/output"): (READERS, None),
}
# Not API endpoints: the OpenAPI document and Flask's static route; the embedded
# store's signed URLs, where the URL is the permission (tests/api/test_files.py); and
# the dashboard (ui.*), which signs in with a session, not X-API-Key (tests/ui/test_ui.py).
NOT_IN_TABLE = {"api-docs.openapi_json", "static", "files.put_part", "files.get_object"}
DASHBOARD = "ui."


def _key_file(folder: Path) -> str:
    path = folder / "keys.txt"
    path.write_text(
        "# role key [engine]\n"
        f"admin {ADMIN2}\n"
        f"client {CLIENT1}\n"
        f"client   {CLIENT2}   # a second client key, valid at the same time\n"
        "\n"
        f"engine {ENGINE1}\n"
        f"ENGINE {ENGINE2}\n"
        f"engine {BOUND1} {MINE}\n"
        f"engine {BOUND2} {OTHER}\n",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture(params=["settings", "key_file"])
def role_settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings],
                  tmp_path: Path) -> Settings:
    """The same keys, from settings or from the key file."""
    if request.param == "settings":
        return make_settings(client_keys=(CLIENT1, CLIENT2),
                             engine_keys=(ENGINE1, ENGINE2, f"{BOUND1}@{MINE}",
                                          f"{BOUND2}@{OTHER}"))
    return make_settings(keys_file=_key_file(tmp_path))


@pytest.fixture
def role_app(make_app: Callable[..., Flask], role_settings: Settings) -> Flask:
    return make_app(role_settings)


@pytest.fixture
def role_client(role_app: Flask) -> FlaskClient:
    return role_app.test_client()


def _as(principal: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[principal]} if principal in KEYS else {}


def _admin(client: FlaskClient, method: str, path: str, body: Any = None) -> Any:
    response = client.open(path, method=method, json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code < 300, response.get_data(as_text=True)
    return response.get_json()


def _world(client: FlaskClient) -> dict[str, str]:
    """Engines MINE and OTHER, each holding one job, and one job still pending."""
    ids = {}
    for engine in (MINE, OTHER):
        _admin(client, "POST", "/engines/heartbeat",
               {"engine_id": engine, "supported_codecs": [engine]})
        ids[engine] = _admin(client, "POST", "/jobs/", {**JOB, "target_codec": engine})["job_id"]
        assigned = _admin(client, "POST", "/assign_job/", {"engine_id": engine})
        assert assigned["job_id"] == ids[engine]
    ids["pending"] = _admin(client, "POST", "/jobs/", JOB)["job_id"]
    return ids


def assert_error(response: TestResponse, status: int, code: str) -> None:
    """The contract's error shape, with this status and code."""
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) <= {"code", "message", "details"}


def test_the_table_names_every_endpoint(app: Flask) -> None:
    """A new endpoint cannot slip past the role table: every routed (method, rule) of
    the app is in it, and nothing in it is unrouted."""
    routed = {
        (method, route_label(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in NOT_IN_TABLE and not rule.endpoint.startswith(DASHBOARD)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routed == set(TABLE)


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize(("method", "rule"), list(TABLE), ids=[f"{m} {r}" for m, r in TABLE])
def test_each_role_against_each_endpoint(role_client: FlaskClient, method: str, rule: str,
                                         principal: str) -> None:
    """Allowed: neither 401 nor 403 (nor a 5xx). A role that may not: 403 forbidden.
    No key or a wrong key on a protected endpoint: 401 unauthorized."""
    allowed, body = TABLE[(method, rule)]
    ids = _world(role_client)
    path = rule.replace("<job_id>", ids[MINE]).replace("<engine_id>", MINE) \
        .replace("<address>", "192.0.2.1")
    response = role_client.open(path, method=method, json=body, headers=_as(principal))
    if principal in allowed:
        assert response.status_code not in (401, 403), response.get_data(as_text=True)
        assert response.status_code < 500, response.get_data(as_text=True)
    elif principal in ("none", "wrong"):
        assert_error(response, 401, "unauthorized")
    else:
        assert_error(response, 403, "forbidden")


ACTING = {
    "heartbeat": ("/engines/heartbeat", {"engine_id": OTHER}),
    "assign": ("/assign_job/", {"engine_id": OTHER}),
    "benchmark": ("/engines/benchmark_result", {"engine_id": OTHER, "benchmark_time": 1.0}),
    "progress": ("/jobs/{job}/progress", {"engine_id": OTHER, "progress": 50}),
    "complete": ("/jobs/{job}/complete", {"engine_id": OTHER, "output_url": "http://e/o"}),
    "fail": ("/jobs/{job}/fail", {"engine_id": OTHER, "error_message": "lost"}),
}


@pytest.mark.parametrize("action", list(ACTING))
def test_bound_engine_key_acting_as_another_engine_is_403(role_client: FlaskClient,
                                                          action: str) -> None:
    """A key bound to MINE that names OTHER (on OTHER's own job, where it applies):
    403 forbidden, and neither OTHER nor its job changes."""
    ids = _world(role_client)
    before_engine = _admin(role_client, "GET", f"/engines/{OTHER}")
    before_job = _admin(role_client, "GET", f"/jobs/{ids[OTHER]}")
    path, body = ACTING[action]
    response = role_client.post(path.format(job=ids[OTHER]), json=body, headers=_as("bound"))
    assert_error(response, 403, "forbidden")
    assert _admin(role_client, "GET", f"/engines/{OTHER}") == before_engine
    assert _admin(role_client, "GET", f"/jobs/{ids[OTHER]}") == before_job


@pytest.mark.parametrize("action", ["progress", "complete", "fail"])
def test_bound_engine_key_cannot_report_on_another_engines_job(role_client: FlaskClient,
                                                               action: str) -> None:
    """Without naming an engine, a bound key reports as its own engine: on OTHER's job
    that is refused (403 or 409) and the job does not change."""
    ids = _world(role_client)
    before = _admin(role_client, "GET", f"/jobs/{ids[OTHER]}")
    path, body = ACTING[action]
    body = {key: value for key, value in body.items() if key != "engine_id"}
    response = role_client.post(path.format(job=ids[OTHER]), json=body, headers=_as("bound"))
    assert response.status_code in (403, 409), response.get_data(as_text=True)
    assert_error(response, response.status_code,
                 "forbidden" if response.status_code == 403 else "conflict")
    assert _admin(role_client, "GET", f"/jobs/{ids[OTHER]}") == before


def test_bound_engine_key_naming_itself_or_nobody_acts_as_its_engine(
    role_client: FlaskClient,
) -> None:
    """Naming its own engine, or none, works: progress on its own job with and without
    engine_id, then a heartbeat."""
    ids = _world(role_client)
    for body in ({"progress": 10}, {"progress": 20, "engine_id": MINE}):
        response = role_client.post(f"/jobs/{ids[MINE]}/progress", json=body,
                                    headers=_as("bound"))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["progress"] == body["progress"]
    response = role_client.post("/engines/heartbeat", json={"engine_id": MINE},
                                headers=_as("bound"))
    assert response.status_code == 200
    assert response.get_json()["engine_id"] == MINE


@pytest.mark.parametrize("whose", [OTHER, "pending"])
def test_bound_engine_key_reading_a_job_not_its_own_is_403(role_client: FlaskClient,
                                                           whose: str) -> None:
    """A bound key reads the jobs its engine holds only: another engine's job, or a job
    nobody holds, is 403 forbidden. Its own job and an unknown id are as usual."""
    ids = _world(role_client)
    assert_error(role_client.get(f"/jobs/{ids[whose]}", headers=_as("bound")), 403,
                 "forbidden")
    assert role_client.get(f"/jobs/{ids[MINE]}", headers=_as("bound")).status_code == 200
    assert_error(role_client.get("/jobs/1_1", headers=_as("bound")), 404, "not_found")


def test_unbound_engine_key_acts_as_any_engine_and_reads_any_job(
    role_client: FlaskClient,
) -> None:
    """An engine key bound to nothing may act as any engine and read any job."""
    ids = _world(role_client)
    for engine in (MINE, OTHER):
        response = role_client.post("/engines/heartbeat", json={"engine_id": engine},
                                    headers=_as("engine"))
        assert response.status_code == 200
    for job_id in ids.values():
        assert role_client.get(f"/jobs/{job_id}", headers=_as("engine")).status_code == 200


def test_several_keys_per_role_are_valid_at_once(role_client: FlaskClient) -> None:
    """Both client keys, both engine keys and both bound keys work side by side, each
    with its own role."""
    _world(role_client)
    for key in (CLIENT1, CLIENT2):
        assert role_client.post("/jobs/", json=JOB, headers={"X-API-Key": key}).status_code == 201
        assert_error(role_client.get("/engines/", headers={"X-API-Key": key}), 403, "forbidden")
    for key in (ENGINE1, ENGINE2):
        response = role_client.post("/engines/heartbeat", json={"engine_id": "free-engine"},
                                    headers={"X-API-Key": key})
        assert response.status_code == 200
        assert_error(role_client.post("/jobs/", json=JOB, headers={"X-API-Key": key}), 403,
                     "forbidden")
    for key, engine, other in ((BOUND1, MINE, OTHER), (BOUND2, OTHER, MINE)):
        headers = {"X-API-Key": key}
        assert role_client.post("/engines/heartbeat", json={"engine_id": engine},
                                headers=headers).status_code == 200
        assert_error(role_client.post("/engines/heartbeat", json={"engine_id": other},
                                      headers=headers), 403, "forbidden")


def test_admin_key_from_the_key_file_is_an_admin(make_app: Callable[..., Flask],
                                                 make_settings: Callable[..., Settings],
                                                 tmp_path: Path) -> None:
    """An ``admin`` line of the key file is a second admin key beside ``api_key``."""
    client = make_app(make_settings(keys_file=_key_file(tmp_path))).test_client()
    for key in (API_KEY, ADMIN2):
        assert client.get("/engines/", headers={"X-API-Key": key}).status_code == 200


def test_keys_from_settings_and_key_file_are_valid_together(
    make_app: Callable[..., Flask], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Settings keys and key-file keys add up; neither source hides the other."""
    extra = "client-key-from-settings-0123"
    settings = make_settings(keys_file=_key_file(tmp_path), client_keys=(extra,),
                             engine_keys=("engine-key-from-settings-0123@engine-s",))
    client = make_app(settings).test_client()
    for key in (extra, CLIENT1, CLIENT2):
        assert client.get("/jobs/", headers={"X-API-Key": key}).status_code == 200
    response = client.post("/engines/heartbeat", json={"engine_id": "engine-x"},
                           headers={"X-API-Key": "engine-key-from-settings-0123"})
    assert_error(response, 403, "forbidden")


@pytest.mark.parametrize("item", ["engine-key-0123456789@", "engine-key-0123456789@bad/id",
                                  "engine-key-0123456789@a@b"])
def test_engine_keys_setting_refuses_an_empty_or_unsafe_engine_id(item: str) -> None:
    """``KEY@`` must not quietly become an engine key bound to nothing (which may act as
    any engine), nor ``KEY@ID`` bind to an id no engine can have: the setting is refused,
    as the key file refuses such a line."""
    with pytest.raises(SettingsError) as raised:
        load_settings([], {"DISTCONV_API_KEY": API_KEY, "DISTCONV_ENGINE_KEYS": item})
    assert "DISTCONV_ENGINE_KEYS" in str(raised.value)
    assert "engine-key-0123456789" not in str(raised.value)


BAD_HEADERS = {
    "empty": {"X-API-Key": ""},
    "prefix": {"X-API-Key": CLIENT1[:-1]},
    "longer": {"X-API-Key": CLIENT1 + "x"},
    "other-case": {"X-API-Key": CLIENT1.upper()},
    "bound-without-engine": {"X-API-Key": f"{BOUND1}@{MINE}"},
    "bearer-instead": {"Authorization": f"Bearer {CLIENT1}"},
}


@pytest.mark.parametrize("headers", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_near_miss_role_keys_are_401(role_client: FlaskClient, headers: dict[str, str]) -> None:
    """Only the exact key is a key: a prefix, an extension, another case, the
    ``KEY@ENGINE`` setting form or another header is 401."""
    assert_error(role_client.get("/jobs/", headers=headers), 401, "unauthorized")


BAD_KEY_FILES = {
    "unknown role": "operator {key}\n",
    "short key": "client short\n",
    "engine id on a client": "client {key} engine-1\n",
    "unsafe engine id": "engine {key} engine/../1\n",
    "too many fields": "engine {key} engine-1 extra\n",
    "no key": "client\n",
}


@pytest.mark.parametrize("text", list(BAD_KEY_FILES.values()), ids=list(BAD_KEY_FILES))
def test_malformed_key_file_is_refused_naming_the_line_not_the_key(
    make_settings: Callable[..., Settings], tmp_path: Path, text: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad line stops the start (exit 2) with a message naming the file and line;
    the message never repeats a key."""
    key = "secret-key-in-file-0123456789"
    path = tmp_path / "keys.txt"
    path.write_text(f"client {CLIENT1}\n" + text.format(key=key), encoding="utf-8")
    with pytest.raises(KeyFileError) as raised:
        make_keyring(make_settings(keys_file=str(path)))
    assert "line 2" in str(raised.value)
    assert key not in str(raised.value) and CLIENT1 not in str(raised.value)

    status = cli.main(["--api-key", API_KEY, "--keys-file", str(path),
                       "--state-file", str(tmp_path / "state.json")])
    assert status == 2
    err = capsys.readouterr().err
    assert "line 2" in err and str(path) in err
    assert key not in err and CLIENT1 not in err and API_KEY not in err
