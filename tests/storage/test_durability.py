"""Durability (contract §6): what was acknowledged survives crashes, restarts and
damaged files, and a failing disk never lets memory run ahead of it."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from dispatch.bootstrap import build_app, open_server
from dispatch.domain.errors import PersistenceError, StateError
from dispatch.service import DispatchService
from dispatch.storage.journal import FileIO, JournalStore
from dispatch.storage.memory import MemoryBackend
from tests.conftest import API_KEY, JOB
from tests.support.server import Server


def _digest(folder: Path) -> dict[str, str]:
    """Hashes of the state files (the lock file holds the owner's pid and is excluded)."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.name.startswith("server_state.json") and not path.name.endswith(".lock")
    }


def _service(settings: Any, **kwargs: Any) -> DispatchService:
    return DispatchService(settings, MemoryBackend(JournalStore(settings.state_file, **kwargs)))


def _job(n: int = 0) -> dict[str, Any]:
    return {**JOB, "source_url": f"http://example.com/{n}.mp4"}


# ------------------------------------------------------------ real processes


@pytest.mark.e2e
def test_kill_9_loses_no_acknowledged_job(tmp_path: Path) -> None:
    """20 rounds of 8 concurrent submitters, each ended by kill -9 at a random moment:
    after each restart every job that got a 201 is there with its fields, once."""
    rng = random.Random(20241)
    acknowledged: dict[str, dict[str, Any]] = {}
    server = Server(tmp_path, API_KEY, env={"DISTCONV_AUTO_SAVE_INTERVAL": "0.2",
                                            "DISTCONV_QUEUE_SIZE": "100000"})
    lock = threading.Lock()
    for round_number in range(20):
        server.start()
        stop = threading.Event()

        def submitter(worker: int, round_number: int = round_number,
                      stop: threading.Event = stop) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                body = _job(round_number * 1_000_000 + worker * 10_000 + n)
                n += 1
                try:
                    response = session.post(server.url + "/jobs/", json=body,
                                            headers=server.headers, timeout=5)
                except requests.RequestException:
                    return  # the server died mid-request: not acknowledged
                if response.status_code == 201:
                    with lock:
                        acknowledged[response.json()["job_id"]] = response.json()
            session.close()

        threads = [threading.Thread(target=submitter, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.05, 0.6))  # the random moment of the crash
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(10)

    server.start()
    try:
        listed: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = server.request("GET", f"/jobs/?limit=1000&offset={offset}").json()
            listed.extend(page["jobs"])
            offset += 1000
            if offset >= page["total"]:
                break
        by_id = {job["job_id"]: job for job in listed}
        assert len(by_id) == len(listed), "a job appears twice"
        assert len(acknowledged) > 100
        missing = [job_id for job_id in acknowledged if job_id not in by_id]
        assert missing == []
        for job_id, body in acknowledged.items():
            assert by_id[job_id] == body
    finally:
        server.stop()


@pytest.mark.e2e
def test_sigterm_then_restart_keeps_everything(tmp_path: Path) -> None:
    """SIGTERM finishes, writes the final snapshot, exits 0; the restart has it all."""
    server = Server(tmp_path, API_KEY).start()
    try:
        job = server.request("POST", "/jobs/", json=JOB).json()
        server.request("POST", "/engines/heartbeat", json={"engine_id": "e1"})
        assigned = server.request("POST", "/assign_job/", json={"engine_id": "e1"}).json()
        assigned.pop("output_upload")  # the engine's, beside the job as GET shows it
        assert 0 == server.terminate()
        snapshot = orjson.loads((tmp_path / "server_state.json").read_bytes())
        assert snapshot["version"] == 2
        assert list(snapshot["jobs"]) == [job["job_id"]]
        assert (tmp_path / "server_state.json.wal").stat().st_size == 0
        server.start()
        assert assigned == server.request("GET", f"/jobs/{job['job_id']}").json()
        engine = server.request("GET", "/engines/e1").json()
        assert (engine["status"], engine["current_jobs"]) == ("busy", [job["job_id"]])
    finally:
        server.stop()


