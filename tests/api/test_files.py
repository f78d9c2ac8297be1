"""Issue #21 through the API: uploads in parts, their limits, the embedded store's
signed URLs (tampered, expired, for another object: 403), file names that try to
leave the store, de-duplication by SHA-256, and an engine's output checked in the
store before its job is completed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dispatch.config.settings import Settings
from dispatch.service.files import UPLOAD_LIFETIME
from tests.conftest import BOTH_BACKENDS, FakeClock
from tests.support.helpers import assert_error

# The store is the same on both; a job's output is kept in its record on each backend.
pytestmark = BOTH_BACKENDS
MiB = 1 << 20


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(upload_part_mb=5, max_upload_gb=0.1)


def local(url: str) -> str:
    """The path and query of a signed URL (the test client has no network)."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.netloc == "localhost", url
    return f"{parts.path}?{parts.query}"


def start(client: FlaskClient, auth: dict[str, str], size: int, name: str = "clip.mp4",
          **extra: Any) -> TestResponse:
    return client.post("/uploads", json={"filename": name, "size": size, **extra},
                       headers=auth)


def put_parts(client: FlaskClient, upload: dict[str, Any], data: bytes) -> list[dict[str, Any]]:
    done, offset = [], 0
    for part in upload["parts"]:
        response = client.put(local(part["url"]), data=data[offset:offset + part["size"]])
        assert response.status_code == 200, response.get_data(as_text=True)
        done.append({"part_number": part["part_number"],
                     "etag": response.headers["ETag"].strip('"')})
        offset += part["size"]
    return done


def read(client: FlaskClient, url: str, **kwargs: Any) -> TestResponse:
    """GET a file URL; the response is read whole and closed (it streams a file)."""
    response = client.get(url, **kwargs)
    response.get_data()
    response.close()
    return response


def store_root(settings: Settings) -> Path:
    return Path(settings.state_file).parent / "files"


