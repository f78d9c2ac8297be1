"""``dispatch-server``: settings, state check, then gunicorn in-process.

Exit status: 0 after a clean stop (SIGTERM), 1 when the state file cannot be used
(damaged, or owned by another process), 2 for bad settings.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication

from dispatch.app import create_app, make_keyring
from dispatch.auth import KeyFileError
from dispatch.errors import StateError
from dispatch.gunicorn_config import options
from dispatch.journal import JournalStore
from dispatch.logs import configure_logging
from dispatch.service import DispatchService
from dispatch.settings import Settings, SettingsError, load_settings


class DispatchApplication(BaseApplication):
    """gunicorn's custom-application API: our settings, our app, one worker."""

    def __init__(self, settings: Settings, store: JournalStore,
                 service: DispatchService) -> None:
        self.settings = settings
        self.store = store
        self.service: DispatchService | None = service
        super().__init__()

    def load_config(self) -> None:
        for key, value in options(self.settings).items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        self.cfg.set("pre_fork", self._pre_fork)

    def _pre_fork(self, server: Any, worker: Any) -> None:
        # Runs in this (master) process before each fork. The first worker takes the
        # state loaded and checked at start; a worker that replaces a dead one must
        # read the files instead, which hold every change the dead one made.
        if getattr(self, "_forked", False):
            self.service = None
        self._forked = True

    def load(self) -> Any:
        configure_logging(self.settings)
        return create_app(self.settings, store=self.store, service=self.service)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"dispatch-server: {exc}", file=sys.stderr)
        return 2
    try:
        make_keyring(settings)
    except KeyFileError as exc:
        print(f"dispatch-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings, rotate=False)
    try:
        store = JournalStore(settings.state_file)
        service = DispatchService(settings, store)
    except StateError as exc:
        print(f"dispatch-server: {exc}", file=sys.stderr)
        return 1
    # The loaded state is shared with the worker after the fork; frozen objects are
    # not touched by the collector, so their pages stay shared instead of copied.
    gc.freeze()
    DispatchApplication(settings, store, service).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
