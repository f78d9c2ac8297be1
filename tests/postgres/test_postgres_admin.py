"""The PostgreSQL backend's administration: the schema's migrations (``db upgrade``,
a database newer than the server refused), ``copy-state`` between a state file and a
database in both directions, and the settings that choose the backend."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dispatch.config.settings import Settings, SettingsError, load_settings
from dispatch.service import DispatchService
from dispatch.storage.journal import JournalStore
from dispatch.storage.memory import MemoryBackend
from dispatch.storage.postgres import migrate
from dispatch.storage.postgres.wiring import open_tool_backend
from dispatch.tools.copy_state import Farm, read_state
from tests.conftest import API_KEY, FakeClock
from tests.support.postgres import ROLE_PASSWORD, PostgresServer
from tests.support.server import Server

BIN = Path(sys.executable).with_name("dispatch-server")
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10.0}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60,
                          env=env)


# ---------------------------------------------------------------- migrations


def test_db_upgrade_applies_the_schema_once(postgres: PostgresServer) -> None:
    url = postgres.create_database("upgrade_once")
    first = run("db", "upgrade", "--database-url", url)
    assert 0 == first.returncode, first.stderr
    assert "applied 0001_initial.sql" in first.stdout
    again = run("db", "upgrade", "--database-url", url)
    assert (0, True) == (again.returncode, "schema up to date" in again.stdout)
    with psycopg.connect(url) as conn:
        assert [(1, "0001_initial.sql"), (2, "0002_farm_secrets.sql"),
                (3, "0003_chunked_jobs.sql")] == conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


def test_db_upgrade_applies_only_what_is_missing(postgres: PostgresServer) -> None:
    """A database at an older version (here: without 0002 and 0003, which brings
    its own changes back idempotently) gets the newer migrations only, its rows
    untouched."""
    url = postgres.create_database("upgrade_older")
    assert 0 == run("db", "upgrade", "--database-url", url).returncode
    with psycopg.connect(url) as conn:
        conn.execute("DROP TABLE farm_secrets")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 2")
        conn.execute("INSERT INTO engines (engine_id, record) VALUES ('e1', '{}')")
    upgraded = run("db", "upgrade", "--database-url", url)
    assert 0 == upgraded.returncode, upgraded.stderr
    assert "applied 0002_farm_secrets.sql" in upgraded.stdout
    assert "0001_initial.sql" not in upgraded.stdout
    with psycopg.connect(url) as conn:
        assert [(3,)] == conn.execute("SELECT max(version) FROM schema_migrations").fetchall()
        assert [("e1",)] == conn.execute("SELECT engine_id FROM engines").fetchall()
        assert [(0,)] == conn.execute("SELECT count(*) FROM farm_secrets").fetchall()


def test_jobs_of_a_database_before_chunked_encoding_are_jobs_after_it(
        postgres: PostgresServer, clock: FakeClock) -> None:
    """0003 on a database with jobs in it: they are whole jobs (kind 'job'), listed,
    counted and claimed as before."""
    url = postgres.create_database("upgrade_to_chunked")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for migration in migrate.known()[:2]:
            conn.execute(migration.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
        conn.execute(
            "INSERT INTO jobs (job_id, seq, status, target_codec, codec_family, priority, "
            "job_size, created_at, record) VALUES ('1_0', 0, 'pending', 'h264', 'h264', 0, "
            "10, 1, %s)", (Jsonb({**JOB, "job_id": "1_0", "created_at": 1.0}),))
    upgraded = run("db", "upgrade", "--database-url", url)
    assert "applied 0003_chunked_jobs.sql" in upgraded.stdout, upgraded.stderr
    service = DispatchService(Settings(api_key=API_KEY), open_tool_backend(url, None), clock)
    try:
        assert service.queries.counts()["pending"] == 1
        assert [j.job_id for j in service.queries.list_jobs(None, 10, 0).jobs] == ["1_0"]
        service.commands.heartbeat({"engine_id": "e1"})
        assigned = service.commands.assign_job("e1", None).job
        assert assigned is not None and assigned.job_id == "1_0"
    finally:
        service.close()


def test_a_database_newer_than_the_server_is_refused(postgres: PostgresServer,
                                                     tmp_path: Path) -> None:
    url = postgres.create_database("too_new")
    assert 0 == run("db", "upgrade", "--database-url", url).returncode
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
    refused = run("db", "upgrade", "--database-url", url)
    assert 1 == refused.returncode
    assert "version 9999, newer than this server knows (3)" in refused.stderr
    server = Server(tmp_path, API_KEY, "--database-url", url)
    server.start(wait=False)
    assert server.proc is not None
    assert 1 == server.proc.wait(60)
    assert "newer than this server knows" in server.output()


def test_instances_starting_together_apply_each_migration_once(
        postgres: PostgresServer) -> None:
    url = postgres.create_database("together")
    procs = [subprocess.Popen([str(BIN), "db", "upgrade", "--database-url", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [0, 0, 0, 0] == [proc.returncode for proc in procs]
    for migration in migrate.known():
        assert 1 == sum(migration.name in out for out in outputs)
    with psycopg.connect(url) as conn:
        assert migrate.current_version(conn) == migrate.known()[-1].version == 3


def test_an_unreachable_database_stops_the_start(tmp_path: Path) -> None:
    from tests.support.server import free_port

    server = Server(tmp_path, API_KEY, "--database-url",
                    f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    server.start(wait=False)
    assert server.proc is not None
    assert 1 == server.proc.wait(60)
    assert "cannot be reached" in server.output()


# ---------------------------------------------------------------- copy-state


def farm_with_every_record(path: Path, clock: FakeClock) -> Farm:
    """A state file with jobs in every status, engines of every kind, histories,
    idempotency keys and webhook deliveries (pending and delivered)."""
    settings = Settings(api_key=API_KEY, state_file=str(path),
                        webhook_allowed_hosts=("hooks.test",), webhook_secret="s" * 20,
                        max_job_retries=1)
    service = DispatchService(settings, MemoryBackend(JournalStore(str(path)), clock), clock)
    hook = {**JOB, "callback_url": "http://hooks.test/done", "priority": 5}
    service.commands.heartbeat({"engine_id": "fast", "supported_codecs": ["h264"],
                       "storage_capacity_gb": 100.0, "streaming_support": True})
    service.commands.heartbeat({"engine_id": "drained"})
    service.commands.set_drain("drained", True)
    done = service.commands.submit_job(hook)
    failing = service.commands.submit_job({**JOB, "priority": 3})
    service.commands.submit_once({**JOB, "priority": -2}, "key-1")
    assert done.job_id == service.commands.assign_job("fast", None).job.job_id  # type: ignore[union-attr]
    service.commands.report_progress(done.job_id, 50.0, "fast")
    service.commands.complete_job(done.job_id, "http://example.com/out.mp4", "fast")
    service.maintenance.record_delivery(done.job_id, 1, None)
    for _ in range(2):
        clock.advance(3600)
        job = service.commands.assign_job("fast", None).job
        assert job is not None and job.job_id == failing.job_id
        service.commands.fail_job(failing.job_id, "encoder crashed", "fast")
    cancelled = service.commands.submit_job(hook)
    service.commands.cancel_job(cancelled.job_id)
    service.commands.submit_job(JOB)
    service.commands.submit_job(JOB)
    assert service.commands.assign_job("fast", None).job is not None
    service.commands.heartbeat({"engine_id": "gone"})
    clock.advance(10_000)
    service.commands.heartbeat({"engine_id": "fast"})
    service.maintenance.sweep()  # "gone" and "drained" go offline
    service.close()
    farm = read_state(str(path))
    statuses = {job.status for job in farm.jobs}
    assert {"pending", "assigned", "completed", "failed", "cancelled"} <= statuses
    assert {"delivered", "pending"} == {d.state for d in farm.deliveries.values()}
    assert ["key-1"] == list(farm.idempotency)
    assert {"fast", "drained", "gone"} == {e.engine_id for e in farm.engines}
    assert any(e.offline for e in farm.engines) and any(e.drain for e in farm.engines)
    assert len(farm.history) == len(farm.jobs)
    return farm


def same(a: Farm, b: Farm) -> None:
    # Creation order and every field; the sequence numbers are each side's own.
    assert [replace(job, seq=0) for job in a.jobs] == [replace(job, seq=0) for job in b.jobs]
    assert a.engines == b.engines
    assert a.history == b.history
    assert a.idempotency == b.idempotency
    assert a.deliveries == b.deliveries


def test_copy_state_round_trips_every_record_both_ways(
        postgres: PostgresServer, tmp_path: Path, clock: FakeClock) -> None:
    source = tmp_path / "server_state.json"
    original = farm_with_every_record(source, clock)
    url = postgres.create_database("copy_target")
    to_db = run("copy-state", "--from", str(source), "--to", url)
    assert 0 == to_db.returncode, to_db.stderr
    assert f"copied {original.summary()}" in to_db.stdout
    same(original, read_state(url))
    back = tmp_path / "back" / "server_state.json"
    back.parent.mkdir()
    to_file = run("copy-state", "--from", url, "--to", str(back))
    assert 0 == to_file.returncode, to_file.stderr
    same(original, read_state(str(back)))
    # New jobs in the database get ids after every copied one.
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT nextval('job_seq'), max(seq) FROM jobs").fetchone()
        assert row is not None and row[0] > row[1]


def test_copy_state_refuses_a_target_that_is_not_empty(
        postgres: PostgresServer, tmp_path: Path, clock: FakeClock) -> None:
    source = tmp_path / "server_state.json"
    farm_with_every_record(source, clock)
    url = postgres.create_database("copy_full")
    assert 0 == run("copy-state", "--from", str(source), "--to", url).returncode
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT count(*) FROM jobs").fetchone()
    again = run("copy-state", "--from", str(source), "--to", url)
    assert 1 == again.returncode
    assert "its jobs table is not empty" in again.stderr
    with psycopg.connect(url) as conn:
        assert before == conn.execute("SELECT count(*) FROM jobs").fetchone()
    onto_file = run("copy-state", "--from", url, "--to", str(source))
    assert 1 == onto_file.returncode
    assert "it exists" in onto_file.stderr
    missing = run("copy-state", "--from", str(tmp_path / "none.json"), "--to", url)
    assert (1, True) == (missing.returncode, "does not exist" in missing.stderr)


# ------------------------------------------------------------------ settings


def test_database_settings_from_flag_variable_and_file(tmp_path: Path) -> None:
    config = tmp_path / "server.conf"
    config.write_text("database_url = postgresql://dispatch@db.internal/farm\n"
                      "workers = 3\n")
    from_file = load_settings(["--config", str(config), "--api-key", API_KEY], {})
    assert ("postgresql://dispatch@db.internal/farm", 3) == (from_file.database_url,
                                                             from_file.workers)
    from_env = load_settings(["--api-key", API_KEY], {
        "DISTCONV_DATABASE_URL": "postgresql://a@b/c", "DISTCONV_WORKERS": "2"})
    assert ("postgresql://a@b/c", 2) == (from_env.database_url, from_env.workers)
    flag = load_settings(["--api-key", API_KEY, "--database-url", "postgres://x@y/z"],
                         {"DISTCONV_DATABASE_URL": "postgresql://a@b/c"})
    assert "postgres://x@y/z" == flag.database_url


@pytest.mark.parametrize("argv, problem", [
    (["--workers", "2"], "workers above 1 need database_url"),
    (["--database-url", "mysql://a@b/c"], "must be a postgresql:// URL"),
    (["--database-url", "postgresql://a@b/c", "--workers", "0"], "out of range"),
])
def test_bad_database_settings_are_refused(argv: list[str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        load_settings(["--api-key", API_KEY, *argv], {})


def test_several_workers_do_not_rotate_one_log_file(tmp_path: Path) -> None:
    """Each worker would rotate the file at the same moment, the second deleting what
    the first rotated: refused, with what to do instead; one worker still rotates."""
    config = tmp_path / "server.conf"
    config.write_text("database_url = postgresql://a@b/c\nlog_rotation = daily\n"
                      f"log_file = {tmp_path / 'dispatch.log'}\n")
    base = ["--api-key", API_KEY, "--config", str(config)]
    with pytest.raises(SettingsError, match="log_rotation needs a single worker: with "
                                            "workers above 1 set log_rotation = none"):
        load_settings([*base, "--workers", "2"], {})
    assert "daily" == load_settings([*base, "--workers", "1"], {}).log_rotation
    config.write_text("database_url = postgresql://a@b/c\nlog_rotation = none\n"
                      f"log_file = {tmp_path / 'dispatch.log'}\n")
    assert 2 == load_settings([*base, "--workers", "2"], {}).workers


def test_the_database_password_comes_from_its_file_and_never_shows(
        postgres: PostgresServer, tmp_path: Path, make_settings: Callable[..., Any]) -> None:
    settings = make_settings(database_url="postgresql://u:hunter2-secret@h/db")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    postgres.reset()
    # Without the password, the role is refused: the start stops with exit status 1.
    refused = Server(tmp_path, API_KEY, "--database-url", postgres.password_url())
    refused.start(wait=False)
    assert refused.proc is not None and 1 == refused.proc.wait(60)
    assert "password authentication failed" in refused.output() \
        or "no password supplied" in refused.output()
    secret = tmp_path / "db-password"
    secret.write_text(ROLE_PASSWORD + "\n")
    server = Server(tmp_path, API_KEY, "--database-url", postgres.password_url(),
                    "--database-password-file", str(secret), "--log-level", "DEBUG",
                    "--state-file", str(tmp_path / "ignored.json"))
    try:
        server.start(timeout=60)
        assert 201 == server.request("POST", "/jobs/", json=JOB).status_code
        output = server.output() + refused.output()
        assert ROLE_PASSWORD not in output
        assert "state_file" in output and "is ignored" in output
        assert not (tmp_path / "ignored.json").exists()
    finally:
        server.stop()
