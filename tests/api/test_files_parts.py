"""Issue #21, the embedded store's parts: whatever order the parts come in and however
often one is sent again, the completion gives the SHA-256 of the bytes stored (the
running hash is only a shortcut); and the SHA-256 index forgets a source when the
source is removed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from dispatch.config.settings import Settings
from tests.api.test_files import local, read, start, store_root
from tests.conftest import FakeClock
from tests.support.helpers import assert_error

MiB = 1 << 20


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(upload_part_mb=5, max_upload_gb=0.1)


def put(client: FlaskClient, upload: dict[str, Any], number: int, data: bytes) -> str:
    """PUT part ``number`` of ``data`` (the whole file); returns its ETag."""
    part = upload["parts"][number - 1]
    offset = sum(p["size"] for p in upload["parts"][:number - 1])
    response = client.put(local(part["url"]), data=data[offset:offset + part["size"]])
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.headers["ETag"].strip('"'))


def complete(client: FlaskClient, auth: dict[str, str], upload: dict[str, Any],
             etags: dict[int, str]) -> Any:
    return client.post(f"/uploads/{upload['upload_id']}/complete", headers=auth, json={
        "parts": [{"part_number": n, "etag": e} for n, e in sorted(etags.items())]})


@pytest.mark.parametrize("order", [(1, 2, 3), (3, 1, 2), (2, 3, 1), (1, 2, 3, 1),
                                   (1, 2, 3, 2), (1, 1, 2, 3), (1, 3, 2, 3)])
def test_any_order_of_parts_gives_the_sha256_of_the_bytes_stored(
        client: FlaskClient, auth: dict[str, str], order: tuple[int, ...]) -> None:
    original = os.urandom(11 * MiB + 5)
    upload = start(client, auth, len(original)).get_json()
    assert len(upload["parts"]) == 3
    # A part sent again carries other bytes than the first time: the last sent counts.
    changed = bytearray(original)
    etags: dict[int, str] = {}
    for turn, number in enumerate(order):
        if number in etags:
            offset = (number - 1) * 5 * MiB
            changed[offset:offset + 4] = turn.to_bytes(4, "big")
        etags[number] = put(client, upload, number, bytes(changed))
    done = complete(client, auth, upload, etags)
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["sha256"] == hashlib.sha256(changed).hexdigest()
    client.post("/engines/heartbeat", json={"engine_id": "e1"}, headers=auth)
    client.post("/jobs/", json={"source_url": upload["source_url"], "target_codec": "h264",
                                "job_size": 1}, headers=auth)
    assigned = client.post("/assign_job/", json={"engine_id": "e1"}, headers=auth).get_json()
    stored = read(client, local(assigned["source_url"]))
    assert stored.status_code == 200 and stored.data == bytes(changed)


def test_a_part_named_by_an_earlier_etag_or_never_sent_is_refused(
        client: FlaskClient, auth: dict[str, str], settings: Settings) -> None:
    data = os.urandom(6 * MiB)
    upload = start(client, auth, len(data)).get_json()
    first = put(client, upload, 1, data)
    assert_error(complete(client, auth, upload, {1: first, 2: "0" * 32}), 409, "conflict")
    second = put(client, upload, 2, data)
    again = put(client, upload, 1, data)
    assert again != first
    assert_error(complete(client, auth, upload, {1: first, 2: second}), 409, "conflict")
    objects = store_root(settings) / "objects"
    assert not [p for p in objects.rglob("*") if p.is_file()]
    done = complete(client, auth, upload, {1: again, 2: second})
    assert done.status_code == 200 and done.get_json()["sha256"] == \
        hashlib.sha256(data).hexdigest()


def age(root: Path, key_name: str, seconds_ago: float, now: float) -> None:
    for path in (root / "objects").rglob(key_name):
        os.utime(path, (now - seconds_ago, now - seconds_ago))


def test_the_sha256_index_forgets_a_source_removed_after_its_retention(
        client: FlaskClient, auth: dict[str, str], clock: FakeClock, settings: Settings,
        app: Any) -> None:
    service = app.extensions["dispatch"]
    root = store_root(settings)
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    first = start(client, auth, len(data), name="first.mp4", sha256=digest).get_json()
    complete(client, auth, first, {1: put(client, first, 1, data)})
    # The same content again, sent without its SHA-256: the index names the later copy.
    second = start(client, auth, len(data), name="second.mp4").get_json()
    assert second["parts"]
    complete(client, auth, second, {1: put(client, second, 1, data)})
    entry = root / "meta" / "sha256" / f"{digest}.json"
    assert entry.is_file()

    clock.advance(8 * 86400)
    age(root, "first.mp4", 8 * 86400, clock())
    assert service.maintenance.sweep_files() == 1
    assert entry.is_file()  # it names the copy still stored
    known = start(client, auth, len(data), sha256=digest)
    assert known.status_code == 200
    assert known.get_json()["source_url"] == second["source_url"]

    age(root, "second.mp4", 8 * 86400, clock())
    assert service.maintenance.sweep_files() == 1
    assert not [p for p in (root / "objects").rglob("*") if p.is_file()]
    assert not entry.exists()
    assert not list((root / "meta" / "indexed").glob("*.json"))
    assert start(client, auth, len(data), sha256=digest).status_code == 201


def test_an_empty_file_is_one_empty_part(client: FlaskClient, auth: dict[str, str]) -> None:
    upload = start(client, auth, 0).get_json()
    assert [p["size"] for p in upload["parts"]] == [0]
    done = complete(client, auth, upload, {1: put(client, upload, 1, b"")})
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["sha256"] == hashlib.sha256(b"").hexdigest()
