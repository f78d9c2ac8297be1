"""``dispatch-server``: settings, state check, then gunicorn in-process.

Exit status: 0 after a clean stop (SIGTERM), 1 when the state file cannot be used
(damaged, or owned by another process), 2 for bad settings.

Subcommands: ``dispatch-server import-cpp ...`` (``dispatch.tools.import_cpp``), and
``dispatch-server db upgrade`` and ``copy-state`` (``dispatch.tools.db``).
"""

from __future__ import annotations

import gc
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from dispatch.app import make_keyring
from dispatch.bootstrap import Server, build_app, open_server
from dispatch.config.settings import SettingsError, load_settings
from dispatch.domain.errors import StateError, Unavailable
from dispatch.http.auth import KeyFileError
from dispatch.runtime.gunicorn_config import options, share_metrics
from dispatch.runtime.logs import configure_logging
from dispatch.runtime.process_memory import release_free_memory
from dispatch.tools import import_cpp
from dispatch.tools.db import ADMIN_COMMANDS, admin_main


class DispatchApplication(BaseApplication):
    """gunicorn's custom-application API: our settings, our app, as many workers as
    the backend allows."""

    def __init__(self, server: Server) -> None:
        self.settings = server.settings
        self.server = server
        self._released = False
        super().__init__()

    def load_config(self) -> None:
        for key, value in options(self.settings).items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        configure_logging(self.settings)
        return build_app(self.server)

    def release_loaded_state(self) -> None:
        """In this (master) process, once the first worker has forked: the worker
        owns the state now. A worker that replaces a dead one reads the files, which
        hold every change the dead one made, so the master keeps no copy."""
        if self._released:
            return
        self._released = True
        self.server.release()
        gc.unfreeze()
        gc.collect()
        release_free_memory()

    def run(self) -> None:
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)


class _Arbiter(Arbiter):
    def spawn_worker(self) -> int:
        pid = super().spawn_worker()  # the worker never returns from here
        self.app.release_loaded_state()
        return pid


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["import-cpp"]:
        return import_cpp.main(argv[1:])
    if argv[:1] and argv[0] in ADMIN_COMMANDS:  # db upgrade, copy-state
        return admin_main(argv)
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"dispatch-server: {exc}", file=sys.stderr)
        return 2
    try:
        make_keyring(settings)
    except KeyFileError as exc:
        print(f"dispatch-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings, rotate=False)
    shared_metrics = share_metrics(settings)
    try:
        try:
            application = DispatchApplication(open_server(settings))
        except (StateError, Unavailable) as exc:
            print(f"dispatch-server: {exc}", file=sys.stderr)
            return 1
        # The loaded state is shared with the worker after the fork; frozen objects are
        # not touched by the collector, so their pages stay shared instead of copied.
        gc.freeze()
        application.run()
        return 0
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
