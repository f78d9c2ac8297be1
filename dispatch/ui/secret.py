"""The secret that signs dashboard sessions: from settings (``ui_secret`` or its file,
checked by dispatch.config.settings), or generated once and kept beside the state file, so
sign-ins survive a restart. (On PostgreSQL the farm's secret is kept in the database
instead, and given here as ``ui_secret``: ``bootstrap.Backend.session_secret``.)"""

from __future__ import annotations

from dispatch.config.secret_file import kept_secret
from dispatch.config.settings import Settings


def secret_path(settings: Settings) -> str:
    return settings.state_file + ".ui-secret"


def session_secret(settings: Settings) -> str:
    """``ui_secret``, else the generated file beside the state file (created with
    mode 0600 on first use)."""
    if settings.ui_secret:
        return settings.ui_secret
    return kept_secret(secret_path(settings), "dashboard's session secret")
