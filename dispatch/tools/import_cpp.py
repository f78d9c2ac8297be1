"""``dispatch-server import-cpp PATH [PATH] [--merge]``: the C++ server's SQLite state,
brought over into this server's state file.

The later C++ versions keep each job and engine as a JSON document in SQLite
(``jobs(job_id, job_data, created_at, updated_at)``, ``engines(engine_id,
engine_data, ...)``), in one file or in ``dispatch_jobs.db`` and
``dispatch_engines.db``. Each row is read with the rules of ``dispatch.domain.cpp_layout``;
``created_at`` is the JSON's own millisecond time (the SQL column was reset on every
save, so it is not read). The databases are opened read-only.

The rows are written through the state file's own journal, then a snapshot, so the
result is exactly what a running server would have written. A row that cannot be
read is reported and skipped; an id the state already holds is never overwritten.

Exit status: 0 when imported (rows may have been skipped: each is named), 1 when the
state file cannot be used (it holds jobs and ``--merge`` was not given, it is
damaged, or a server owns it), 2 for bad arguments or a source that is not the C++
server's database.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from dispatch.bootstrap import open_server
from dispatch.config.settings import SettingsError, build_parser, settings_from_args
from dispatch.domain import cpp_layout
from dispatch.domain.errors import StateError
from dispatch.domain.models import Engine, Job
from dispatch.service.ports import UnitOfWork

# Rows written per journal record: bounded records, whatever the database's size.
CHUNK = 1000
_TABLES = {"jobs": ("job", "job_id", "job_data"),
           "engines": ("engine", "engine_id", "engine_data")}


class SourceError(Exception):
    """A PATH that is not a readable database of the C++ server."""


@dataclass
class Report:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    engines: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # kind, id, reason


def build_import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch-server import-cpp", parents=[build_parser()], add_help=False,
        description="Bring the C++ server's SQLite state (one database, or "
        "dispatch_jobs.db and dispatch_engines.db) into this server's state file "
        "(--state-file, DISTCONV_STATE_FILE or state_file in the config). The "
        "databases are only read.",
        epilog="Exit status: 0 imported (skipped rows are listed), 1 the state file "
        "holds jobs (without --merge) or cannot be used, 2 bad arguments or source.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="the C++ server's database file(s), one or two")
    parser.add_argument("--merge", action="store_true",
                        help="add to a state that already holds jobs; an id already "
                        "there is skipped, never overwritten")
    return parser


def read_rows(paths: Sequence[str]) -> Iterator[tuple[str, str, Any]]:
    """(kind, id, JSON text) of every job and engine row, in the databases' order."""
    found = False
    for path in paths:
        if not os.path.isfile(path):
            raise SourceError(f"{path}: no such file")
        uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise SourceError(f"{path}: cannot open ({exc})") from None
        try:
            try:
                names = {row[0] for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.DatabaseError as exc:
                raise SourceError(f"{path}: not an SQLite database ({exc})") from None
            tables = [name for name in _TABLES if name in names]
            if not tables:
                raise SourceError(f"{path}: no 'jobs' or 'engines' table; not a database "
                                  "of the C++ server")
            found = True
            for table in tables:
                kind, id_column, data_column = _TABLES[table]
                query = f"SELECT {id_column}, {data_column} FROM {table} ORDER BY rowid"
                try:
                    for key, data in connection.execute(query):
                        yield kind, str(key), data
                except sqlite3.Error as exc:
                    raise SourceError(f"{path}: cannot read table {table} ({exc})") from None
        finally:
            connection.close()
    if not found:
        raise SourceError("no database given")


def convert(rows: Iterator[tuple[str, str, Any]], existing_jobs: set[str],
            existing_engines: set[str]) -> Report:
    """Our records of the rows; a row that cannot be read, or whose id is taken, is
    skipped with the reason."""
    report = Report()
    seen = {"job": set(existing_jobs), "engine": set(existing_engines)}
    for kind, key, data in rows:
        try:
            raw = orjson.loads(data)
            if not isinstance(raw, dict):
                raise ValueError(f"{kind}_data is not a JSON object")
            if kind == "job":
                record = Job.from_dict(cpp_layout.job_record(raw, key), 0).to_record()
                ident = record["job_id"]
            else:
                record = Engine.from_dict(cpp_layout.engine_record(raw, key)).to_record()
                ident = record["engine_id"]
        except cpp_layout.RecordError as exc:
            report.skipped.append((kind, key, exc.problem))
            continue
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            reason = f"{kind}_data is not valid JSON" if isinstance(
                exc, orjson.JSONDecodeError) else f"unreadable record ({exc})"
            report.skipped.append((kind, key, reason))
            continue
        if ident in seen[kind]:
            report.skipped.append((kind, ident, "id already in the state (never overwritten)"))
            continue
        seen[kind].add(ident)
        (report.jobs if kind == "job" else report.engines).append(record)
    return report


def _write(uow: UnitOfWork, report: Report) -> None:
    """Through the ports, as given (``JobRepository.load``: no history is made up for
    a job imported), a chunk of rows per unit."""
    with uow.transaction() as tx:
        for record in report.engines:
            tx.engines.put(Engine.from_dict(record))
    for start in range(0, len(report.jobs), CHUNK):
        with uow.transaction() as tx:
            for record in report.jobs[start:start + CHUNK]:
                tx.jobs.load(Job.from_dict(record, tx.jobs.allocate_seq()), [])


def run(settings_args: argparse.Namespace, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
    environ = dict(os.environ)
    environ.setdefault("DISTCONV_API_KEY", "-")  # the import serves no request
    try:
        settings = settings_from_args(settings_args, environ)
    except SettingsError as exc:
        print(f"dispatch-server import-cpp: {exc}", file=err)
        return 2
    if settings.database_url:
        print("dispatch-server import-cpp: it writes a state file; import into one, then "
              "move it with dispatch-server copy-state --from FILE --to DATABASE_URL",
              file=err)
        return 2
    state_file = settings.state_file
    try:
        server = open_server(settings)  # the backend the server itself would open
    except StateError as exc:
        print(f"dispatch-server import-cpp: {exc}", file=err)
        return 1
    service = server.loaded_service()
    try:
        held = service.queries.counts()
        if sum(held.values()) and not settings_args.merge:
            print(f"dispatch-server import-cpp: state file {state_file} already holds "
                  f"{sum(held.values())} jobs; nothing was imported and nothing changed "
                  "(use --merge to add to them)", file=err)
            return 1
        existing_jobs = {job.job_id for job in service.queries.list_jobs(None, 10**9, 0).jobs}
        existing_engines = {e.engine.engine_id for e in service.queries.list_engines()}
        try:
            report = convert(read_rows(settings_args.paths), existing_jobs, existing_engines)
        except SourceError as exc:
            print(f"dispatch-server import-cpp: {exc}; nothing changed", file=err)
            return 2
        _write(service.uow, report)
    finally:
        service.close()
    # Load what was written, as the server will, and save it as a snapshot.
    server = open_server(settings)
    try:
        server.loaded_service().maintenance.snapshot()
    finally:
        server.loaded_service().close()
    for kind, key, reason in report.skipped:
        print(f"skipped {kind} {key!r}: {reason}", file=out)
    print(f"imported {len(report.jobs)} jobs and {len(report.engines)} engines into "
          f"{state_file} ({len(report.skipped)} skipped)", file=out)
    return 0


def main(argv: Sequence[str]) -> int:
    parser = build_import_parser()
    args = parser.parse_args(list(argv))
    if len(args.paths) > 2:
        parser.error("give one database, or the jobs and the engines databases")
    return run(args)