@pytest.mark.e2e
def test_corrupt_snapshot_stops_start_and_changes_nothing(tmp_path: Path) -> None:
    """A damaged state file: exit 1, a message naming it, every file untouched."""
    (tmp_path / "server_state.json").write_bytes(b'{"jobs": {"a": ')
    (tmp_path / "server_state.json.wal").write_bytes(b"")
    before = _digest(tmp_path)
    server = Server(tmp_path, API_KEY).start(wait=False)
    assert server.proc is not None
    assert 1 == server.proc.wait(20)
    assert str(tmp_path / "server_state.json") in server.output()
    assert before == _digest(tmp_path)


@pytest.mark.e2e
def test_corrupt_journal_record_stops_start_and_changes_nothing(tmp_path: Path) -> None:
    """A damaged record in the middle of the journal: exit 1, files untouched."""
    server = Server(tmp_path, API_KEY).start()
    for n in range(3):
        assert 201 == server.request("POST", "/jobs/", json=_job(n)).status_code
    server.kill()
    wal = tmp_path / "server_state.json.wal"
    lines = wal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    lines[1] = lines[1].replace(b"example.com", b"example.org")  # checksum now wrong
    wal.write_bytes(b"".join(lines))
    before = _digest(tmp_path)
    server.start(wait=False)
    assert server.proc is not None
    assert 1 == server.proc.wait(20)
    assert f"journal {wal} is damaged at record 2" in server.output()
    assert before == _digest(tmp_path)


# ----------------------------------------------------------------- in-process