def test_upload_in_parts_and_read_back_with_ranges(client: FlaskClient, auth: dict[str, str],
                                                   settings: Settings) -> None:
    data = os.urandom(11 * MiB + 5)
    created = start(client, auth, len(data))
    assert created.status_code == 201
    upload = created.get_json()
    assert [p["size"] for p in upload["parts"]] == [5 * MiB, 5 * MiB, MiB + 5]
    assert [p["part_number"] for p in upload["parts"]] == [1, 2, 3]
    assert upload["source_url"] == f"store://sources/{upload['upload_id']}/clip.mp4"
    parts = put_parts(client, upload, data)
    # A part may be sent again: the last one sent counts, named by its own ETag.
    again = client.put(local(upload["parts"][1]["url"]), data=data[5 * MiB:10 * MiB])
    assert again.status_code == 200 and again.headers["ETag"].strip('"') != parts[1]["etag"]
    stale = client.post(f"/uploads/{upload['upload_id']}/complete", json={"parts": parts},
                        headers=auth)
    assert_error(stale, 409, "conflict")
    parts[1]["etag"] = again.headers["ETag"].strip('"')
    done = client.post(f"/uploads/{upload['upload_id']}/complete", json={"parts": parts},
                       headers=auth)
    assert done.status_code == 200, done.get_json()
    assert done.get_json() == {"upload_id": upload["upload_id"],
                               "source_url": upload["source_url"], "size": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()}
    # Completed twice: 409, and the file stays as it was.
    twice = client.post(f"/uploads/{upload['upload_id']}/complete", json={"parts": parts},
                        headers=auth)
    assert_error(twice, 409, "conflict")
    job = client.post("/jobs/", json={"source_url": upload["source_url"], "target_codec": "h264",
                                      "job_size": 1}, headers=auth)
    assert job.status_code == 201
    client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    assigned = client.post("/assign_job/", json={"engine_id": "e1"}, headers=auth).get_json()
    source = local(assigned["source_url"])
    assert source.startswith("/files/o/sources/")
    whole = read(client, source)
    assert whole.status_code == 200 and whole.data == data
    ranged = read(client, source, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.data == data[100:200]
    # The job's own source_url is the store:// form; the signed one is the engine's.
    got = client.get(f"/jobs/{assigned['job_id']}", headers=auth).get_json()
    assert got["source_url"] == upload["source_url"]


def test_limits_and_parts_that_do_not_add_up(client: FlaskClient, auth: dict[str, str],
                                              settings: Settings) -> None:
    too_big = start(client, auth, 100_000_001)
    error = assert_error_with_details(too_big)
    assert "max_upload_gb" in error["details"]["size"][0]
    data = os.urandom(6 * MiB)
    upload = start(client, auth, len(data)).get_json()
    first = client.put(local(upload["parts"][0]["url"]), data=data[:5 * MiB])
    etag = first.headers["ETag"].strip('"')
    # A part missing: 409, nothing stored.
    missing = client.post(f"/uploads/{upload['upload_id']}/complete",
                          json={"parts": [{"part_number": 1, "etag": etag}]}, headers=auth)
    assert_error(missing, 409, "conflict")
    never_sent = client.post(f"/uploads/{upload['upload_id']}/complete", json={"parts": [
        {"part_number": 1, "etag": etag}, {"part_number": 2, "etag": "0" * 32}]}, headers=auth)
    assert_error(never_sent, 409, "conflict")
    # A part of the wrong size is refused when it is sent.
    short = client.put(local(upload["parts"][1]["url"]), data=data[:10])
    assert_error(short, 400, "bad_request")
    assert not list((store_root(settings) / "objects").rglob("*.mp4"))
    unknown = client.post(f"/uploads/{'0' * 32}/complete",
                          json={"parts": [{"part_number": 1, "etag": "x"}]}, headers=auth)
    assert_error(unknown, 404, "not_found")
    # A store:// source the store does not hold is refused at submission.
    bad = client.post("/jobs/", json={"source_url": f"store://sources/{'1' * 32}/x.mp4",
                                      "target_codec": "h264", "job_size": 1}, headers=auth)
    assert bad.status_code == 400


def assert_error_with_details(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 400, response.get_data(as_text=True)
    return response.get_json()["error"]


def test_signed_urls_refuse_tampering_expiry_and_other_objects(
        client: FlaskClient, auth: dict[str, str], clock: FakeClock) -> None:
    data = os.urandom(1000)
    upload = start(client, auth, len(data)).get_json()
    url = local(upload["parts"][0]["url"])
    path, query = url.split("?")
    tampered_sig = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert_error(client.put(tampered_sig, data=data), 403, "forbidden")
    later = query.replace("expires=", "expires=9")
    assert_error(client.put(f"{path}?{later}", data=data), 403, "forbidden")
    assert_error(client.put(path, data=data), 403, "forbidden")  # no signature at all
    # A part URL used for another part, or read with GET: 403.
    other = path.replace("/1/", "/2/")
    assert_error(client.put(f"{other}?{query}", data=data), 403, "forbidden")
    parts = put_parts(client, upload, data)
    assert client.post(f"/uploads/{upload['upload_id']}/complete", json={"parts": parts},
                       headers=auth).status_code == 200
    second = start(client, auth, 10, name="other.mp4").get_json()
    put_parts(client, second, b"0123456789")
    client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    client.post("/jobs/", json={"source_url": upload["source_url"], "target_codec": "h264",
                                "job_size": 1}, headers=auth)
    get_url = local(client.post("/assign_job/", json={"engine_id": "e1"},
                                headers=auth).get_json()["source_url"])
    assert read(client, get_url).data == data
    get_path, get_query = get_url.split("?")
    elsewhere = get_path.rsplit("/", 2)[0] + f"/{second['upload_id']}/other.mp4"
    assert_error(client.get(f"{elsewhere}?{get_query}"), 403, "forbidden")
    assert_error(client.put(get_url, data=b"x"), 405, "method_not_allowed")
    clock.advance(UPLOAD_LIFETIME * 2)
    assert_error(read(client, get_url), 403, "forbidden")
    assert_error(client.put(local(second["parts"][0]["url"]), data=b"0123456789"),
                 403, "forbidden")


def test_a_path_in_a_file_name_stores_nothing_outside_the_store(
        client: FlaskClient, auth: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    before = set(tmp_path.rglob("*"))
    upload = start(client, auth, 4, name="../../etc/passwd").get_json()
    assert upload["source_url"].endswith("/passwd")
    parts = put_parts(client, upload, b"root")
    done = client.post(f"/uploads/{upload['upload_id']}/complete", json={"parts": parts},
                       headers=auth)
    assert done.status_code == 200
    root = store_root(settings)
    created = {p for p in set(tmp_path.rglob("*")) - before if p.is_file()}
    outside = {p for p in created if root not in p.parents}
    # Beside the store, only its URL-signing secret (made on first use) is new.
    assert outside <= {Path(settings.state_file + ".files-secret")}, outside
    assert [p for p in created if p.name == "passwd"] == [
        root / "objects" / "sources" / upload["upload_id"] / "passwd"]
    assert (root / "objects" / "sources" / upload["upload_id"] / "passwd").read_bytes() == b"root"
    # A client cannot name a path in the store either.
    for source in ("store://../../etc/passwd", "store://sources/../../../etc/passwd"):
        answer = client.post("/jobs/", json={"source_url": source, "target_codec": "h264",
                                             "job_size": 1}, headers=auth)
        assert answer.status_code == 400
    assert client.get("/files/o/../../etc/passwd?expires=1&signature=x").status_code in (403,
                                                                                          404)


def test_same_content_is_sent_once(client: FlaskClient, auth: dict[str, str]) -> None:
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    first = start(client, auth, len(data), sha256=digest)
    assert first.status_code == 201
    upload = first.get_json()
    client.post(f"/uploads/{upload['upload_id']}/complete",
                json={"parts": put_parts(client, upload, data)}, headers=auth)
    again = start(client, auth, len(data), name="renamed.mp4", sha256=digest)
    assert again.status_code == 200
    assert again.get_json() == {"upload_id": None, "source_url": upload["source_url"],
                                "parts": [], "size": len(data), "expires_at": None}
    # A wrong SHA-256 announced: the upload is refused at completion, nothing kept.
    liar = start(client, auth, len(data), sha256="0" * 64).get_json()
    refused = client.post(f"/uploads/{liar['upload_id']}/complete",
                          json={"parts": put_parts(client, liar, data)}, headers=auth)
    assert_error(refused, 409, "conflict")
    assert start(client, auth, len(data), sha256="0" * 64).status_code == 201


def stored_output(client: FlaskClient, auth: dict[str, str], output: bytes,
                  engine_id: str = "e1") -> dict[str, Any]:
    """A job taken by ``engine_id`` and completed with ``output`` in the store."""
    job_id = client.post("/jobs/", json={"source_url": "http://example.com/a.mp4",
                                         "target_codec": "h264", "job_size": 1},
                         headers=auth).get_json()["job_id"]
    client.post("/engines/heartbeat", json={"engine_id": engine_id}, headers=auth)
    client.post("/assign_job/", json={"engine_id": engine_id}, headers=auth)
    upload = client.post(f"/jobs/{job_id}/output_upload", json={
        "engine_id": engine_id, "size": len(output), "extension": "mp4"},
        headers=auth).get_json()
    done = client.post(f"/jobs/{job_id}/complete", headers=auth, json={
        "engine_id": engine_id, "output_url": upload["source_url"],
        "upload_id": upload["upload_id"], "size": len(output),
        "parts": put_parts(client, upload, output)})
    assert done.status_code == 200, done.get_json()
    return done.get_json()


def test_purging_a_job_removes_its_output(make_app: Callable[..., Any],
                                          make_settings: Callable[..., Settings],
                                          auth: dict[str, str], clock: FakeClock) -> None:
    settings = make_settings(finished_job_retention=60.0)
    app = make_app(settings)
    client = app.test_client()
    job = stored_output(client, auth, b"an output")
    objects = store_root(settings) / "objects"
    assert [p.name for p in objects.rglob("*") if p.is_file()] == [
        f"{job['job_id']}-1.mp4"]
    clock.advance(61)
    assert app.extensions["dispatch"].maintenance.purge() == 1
    assert not [p for p in objects.rglob("*") if p.is_file()]
    assert_error(client.get(f"/jobs/{job['job_id']}/output", headers=auth), 404, "not_found")


def test_output_checked_in_the_store_before_completed(client: FlaskClient,
                                                      auth: dict[str, str]) -> None:
    job = client.post("/jobs/", json={"source_url": "http://example.com/a.mp4",
                                      "target_codec": "h264", "job_size": 1},
                      headers=auth).get_json()
    job_id = job["job_id"]
    assert_error(client.get(f"/jobs/{job_id}/output", headers=auth), 409, "conflict")
    assert_error(client.get("/jobs/nope/output", headers=auth), 404, "not_found")
    client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    assigned = client.post("/assign_job/", json={"engine_id": "e1"}, headers=auth).get_json()
    assert assigned["output_upload"].endswith(f"/jobs/{job_id}/output_upload")
    output = os.urandom(7000)
    made = client.post(f"/jobs/{job_id}/output_upload", json={
        "engine_id": "e1", "attempt": 1, "size": len(output), "extension": "mp4",
        "content_type": "video/mp4"}, headers=auth)
    assert made.status_code == 201, made.get_json()
    upload = made.get_json()
    report = {"engine_id": "e1", "attempt": 1, "output_url": upload["source_url"],
              "upload_id": upload["upload_id"], "size": len(output),
              "parts": [{"part_number": 1, "etag": "0" * 32}]}
    # Not uploaded: 409, the job stays as it was.
    assert_error(client.post(f"/jobs/{job_id}/complete", json=report, headers=auth),
                 409, "conflict")
    parts = put_parts(client, upload, output)
    wrong_size = {**report, "parts": parts, "size": len(output) + 1}
    assert_error(client.post(f"/jobs/{job_id}/complete", json=wrong_size, headers=auth),
                 409, "conflict")
    no_upload = {"engine_id": "e1", "output_url": upload["source_url"]}
    assert_error(client.post(f"/jobs/{job_id}/complete", json=no_upload, headers=auth),
                 409, "conflict")
    assert client.get(f"/jobs/{job_id}", headers=auth).get_json()["status"] == "assigned"
    done = client.post(f"/jobs/{job_id}/complete", json={**report, "parts": parts,
                       "sha256": hashlib.sha256(output).hexdigest()}, headers=auth)
    assert done.status_code == 200, done.get_json()
    body = done.get_json()
    assert body["status"] == "completed"
    assert body["output"] == {"size": len(output), "sha256": hashlib.sha256(output).hexdigest(),
                              "content_type": "video/mp4"}
    link = client.get(f"/jobs/{job_id}/output", headers=auth)
    assert link.status_code == 302
    assert read(client, local(link.headers["Location"])).data == output


def test_abandoned_uploads_and_old_files_are_removed(
        client: FlaskClient, auth: dict[str, str], clock: FakeClock, settings: Settings,
        app: Any) -> None:
    """Uploads not completed within a day are removed with their parts; stored
    outputs and uploaded sources go after output_retention_days (7), except a
    source a waiting job still needs."""
    service = app.extensions["dispatch"]
    root = store_root(settings)
    abandoned = start(client, auth, 10).get_json()
    put_parts(client, abandoned, b"0123456789")
    kept = start(client, auth, 4, name="kept.mp4").get_json()
    client.post(f"/uploads/{kept['upload_id']}/complete",
                json={"parts": put_parts(client, kept, b"kept")}, headers=auth)
    old = start(client, auth, 3, name="old.mp4").get_json()
    client.post(f"/uploads/{old['upload_id']}/complete",
                json={"parts": put_parts(client, old, b"old")}, headers=auth)
    assert client.post("/jobs/", json={"source_url": kept["source_url"], "target_codec": "h264",
                                       "job_size": 1}, headers=auth).status_code == 201
    assert service.maintenance.sweep_files() == 0  # nothing is old yet
    clock.advance(UPLOAD_LIFETIME + 1)
    assert service.maintenance.sweep_files() == 1  # the abandoned upload
    assert not list((root / "parts").iterdir())  # its parts too
    assert_error(client.get(f"/uploads/{abandoned['upload_id']}", headers=auth), 404,
                 "not_found")
    # Eight days on (file times are the disk's): the old source goes, the one a
    # pending job needs stays.
    clock.advance(8 * 86400)
    for path in (root / "objects").rglob("*"):
        if path.is_file():
            os.utime(path, (clock() - 8 * 86400, clock() - 8 * 86400))
    assert service.maintenance.sweep_files() == 1
    names = sorted(p.name for p in (root / "objects").rglob("*") if p.is_file())
    assert names == ["kept.mp4"]
