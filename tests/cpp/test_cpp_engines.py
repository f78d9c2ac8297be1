"""Issue #13, items 1 and 2: the original farm's engines and job codec names.

The earlier C++ engine sends ``local_job_queue`` as a string and its ffmpeg probe
results as telemetry; jobs name encoders (``libx264``) where engines advertise codecs
(``h264``). Both must run end to end through the HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatch.domain import codecs
from tests.conftest import JOB

Json = dict[str, Any]

# What the earlier engine of the original project sends, byte for byte in its types:
# its queue as a JSON string, its ffmpeg probe results as strings, a temperature.
EARLIER_ENGINE_HEARTBEAT = {
    "engine_id": "engine-7f3a9c21",
    "status": "idle",
    "storage_capacity_gb": 500.0,
    "streaming_support": False,
    "encoders": "",
    "decoders": "",
    "hwaccels": "",
    "cpu_temperature": 47.5,
    "local_job_queue": "[]",
    "hostname": "worker-01",
}


def post(client: FlaskClient, auth: dict[str, str], path: str, body: Json) -> Any:
    return client.post(path, json=body, headers=auth)


def test_earlier_engine_registers_gets_work_and_keeps_its_telemetry(
        client: FlaskClient, auth: dict[str, str], submit: Callable[..., Json]) -> None:
    """The earlier engine's exact heartbeat registers (200), its telemetry is kept as
    sent, and it is given a job and completes it."""
    response = post(client, auth, "/engines/heartbeat", EARLIER_ENGINE_HEARTBEAT)
    assert response.status_code == 200, response.get_data(as_text=True)
    engine = response.get_json()
    assert engine["local_job_queue"] == []
    assert engine["telemetry"] == {"encoders": "", "decoders": "", "hwaccels": "",
                                   "cpu_temperature": 47.5}
    assert client.get("/engines/engine-7f3a9c21", headers=auth).get_json()["telemetry"] \
        == engine["telemetry"]

    job = submit()
    assigned = post(client, auth, "/assign_job/", {"engine_id": "engine-7f3a9c21"})
    assert assigned.status_code == 200
    assert assigned.get_json()["job_id"] == job["job_id"]
    # The next heartbeat lists the job in its queue, still as a string.
    beat = post(client, auth, "/engines/heartbeat", {
        **EARLIER_ENGINE_HEARTBEAT, "status": "busy",
        "local_job_queue": f'["{job["job_id"]}"]'})
    assert beat.status_code == 200
    assert beat.get_json()["local_job_queue"] == [job["job_id"]]
    done = post(client, auth, f"/jobs/{job['job_id']}/complete",
                {"output_url": "http://out.example.com/x.mp4"})
    assert done.status_code == 200 and done.get_json()["status"] == "completed"


@pytest.mark.parametrize(("field", "value"), [
    ("streaming_support", 1),
    ("streaming_support", 0),
    ("streaming_support", "true"),
    ("supported_codecs", "h264"),
    ("storage_capacity_gb", "500"),
    ("storage_capacity_gb", True),
    ("benchmark_time", "12.5"),
    ("local_job_queue", "j1"),
    ("local_job_queue", '{"a": 1}'),
    ("local_job_queue", "[1, 2]"),
    ("local_job_queue", '[""]'),
    ("local_job_queue", None),
])
def test_fields_the_scheduler_uses_stay_strict(client: FlaskClient, auth: dict[str, str],
                                               field: str, value: Any) -> None:
    """A number is never a boolean, a string never a number or a codec list, and a
    queue string must hold a JSON list of ids: 400 naming the field, nothing kept."""
    response = post(client, auth, "/engines/heartbeat",
                    {**EARLIER_ENGINE_HEARTBEAT, field: value})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in response.get_json()["error"]["details"]
    assert client.get("/engines/", headers=auth).get_json() == {"engines": []}


def test_telemetry_of_any_json_type_is_kept_and_survives_a_restart(
        client: FlaskClient, auth: dict[str, str], make_app: Callable[..., Any],
        settings: Any) -> None:
    telemetry = {"encoders": ["libx264", "hevc_nvenc"], "gpu": {"name": "T4", "mem": 16},
                 "ok": True, "load": None, "cores": 8, "note": "é"}
    response = post(client, auth, "/engines/heartbeat", {"engine_id": "e1", **telemetry})
    assert response.get_json()["telemetry"] == telemetry
    client.application.extensions["dispatch.runtime"].shutdown()
    again = make_app(settings).test_client()
    assert again.get("/engines/e1", headers=auth).get_json()["telemetry"] == telemetry


def test_telemetry_is_bounded(client: FlaskClient, auth: dict[str, str]) -> None:
    """More than 16 KiB of telemetry is refused (400) and the engine is not changed."""
    assert post(client, auth, "/engines/heartbeat", {"engine_id": "e1", "x": 1}).status_code \
        == 200
    response = post(client, auth, "/engines/heartbeat",
                    {"engine_id": "e1", "dump": "x" * 17000})
    assert response.status_code == 400
    assert "telemetry" in str(response.get_json()["error"]["details"])
    assert client.get("/engines/e1", headers=auth).get_json()["telemetry"] == {"x": 1}


# ------------------------------------------------------------------ codec families

ALIASES = [(family, name) for family, names in codecs.FAMILIES.items()
           for name in names if name != family]


@pytest.mark.parametrize(("family", "alias"), ALIASES, ids=[a for _, a in ALIASES])
@pytest.mark.parametrize("direction", ["alias-job", "alias-engine"])
def test_each_alias_matches_its_family_both_ways(
        client: FlaskClient, auth: dict[str, str], family: str, alias: str,
        direction: str) -> None:
    """A ``libx264`` job runs on an ``h264`` engine and an ``h264`` job on a
    ``libx264`` engine; the job keeps the codec it was submitted with."""
    job_codec, engine_codec = (alias, family) if direction == "alias-job" else (family, alias)
    response = post(client, auth, "/jobs/", {**JOB, "target_codec": job_codec})
    assert response.status_code == 201
    job = response.get_json()
    assert job["waiting_reason"]["code"] == "no_engine_for_codec"
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1",
                                              "supported_codecs": [engine_codec]})
    assigned = post(client, auth, "/assign_job/", {"engine_id": "e1"})
    assert assigned.status_code == 200, f"{job_codec} job not given to {engine_codec} engine"
    assert (assigned.get_json()["job_id"], assigned.get_json()["target_codec"]) \
        == (job["job_id"], job_codec)


@pytest.mark.parametrize(("family", "alias"), [("h264", "libx264"), ("h265", "hevc"),
                                               ("vp9", "libvpx-vp9"), ("av1", "libsvtav1")])
def test_capabilities_match_by_family(client: FlaskClient, auth: dict[str, str],
                                      family: str, alias: str) -> None:
    """The codecs an engine asks with (``capabilities``) match by family as well."""
    post(client, auth, "/jobs/", {**JOB, "target_codec": alias})
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1"})
    assert post(client, auth, "/assign_job/",
                {"engine_id": "e1", "capabilities": ["mpeg4"]}).status_code == 204
    assert post(client, auth, "/assign_job/",
                {"engine_id": "e1", "capabilities": [family]}).status_code == 200


def test_other_families_and_unknown_names_do_not_match(
        client: FlaskClient, auth: dict[str, str]) -> None:
    """``libx265`` is not ``h264``; a name outside the table matches only itself,
    exactly as written."""
    for codec in ("libx265", "H264X"):
        post(client, auth, "/jobs/", {**JOB, "target_codec": codec})
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1", "supported_codecs": ["h264"]})
    assert post(client, auth, "/assign_job/", {"engine_id": "e1"}).status_code == 204
    post(client, auth, "/engines/heartbeat", {"engine_id": "e2", "supported_codecs": ["h264x"]})
    assert post(client, auth, "/assign_job/", {"engine_id": "e2"}).status_code == 204
    post(client, auth, "/engines/heartbeat", {"engine_id": "e3", "supported_codecs": ["H264X"]})
    got = post(client, auth, "/assign_job/", {"engine_id": "e3"})
    assert got.status_code == 200 and got.get_json()["target_codec"] == "H264X"


def test_waiting_reason_names_the_family(client: FlaskClient, auth: dict[str, str],
                                         submit: Callable[..., Json]) -> None:
    job = submit(target_codec="libx265")
    assert job["waiting_reason"]["message"] == \
        "no active engine supports codec 'libx265' (family h265)"
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1", "supported_codecs": ["hevc"],
                                              "storage_capacity_gb": 0.01})
    reason = client.get(f"/jobs/{job['job_id']}", headers=auth).get_json()["waiting_reason"]
    assert reason["code"] == "no_engine_with_room"
    assert "'libx265' (family h265)" in reason["message"]
    post(client, auth, "/engines/heartbeat", {"engine_id": "e1", "storage_capacity_gb": 100})
    older = submit(target_codec="h265")
    reason = client.get(f"/jobs/{older['job_id']}", headers=auth).get_json()["waiting_reason"]
    # One line per family: the h265 job is behind the libx265 one.
    assert (reason["code"], reason["position"]) == ("queued", 2)
    assert reason["message"] == "number 2 in line for codec 'h265'"