def test_torn_last_record_is_dropped(make_settings: Any) -> None:
    """A crash mid-write leaves half a record: it was never acknowledged, so it is
    dropped and everything before it is kept; new changes append after it."""
    settings = make_settings()
    service = _service(settings)
    kept = service.commands.submit_job(_job(1))
    service.close()
    wal = Path(settings.state_file + ".wal")
    whole = wal.read_bytes()
    torn = whole + whole[: len(whole) // 2].replace(kept.job_id.encode(), b"9_9")
    wal.write_bytes(torn)

    service = _service(settings)
    assert [kept] == service.queries.list_jobs(None, 10, 0).jobs
    later = service.commands.submit_job(_job(2))
    service.close()
    service = _service(settings)
    listed = service.queries.list_jobs(None, 10, 0).jobs
    assert [kept.job_id, later.job_id] == [j.job_id for j in listed]
    service.close()


def test_original_cpp_state_file_loads(make_settings: Any, tmp_path: Path) -> None:
    """The C++ server's file (no version key, sparse records) loads, and is then
    rewritten in our layout by the next snapshot."""
    cpp = {
        "jobs": {
            "1704067200123456_0": {
                "job_id": "1704067200123456_0", "source_url": "http://example.com/a.mp4",
                "target_codec": "h264", "job_size": 100.5, "status": "completed",
                "assigned_engine": "engine-001", "output_url": "http://s/a.mp4",
                "retries": 0, "max_retries": 3,
            },
            "1704067300000000_1": {
                "job_id": "1704067300000000_1", "source_url": "http://example.com/b.mp4",
                "target_codec": "vp9", "job_size": 5, "status": "pending", "retries": 1,
                "max_retries": 3,
            },
        },
        "engines": {
            "engine-001": {"engine_id": "engine-001", "engine_type": "transcoder",
                           "supported_codecs": ["h264", "vp9"], "status": "idle",
                           "storage_capacity_gb": 500.0, "streaming_support": True,
                           "hostname": "worker-01", "benchmark_time": 125.5},
        },
    }
    (tmp_path / "server_state.json").write_bytes(orjson.dumps(cpp))
    service = _service(make_settings())
    jobs = service.queries.list_jobs(None, 10, 0).jobs
    assert ["1704067200123456_0", "1704067300000000_1"] == [j.job_id for j in jobs]
    assert ("completed", "http://s/a.mp4") == (jobs[0].status, jobs[0].output_url)
    engine = service.queries.get_engine("engine-001")
    assert (("h264", "vp9"), 125.5, "idle") == (
        engine.engine.supported_codecs, engine.engine.benchmark_time, engine.status)
    # New ids never collide with the loaded ones.
    assert service.commands.submit_job(_job()).job_id.endswith("_2")
    assert service.maintenance.snapshot()
    service.close()
    rewritten = orjson.loads((tmp_path / "server_state.json").read_bytes())
    assert 2 == rewritten["version"]
    assert 3 == len(rewritten["jobs"])


class FailingIO(FileIO):
    """The disk as a test wants it: writes or syncs fail while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken: str | None = None
        self.syncs = 0
        self.sync_delay = 0.0

    def write(self, fd: int, data: bytes) -> int:
        if self.broken == "write":
            raise OSError(28, "No space left on device")
        return super().write(fd, data)

    def sync(self, fd: int) -> None:
        self.syncs += 1
        if self.sync_delay:
            time.sleep(self.sync_delay)
        if self.broken in ("write", "sync"):
            raise OSError(5, "Input/output error")
        super().sync(fd)


@pytest.mark.parametrize("broken", ["write", "sync"])
def test_failing_disk_answers_503_and_memory_never_runs_ahead(
    make_settings: Any, clock: Any, broken: str
) -> None:
    """A write or fsync that fails: 503 unavailable, the change is not in memory,
    /health is 503 unhealthy with the reason; once the disk works the server is
    healthy again by itself and nothing refused comes back after a restart."""
    settings = make_settings()
    io = FailingIO()
    store = JournalStore(settings.state_file, io=io)
    app = build_app(open_server(settings, clock=clock, uow=MemoryBackend(store, clock)),
                    background=False)
    client = app.test_client()
    headers = {"X-API-Key": API_KEY}
    first = client.post("/jobs/", json=_job(1), headers=headers).get_json()

    io.broken = broken
    response = client.post("/jobs/", json=_job(2), headers=headers)
    assert 503 == response.status_code
    assert "unavailable" == response.get_json()["error"]["code"]
    listed = client.get("/jobs/", headers=headers).get_json()
    assert [first["job_id"]] == [job["job_id"] for job in listed["jobs"]]
    health = client.get("/health")
    assert 503 == health.status_code
    assert "unhealthy" == health.get_json()["status"]
    assert "cannot write the journal" in health.get_json()["reason"]
    assert 503 == client.post("/engines/heartbeat", json={"engine_id": "e"},
                              headers=headers).status_code
    assert 404 == client.get("/engines/e", headers=headers).status_code

    io.broken = None
    assert 200 == client.get("/health").status_code
    third = client.post("/jobs/", json=_job(3), headers=headers)
    assert 201 == third.status_code
    app.extensions["dispatch.runtime"].shutdown()

    service = _service(settings)
    assert [first["job_id"], third.get_json()["job_id"]] == [
        job.job_id for job in service.queries.list_jobs(None, 10, 0).jobs
    ]
    service.close()


def test_failed_fsync_undoes_every_change_it_covered(make_settings: Any) -> None:
    """Changes written but not yet synced when the fsync fails are all undone, the
    later ones first, so a job assigned on top of a refused submission vanishes too."""
    settings = make_settings()
    io = FailingIO()
    service = DispatchService(settings, MemoryBackend(JournalStore(settings.state_file, io=io)))
    service.commands.heartbeat({"engine_id": "e1"})
    before_jobs = service.queries.counts()
    backend = service.uow
    assert isinstance(backend, MemoryBackend)
    backend.begin()  # a unit appended to the journal, not yet durable
    backend.transaction().repositories.jobs.put(_pending_job(service))
    job_seq = backend.end(failed=False)
    assert job_seq is not None
    io.broken = "sync"
    with pytest.raises(Exception) as raised:
        backend.wait_durable(job_seq)
    assert "could not be saved" in str(raised.value)
    assert before_jobs == service.queries.counts()
    assert [] == service.queries.list_jobs(None, 10, 0).jobs
    service.close()


def _pending_job(service: DispatchService) -> Any:
    from dispatch.domain.models import Job

    now = service.clock()
    return Job(job_id="1_999", seq=999, source_url="http://e/x", target_codec="h264",
               job_size=1.0, priority=0, max_retries=3, created_at=now, updated_at=now)


def test_concurrent_writers_share_fsyncs(make_settings: Any) -> None:
    """Group commit: 16 threads submitting at once need far fewer fsyncs than
    submissions, and every submission is durable when it returns."""
    settings = make_settings(job_queue_max_size=10_000)
    io = FailingIO()
    io.sync_delay = 0.005  # a slow disk, so that writers queue behind a sync
    service = DispatchService(settings, MemoryBackend(JournalStore(settings.state_file, io=io)))
    ids: list[str] = []

    def work() -> None:
        for n in range(20):
            ids.append(service.commands.submit_job(_job(n)).job_id)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 320 == len(set(ids))
    assert io.syncs < 320 / 2
    service.close()
    reloaded = _service(settings)
    assert 320 == reloaded.queries.list_jobs(None, 1, 0).total
    reloaded.close()


@pytest.mark.parametrize("crash_after", ["rotation", "snapshot"])
def test_crash_inside_the_snapshot_sequence_loses_and_duplicates_nothing(
    make_settings: Any, crash_after: str
) -> None:
    """A crash after the journal was rotated, or after the new snapshot was renamed
    into place but before the old journal segment was deleted: the restart has
    every change exactly once."""
    settings = make_settings()
    store = JournalStore(settings.state_file)
    service = DispatchService(settings, MemoryBackend(store))
    ids = [service.commands.submit_job(_job(n)).job_id for n in range(5)]
    backend = service.uow
    assert isinstance(backend, MemoryBackend)
    with backend.lock:
        seq = store.begin_snapshot()
        jobs = list(backend.jobs_table.ordered)
        engines = list(backend.engines_table.rows.values())
    assert seq is not None
    after = service.commands.submit_job(_job(99)).job_id  # lands in the new journal
    if crash_after == "snapshot":
        from dispatch.storage.memory.store import SnapshotData

        # Write the snapshot but "crash" before the old segment is removed.
        original = store._segments
        store._segments = lambda: []  # type: ignore[method-assign]
        store.write_snapshot(SnapshotData(seq=seq, jobs=jobs, engines=engines,
                                           tables={}))
        store._segments = original  # type: ignore[method-assign]
        assert original(), "the old segment is still there, as after a crash"
    service.close()

    reloaded = _service(settings)
    listed = [job.job_id for job in reloaded.queries.list_jobs(None, 100, 0).jobs]
    assert ids + [after] == listed
    reloaded.close()


def test_second_owner_is_refused(make_settings: Any) -> None:
    """One process owns a state file: a second store on it is refused, naming it."""
    settings = make_settings()
    first = JournalStore(settings.state_file)
    with pytest.raises(StateError) as raised:
        JournalStore(settings.state_file)
    assert settings.state_file in str(raised.value)
    first.close()
    JournalStore(settings.state_file).close()  # free again once the owner is gone


def test_append_refuses_while_failed_until_repaired(make_settings: Any) -> None:
    """While the journal cannot be written the store refuses changes and says why."""
    settings = make_settings()
    io = FailingIO()
    store = JournalStore(settings.state_file, io=io)
    store.recover()
    io.broken = "write"
    with pytest.raises(PersistenceError):
        store.append([("table", "k", 1)])
    assert store.failure is not None
    assert store.check() is not None
    io.broken = None
    assert store.check() is None
    assert 1 == store.append([("table", "k", 1)])
    store.close()


def test_state_file_is_replaced_atomically(make_settings: Any, tmp_path: Path) -> None:
    """A snapshot leaves no temporary file behind and an empty journal."""
    settings = make_settings()
    service = _service(settings)
    service.commands.submit_job(_job())
    assert service.maintenance.snapshot()
    assert not service.maintenance.snapshot(), "nothing changed: no second snapshot"
    names = sorted(os.listdir(tmp_path))
    assert ["server_state.json", "server_state.json.lock", "server_state.json.wal"] == names
    assert 0 == (tmp_path / "server_state.json.wal").stat().st_size
    service.close()


def test_journal_that_does_not_follow_its_snapshot_is_refused(make_settings: Any) -> None:
    """A journal whose first change is not the one after the snapshot's (say, a backup
    that copied a journal newer than its snapshot) stops the start instead of silently
    losing the changes in between; the files stay as they are."""
    settings = make_settings()
    service = _service(settings)
    for n in range(3):
        service.commands.submit_job(_job(n))
    service.close()
    wal = Path(settings.state_file + ".wal")
    wal.write_bytes(b"".join(wal.read_bytes().splitlines(keepends=True)[1:]))
    before = _digest(wal.parent)
    with pytest.raises(StateError) as raised:
        _service(settings)
    assert "continues at change 2 but the state so far ends at change 0" in str(raised.value)
    assert before == _digest(wal.parent)


def test_snapshot_is_json_in_the_original_layout_one_entry_a_line(
        make_settings: Any, tmp_path: Path) -> None:
    """The snapshot is one JSON object with "jobs" and "engines" keyed by id (any JSON
    tool reads it), written one entry a line with the jobs last, so that start-up can
    read the jobs one at a time."""
    settings = make_settings()
    service = _service(settings)
    ids = [service.commands.submit_job(_job(n)).job_id for n in range(3)]
    service.commands.heartbeat({"engine_id": "e1"})
    assert service.maintenance.snapshot()
    service.close()
    raw = (tmp_path / "server_state.json").read_bytes()
    document = orjson.loads(raw)
    assert ids == list(document["jobs"])
    assert ["e1"] == list(document["engines"])
    assert 3 == len(document["events"])  # each job's history, keyed by job id
    lines = raw.splitlines()
    assert b'"layout":"lines"' in lines[0]
    assert lines[-2:] == [b"}", b"}"] and lines[-6] == b',"jobs":{'


def test_journal_changes_replace_their_snapshot_jobs_in_place(make_settings: Any) -> None:
    """After a snapshot the journal updates one job, deletes another (retention) and
    creates a third: the restart reads each job once, in creation order, as it is now."""
    settings = make_settings(finished_job_retention=10)
    clock_now = [1_704_067_200.0]
    service = DispatchService(settings, MemoryBackend(JournalStore(settings.state_file),
                                                      lambda: clock_now[0]),
                              clock=lambda: clock_now[0])
    first, second, third = (service.commands.submit_job(_job(n)).job_id for n in range(3))
    service.commands.cancel_job(second)
    clock_now[0] += 5
    assert service.maintenance.snapshot()
    service.commands.cancel_job(third)  # changed after the snapshot
    clock_now[0] += 6
    # `second` finished 11 s ago: deleted after the snapshot
    assert 1 == service.maintenance.purge()
    fourth = service.commands.submit_job(_job(4)).job_id
    service.close()

    reloaded = DispatchService(settings, MemoryBackend(JournalStore(settings.state_file),
                                                       lambda: clock_now[0]),
                               clock=lambda: clock_now[0])
    jobs = reloaded.queries.list_jobs(None, 10, 0).jobs
    assert [(first, "pending"), (third, "cancelled"), (fourth, "pending")] == [
        (job.job_id, job.status) for job in jobs]
    reloaded.close()


@pytest.mark.parametrize("damage", ["bad-job-line", "cut-short"])
def test_damaged_job_lines_stop_the_start_and_change_no_file(
        make_settings: Any, tmp_path: Path, damage: str) -> None:
    """A damaged job line, or a snapshot cut short, is found while the jobs are read:
    the start stops naming the file, and no file changes, not even a torn journal
    tail (the journal is opened for writing only after every job was read)."""
    settings = make_settings()
    service = _service(settings)
    for n in range(4):
        service.commands.submit_job(_job(n))
    assert service.maintenance.snapshot()
    service.commands.submit_job(_job(9))
    service.close()
    state = tmp_path / "server_state.json"
    lines = state.read_bytes().splitlines(keepends=True)
    jobs_at = lines.index(b',"jobs":{\n')
    if damage == "bad-job-line":
        lines[jobs_at + 2] = lines[jobs_at + 2][:40] + b"\n"
    else:
        lines = lines[: jobs_at + 3]
    state.write_bytes(b"".join(lines))
    wal = tmp_path / "server_state.json.wal"
    wal.write_bytes(wal.read_bytes() + b"0000 torn")
    before = _digest(tmp_path)
    with pytest.raises(StateError) as raised:
        _service(settings)
    assert str(state) in str(raised.value)
    assert before == _digest(tmp_path)


@pytest.mark.e2e
def test_a_replaced_worker_reads_the_state_from_disk(tmp_path: Path) -> None:
    """When the worker dies alone (say, the OOM killer), gunicorn starts another; it
    reads the state from the files, so nothing the dead one acknowledged is missing
    and new ids continue after the old ones."""
    server = Server(tmp_path, API_KEY).start()
    try:
        first = server.request("POST", "/jobs/", json=_job(1)).json()["job_id"]
        assert server.proc is not None
        worker = int(Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
                     .read_text().split()[0])
        os.kill(worker, 9)
        deadline = time.monotonic() + 20
        while True:
            try:
                listed = server.request("GET", "/jobs/").json()
                break
            except (requests.RequestException, ValueError):
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
        assert [first] == [job["job_id"] for job in listed["jobs"]]
        second = server.request("POST", "/jobs/", json=_job(2)).json()["job_id"]
        assert second.endswith("_1")
        assert 0 == server.terminate()
    finally:
        server.stop()
