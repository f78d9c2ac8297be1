"""A real PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a temporary
folder, run by an unprivileged user (PostgreSQL refuses to run as root; CI runs as
root, so the ``postgres`` system user, or one created for the purpose, runs it), on a
free loopback port, stopped at the end. ``scripts/test-deps.sh`` installs Debian's
``postgresql`` when it is missing."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from dispatch.domain.models import to_micros
from dispatch.storage.postgres import migrate
from dispatch.storage.postgres.backend import PostgresBackend
from dispatch.storage.postgres.pool import Pool, conninfo
from tests.support.server import free_port

SERVICE_USER = "postgres"
PASSWORD_ROLE = "dispatch_pw"
ROLE_PASSWORD = "pw-from-file-0123"
FALLBACK_USER = "distconv-pg"
# Tables emptied between tests (the schema stays: migrations run once a session).
TABLES = ("jobs", "job_counts", "engines", "idempotency", "deliveries", "leases",
          "instances", "meta")


def find_bin(name: str) -> str:
    """``initdb``/``pg_ctl``: Debian keeps them out of PATH, under its versioned
    folder; the newest version wins."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda path: int(Path(path).parts[-3]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(f"{name} not found: run scripts/test-deps.sh (installs postgresql)")


def _run_as() -> list[str]:
    """The command prefix that runs a program as an unprivileged user (none needed
    when the tests do not run as root)."""
    if os.geteuid() != 0:
        return []
    for user in (SERVICE_USER, FALLBACK_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    FALLBACK_USER], check=True)
    return ["runuser", "-u", FALLBACK_USER, "--"]


class PostgresServer:
    """One cluster in a temporary folder; ``url`` reaches its ``dispatch`` database."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable  # fsync on (the benchmarks), else off (the tests)
        self.folder = Path(tempfile.mkdtemp(prefix="distconv-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.prefix = _run_as()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/dispatch"
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *command], check=check, capture_output=True,
                              text=True, timeout=120)

    def init(self) -> PostgresServer:
        if self.prefix:
            user = self.prefix[2]
            os.chmod(self.folder, 0o755)
            shutil.chown(self.folder, user)
        self._as_owner(find_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                       "-A", "trust", "--no-sync", "-E", "UTF8", "--locale", "C")
        # One role that must give its password (the tests of the password settings);
        # every other connection is trusted.
        hba = self.data / "pg_hba.conf"
        self._as_owner("sh", "-c", f"printf 'host all {PASSWORD_ROLE} 127.0.0.1/32 "
                       f"scram-sha-256\\n' | cat - {hba} > {hba}.new && mv {hba}.new {hba}")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE dispatch")
            conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD "
                         f"'{ROLE_PASSWORD}'")
        with psycopg.connect(self.url, autocommit=True) as conn:
            migrate.upgrade(conn)
        return self

    def start(self) -> None:
        # fsync off: the tests kill servers, not machines; synchronous commit stays on,
        # so a commit is still acknowledged only once PostgreSQL has it.
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -c shared_buffers=128MB")
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._as_owner(find_bin("pg_ctl"), "-D", str(self.data), "-o", options,
                       "-l", str(self.folder / "postgres.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_owner(find_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                       check=False)

    def running(self) -> bool:
        return self._as_owner(find_bin("pg_ctl"), "-D", str(self.data), "status",
                              check=False).returncode == 0

    def password_url(self) -> str:
        """The database as the role that needs its password (not in the URL)."""
        return f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{self.port}/dispatch"

    def reset(self) -> None:
        """Empty every table and restart the id sequence: a fresh farm."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            conn.execute("ALTER SEQUENCE job_seq RESTART")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = 'dispatch' AND pid <> pg_backend_pid()")

    def create_database(self, name: str) -> str:
        """Another empty database (no schema); its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        if self.running():
            self.stop("immediate")
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)


class RefusingCommits:
    """What the contract suite's harness calls the store (``tests.support.backends.FlakyStore``):
    ``refuse_append`` makes the next commits fail as a lost database would;
    ``refuse_durable`` makes every later commit fail once ``gate`` opens (units pile up
    at their commit until then). ``appended`` counts the units that reached their
    commit unrefused."""

    def __init__(self) -> None:
        self.refuse_append = False
        self.gate: threading.Event | None = None
        self.refusing = False
        self.appended = 0
        self._lock = threading.Lock()

    def refuse_durable(self, gate: threading.Event | None = None) -> None:
        self.refusing = True
        self.gate = gate

    def at_commit(self) -> None:
        if self.refuse_append:
            raise psycopg.OperationalError("server closed the connection (test)")
        with self._lock:
            self.appended += 1
        if self.refusing:
            if self.gate is not None:
                self.gate.wait(10)
            raise psycopg.OperationalError("could not sync the WAL (test)")


class FlakyPostgresBackend(PostgresBackend):
    def __init__(self, pool: Pool, now: Callable[[], float], flaky: RefusingCommits) -> None:
        super().__init__(pool, now)
        self.flaky = flaky

    def before_commit(self, conn: psycopg.Connection[Any]) -> None:
        self.flaky.at_commit()


def open_service(server: PostgresServer, settings: Any, clock: Callable[[], float]) -> Any:
    """A service on the server's database, moved by ``clock``, as the test apps use."""
    from dispatch.service import DispatchService

    backend = PostgresBackend(Pool(conninfo(server.url), 10), lambda: to_micros(clock()))
    return DispatchService(settings, backend, clock)
