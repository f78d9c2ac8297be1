"""The database commands of ``dispatch-server``::

    dispatch-server db upgrade [--database-url URL] [--database-password-file FILE]
    dispatch-server copy-state --from SOURCE --to TARGET [--database-password-file FILE]

SOURCE and TARGET are a state file or a ``postgresql://`` URL. The URL may also come
from ``DISTCONV_DATABASE_URL``, the password file from
``DISTCONV_DATABASE_PASSWORD_FILE`` (or libpq's ``PGPASSFILE``). Exit status 0 when
done, 1 when refused or the database cannot be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from dispatch.domain import errors

ADMIN_COMMANDS = ("db", "copy-state")

log = logging.getLogger("dispatch.postgres")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatch-server")
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="manage the PostgreSQL schema")
    db.add_argument("action", choices=["upgrade"], help="apply the missing migrations")
    db.add_argument("--database-url", default=os.environ.get("DISTCONV_DATABASE_URL"))
    copy = commands.add_parser("copy-state", help="copy a farm between a state file and a "
                               "database (either way); the target must be empty")
    copy.add_argument("--from", dest="source", required=True, metavar="FILE_OR_URL")
    copy.add_argument("--to", dest="target", required=True, metavar="FILE_OR_URL")
    for sub in (db, copy):
        sub.add_argument("--database-password-file",
                         default=os.environ.get("DISTCONV_DATABASE_PASSWORD_FILE"))
    return parser


def admin_main(argv: Sequence[str]) -> int:
    # psycopg is imported here, not with the module: every start of dispatch-server
    # imports this one for ADMIN_COMMANDS, and psycopg costs ~0.1 s of it.
    from dispatch.storage.postgres.pool import safe_url
    from dispatch.tools.copy_state import copy_state

    args = _parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "db":
            if not args.database_url:
                print("dispatch-server db: no database: pass --database-url or set "
                      "DISTCONV_DATABASE_URL", file=sys.stderr)
                return 2
            from dispatch.storage.postgres.wiring import upgrade_url

            applied = upgrade_url(args.database_url, args.database_password_file)
            print(f"{safe_url(args.database_url)}: "
                  + (f"applied {', '.join(applied)}" if applied else "schema up to date"))
            return 0
        farm = copy_state(args.source, args.target, args.database_password_file)
    except (errors.StateError, errors.Unavailable) as exc:
        print(f"dispatch-server {args.command}: {exc}", file=sys.stderr)
        return 1
    print(f"copied {farm.summary()}")
    return 0
