"""The server's settings: command-line flags, ``DISTCONV_*`` variables and the INI
config file, read with the machinery in ``options``.

Precedence, highest first: flag, environment variable, config file, default.
Every problem (unknown key, non-numeric number, unreadable file, missing API key)
raises :class:`SettingsError`; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from dispatch import __version__
from dispatch.config.options import (
    API_KEY_FILE,
    FromFile,
    Option,
    SettingsError,
    add_flags,
    at_least,
    boolean,
    integer,
    nonempty,
    one_of,
    resolve_options,
)
from dispatch.domain.models import ENGINE_ID, ENGINE_ID_RULE

__all__ = ["Settings", "SettingsError", "build_parser", "load_settings", "settings_from_args"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")
LOG_ROTATIONS = ("none", "daily", "hourly")
MIN_KEY_LENGTH = 16
MIN_SECRET_LENGTH = 32
SECRET = frozenset({"api_key", "client_keys", "engine_keys", "webhook_secret", "ui_secret",
                    "database_url"})



@dataclass(frozen=True)
class Settings:
    api_key: str
    host: str = "127.0.0.1"
    port: int = 8080
    state_file: str = "server_state.json"
    log_level: str = "INFO"
    log_file: str | None = None
    log_rotation: str = "none"
    log_max_files: int = 30
    max_concurrent_jobs: int = 100
    job_queue_max_size: int = 1000
    engine_heartbeat_timeout: float = 180.0
    auto_save_interval: float = 30.0
    retry_backoff_seconds: float = 5.0
    retry_backoff_max_seconds: float = 300.0
    thread_pool_size: int = 8
    max_job_retries: int = 3
    auto_retry_failed_jobs: bool = True
    finished_job_retention: float = 0.0
    cleanup_interval: float = 60.0
    engine_benchmark_interval: float = 3600.0
    priority_aging_seconds: float = 600.0
    large_job_threshold_mb: float = 1024.0
    job_stall_timeout: float = 0.0
    trusted_proxies: int = 0
    # Failed authentication per client address (dispatch.http.throttle); limit 0: off.
    auth_failure_limit: int = 20
    auth_failure_window: float = 60.0
    auth_block_seconds: float = 300.0
    auth_throttle_table_size: int = 10000
    keys_file: str | None = None
    client_keys: tuple[str, ...] = ()
    engine_keys: tuple[str, ...] = ()  # "KEY" or "KEY@ENGINE_ID"
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_timeout: float = 5.0
    webhook_retry_for: float = 3600.0
    idempotency_ttl: float = 86400.0
    # The dashboard's session-signing secret (or a file holding it); when neither is
    # set, one is generated once and kept beside the state file (dispatch.ui.secret).
    ui_secret: str | None = None
    ui_session_lifetime: float = 43200.0  # seconds a dashboard sign-in lasts
    config_file: str | None = None
    # PostgreSQL (dispatch.storage.postgres): with a URL the state lives only there, and
    # several processes and machines may share it.
    database_url: str | None = None
    database_password_file: str | None = None
    workers: int = 1
    leader_lease_seconds: float = 5.0
    # Files in and out (dispatch.objects): "local" (a folder the server serves with
    # signed URLs) or "s3://BUCKET[/PREFIX]".
    storage: str = "local"
    storage_dir: str | None = None  # default: files/ beside the state file
    storage_endpoint: str | None = None
    storage_region: str | None = None
    storage_credentials_file: str | None = None
    public_url: str | None = None  # the server's URL as clients reach it (signed URLs)
    max_upload_gb: float = 50.0
    upload_part_mb: int = 64
    output_retention_days: float = 7.0

    def __repr__(self) -> str:
        # The key must never reach a log line or a traceback.
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name not in SECRET
        )
        return (f"Settings(api_key='***', client_keys=***, engine_keys=***, "
                f"webhook_secret=***, ui_secret=***, database_url=***, {shown})")


def _key_list(text: str) -> tuple[str, ...]:
    keys = tuple(item.strip() for item in text.split(",") if item.strip())
    for key in keys:
        if len(key) < MIN_KEY_LENGTH or "@" in key:
            raise ValueError(f"keys must have at least {MIN_KEY_LENGTH} characters and no '@'")
    return keys


def _engine_key_list(text: str) -> tuple[str, ...]:
    """Engine keys: ``KEY`` or ``KEY@ENGINE_ID`` (bound to that engine)."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    for item in items:
        key, at, engine_id = item.partition("@")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"keys must have at least {MIN_KEY_LENGTH} characters")
        if at and not ENGINE_ID.fullmatch(engine_id):
            raise ValueError(f"KEY@ENGINE_ID needs an engine id of {ENGINE_ID_RULE}")
    return items


def _secret(text: str) -> str:
    value = text.strip()
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"must have at least {MIN_SECRET_LENGTH} characters "
                         "(generate one with: openssl rand -hex 32)")
    return value


def _host_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in text.split(",") if item.strip())


def _storage(text: str) -> str:
    value = text.strip()
    if value == "local":
        return value
    if not value.startswith("s3://") or not value[5:].split("/")[0]:
        raise ValueError("must be local or s3://BUCKET[/PREFIX]")
    return value.rstrip("/")


def _http_url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value.split("/")) < 3:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _database_url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")
    return value


# One row per setting: the single table the parser, the environment and the
# config file are read from, so the three sources cannot drift apart.
_OPTIONS: tuple[Option, ...] = (
    Option("api_key", nonempty, "--api-key", "DISTCONV_API_KEY", ("api_key",)),
    Option("api_key_file", nonempty, "--api-key-file", "DISTCONV_API_KEY_FILE", ("api_key_file",)),
    Option("host", nonempty, "--host", "DISTCONV_HOST", ("bind_address",)),
    Option("port", integer(0, 65535), "--port", "DISTCONV_PORT", ("port",)),
    Option("state_file", nonempty, "--state-file", "DISTCONV_STATE_FILE", ("state_file",)),
    Option("log_level", one_of(LOG_LEVELS, upper=True), "--log-level", "DISTCONV_LOG_LEVEL",
            ("log_level",)),
    Option("log_file", nonempty, "--log-file", "DISTCONV_LOG_FILE", ("log_file",)),
    Option("log_rotation", one_of(LOG_ROTATIONS), None, None, ("log_rotation",)),
    Option("log_max_files", integer(1, 10000), None, None, ("log_max_files",)),
    Option("max_concurrent_jobs", integer(1), "--max-jobs", "DISTCONV_MAX_JOBS",
            ("max_concurrent_jobs",)),
    Option("job_queue_max_size", integer(1), "--queue-size", "DISTCONV_QUEUE_SIZE",
            ("job_queue_max_size",)),
    Option("engine_heartbeat_timeout", at_least(1), "--engine-timeout", "DISTCONV_ENGINE_TIMEOUT",
            ("engine_heartbeat_timeout", "engine_timeout_seconds")),
    Option("auto_save_interval", at_least(0.1), None, "DISTCONV_AUTO_SAVE_INTERVAL",
            ("auto_save_interval",)),
    Option("retry_backoff_seconds", at_least(0), None, "DISTCONV_RETRY_BACKOFF",
            ("retry_backoff_seconds",)),
    Option("retry_backoff_max_seconds", at_least(0), None, "DISTCONV_RETRY_BACKOFF_MAX",
            ("retry_backoff_max_seconds",)),
    Option("thread_pool_size", integer(1, 1024), "--threads", "DISTCONV_THREADS",
            ("thread_pool_size",)),
    Option("max_job_retries", integer(0, 100), None, None, ("max_job_retries",)),
    Option("auto_retry_failed_jobs", boolean, None, None, ("auto_retry_failed_jobs",)),
    Option("finished_job_retention", at_least(0), None, "DISTCONV_JOB_RETENTION",
            ("finished_job_retention",)),
    Option("cleanup_interval", at_least(0.1), None, None, ("cleanup_interval",)),
    Option("engine_benchmark_interval", at_least(0), None, None, ("engine_benchmark_interval",)),
    Option("priority_aging_seconds", at_least(0), None, None, ("priority_aging_seconds",)),
    Option("large_job_threshold_mb", at_least(0), None, None, ("large_job_threshold_mb",)),
    Option("trusted_proxies", integer(0, 10), "--trusted-proxies", "DISTCONV_TRUSTED_PROXIES",
            ("trusted_proxies",)),
    Option("auth_failure_limit", integer(0), "--auth-failure-limit",
            "DISTCONV_AUTH_FAILURE_LIMIT", ("auth_failure_limit",)),
    Option("auth_failure_window", at_least(1), "--auth-failure-window",
            "DISTCONV_AUTH_FAILURE_WINDOW", ("auth_failure_window",)),
    Option("auth_block_seconds", at_least(1), "--auth-block-seconds",
            "DISTCONV_AUTH_BLOCK_SECONDS", ("auth_block_seconds",)),
    Option("auth_throttle_table_size", integer(1), "--auth-throttle-table-size",
            "DISTCONV_AUTH_THROTTLE_TABLE_SIZE", ("auth_throttle_table_size",)),
    Option("keys_file", nonempty, "--keys-file", "DISTCONV_KEYS_FILE", ("keys_file",)),
    Option("client_keys", _key_list, None, "DISTCONV_CLIENT_KEYS", ("client_keys",)),
    Option("engine_keys", _engine_key_list, None, "DISTCONV_ENGINE_KEYS", ("engine_keys",)),
    Option("webhook_allowed_hosts", _host_list, None, "DISTCONV_WEBHOOK_ALLOWED_HOSTS",
            ("webhook_allowed_hosts",)),
    Option("webhook_secret", nonempty, None, "DISTCONV_WEBHOOK_SECRET", ("webhook_secret",)),
    Option("webhook_timeout", at_least(0.1), None, None, ("webhook_timeout",)),
    Option("webhook_retry_for", at_least(0), None, None, ("webhook_retry_for",)),
    Option("idempotency_ttl", at_least(1), None, None, ("idempotency_ttl",)),
    Option("job_stall_timeout", at_least(0), None, "DISTCONV_JOB_STALL_TIMEOUT",
            ("job_stall_timeout",)),
    Option("ui_secret", _secret, None, "DISTCONV_UI_SECRET", ("ui_secret",)),
    Option("ui_secret_file", nonempty, "--ui-secret-file", "DISTCONV_UI_SECRET_FILE",
            ("ui_secret_file",)),
    Option("ui_session_lifetime", at_least(60), None, "DISTCONV_UI_SESSION_LIFETIME",
            ("ui_session_lifetime",)),
    Option("database_url", _database_url, "--database-url", "DISTCONV_DATABASE_URL",
            ("database_url",)),
    Option("database_password_file", nonempty, "--database-password-file",
            "DISTCONV_DATABASE_PASSWORD_FILE", ("database_password_file",)),
    Option("workers", integer(1, 64), "--workers", "DISTCONV_WORKERS", ("workers",)),
    Option("leader_lease_seconds", at_least(0.2), None, "DISTCONV_LEADER_LEASE",
            ("leader_lease_seconds",)),
    Option("storage", _storage, "--storage", "DISTCONV_STORAGE", ("storage",)),
    Option("storage_dir", nonempty, "--storage-dir", "DISTCONV_STORAGE_DIR", ("storage_dir",)),
    Option("storage_endpoint", _http_url, "--storage-endpoint", "DISTCONV_STORAGE_ENDPOINT",
            ("storage_endpoint",)),
    Option("storage_region", nonempty, "--storage-region", "DISTCONV_STORAGE_REGION",
            ("storage_region",)),
    Option("storage_credentials_file", nonempty, "--storage-credentials-file",
            "DISTCONV_STORAGE_CREDENTIALS_FILE", ("storage_credentials_file",)),
    Option("public_url", _http_url, "--public-url", "DISTCONV_PUBLIC_URL", ("public_url",)),
    Option("max_upload_gb", at_least(0.000001), "--max-upload-gb", "DISTCONV_MAX_UPLOAD_GB",
            ("max_upload_gb",)),
    Option("upload_part_mb", integer(5, 5120), "--upload-part-mb", "DISTCONV_UPLOAD_PART_MB",
            ("upload_part_mb",)),
    Option("output_retention_days", at_least(0), "--output-retention-days",
            "DISTCONV_OUTPUT_RETENTION_DAYS", ("output_retention_days",)),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``dispatch-server`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dispatch-server",
        description="DistConv dispatch server: the job coordinator of a transcoding farm.",
        epilog="Every flag can also be set by a DISTCONV_* environment variable or in "
        "the config file; flags win over variables, variables over the file. "
        "'dispatch-server import-cpp --help': bring over the C++ server's SQLite state.",
    )
    parser.add_argument("--version", action="version", version=f"dispatch-server {__version__}")
    parser.add_argument("--config", metavar="FILE", help="INI-style config file (DISTCONV_CONFIG)")
    helps = {
        "--api-key": "API key clients send in X-API-Key (DISTCONV_API_KEY); prefer --api-key-file",
        "--api-key-file": "file holding the API key (DISTCONV_API_KEY_FILE)",
        "--host": "bind address (default 127.0.0.1)",
        "--port": "port (default 8080)",
        "--state-file": "state file (default server_state.json in the current folder)",
        "--log-level": "DEBUG, INFO, WARNING or ERROR (default INFO)",
        "--log-file": "log to this file instead of stderr",
        "--max-jobs": "max concurrent jobs, assigned + processing (default 100)",
        "--queue-size": "max pending jobs (default 1000)",
        "--engine-timeout": "seconds without heartbeat before an engine is offline (default 180)",
        "--threads": "worker threads (default 8)",
        "--keys-file": "file of role keys, 'ROLE KEY [ENGINE_ID]' a line; reread on SIGUSR1",
        "--ui-secret-file": "file holding the dashboard's session-signing secret "
        "(default: generated once beside the state file)",
        "--trusted-proxies": "number of reverse proxies in front whose X-Forwarded-For "
        "is trusted (default 0: none)",
        "--auth-failure-limit": "wrong keys from one address within --auth-failure-window "
        "before it is blocked (default 20; 0: never block)",
        "--auth-failure-window": "seconds the failures are counted over (default 60)",
        "--auth-block-seconds": "seconds a blocked address is refused (default 300)",
        "--auth-throttle-table-size": "addresses the throttle remembers, oldest "
        "forgotten first (default 10000)",
        "--database-url": "postgresql://USER@HOST:PORT/DB: keep the state in PostgreSQL "
        "(shared by several instances) instead of the state file",
        "--database-password-file": "file holding the database password (else PGPASSFILE)",
        "--workers": "server processes (default 1; more only with --database-url)",
        "--storage": "where uploads and outputs are kept: local (default; a folder served "
        "by this server) or s3://BUCKET[/PREFIX] (AWS S3, MinIO, SeaweedFS, Ceph)",
        "--storage-dir": "the local store's folder (default: files/ beside the state file)",
        "--storage-endpoint": "URL of an S3-compatible service (default: AWS)",
        "--storage-region": "the bucket's region (S3)",
        "--storage-credentials-file": "INI file with aws_access_key_id and "
        "aws_secret_access_key (default: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
        "--public-url": "this server's URL as clients and engines reach it, for the local "
        "store's signed URLs (default: the URL each request came to)",
        "--max-upload-gb": "largest upload, in GB (default 50)",
        "--upload-part-mb": "upload part size in MiB, at least 5 (default 64)",
        "--output-retention-days": "days stored outputs of finished jobs (and their "
        "uploaded sources) are kept; 0 keeps them (default 7)",
    }
    add_flags(parser, _OPTIONS, helps)
    return parser


# (file option, value option, what the file holds, its converter)
_FROM_FILE: tuple[FromFile, ...] = (
    API_KEY_FILE,
    ("ui_secret_file", "ui_secret", "dashboard secret", _secret),
)


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings from flags, environment and config file; raise SettingsError."""
    return settings_from_args(build_parser().parse_args([] if argv is None else list(argv)),
                              environ)


def settings_from_args(args: argparse.Namespace,
                       environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags already parsed by ``build_parser`` (or a parser that has it
    as a parent, as a subcommand's does), the environment and the config file."""
    environ = os.environ if environ is None else environ
    config_path = args.config or environ.get("DISTCONV_CONFIG") or None
    resolved = resolve_options(_OPTIONS, args, environ, config_path, _FROM_FILE)
    api_key = resolved.pop("api_key", None)
    if not api_key:
        raise SettingsError(
            "no API key: set DISTCONV_API_KEY, pass --api-key or --api-key-file, "
            "or put api_key = ... in the config file (generate one with: openssl rand -hex 32)"
        )
    if resolved.get("webhook_allowed_hosts") and not resolved.get("webhook_secret"):
        raise SettingsError(
            "webhook_allowed_hosts is set but webhook_secret is not: callbacks must be "
            "signed (set DISTCONV_WEBHOOK_SECRET or webhook_secret in the config file)"
        )
    if resolved.get("workers", 1) > 1 and not resolved.get("database_url"):
        raise SettingsError(
            "workers above 1 need database_url: with the state file, the state lives in "
            "one process"
        )
    if resolved.get("workers", 1) > 1 and resolved.get("log_rotation", "none") != "none" \
            and resolved.get("log_file"):
        # Each worker would rotate the one file at the same moment; the second rollover
        # deletes what the first had just rotated.
        raise SettingsError(
            "log_rotation needs a single worker: with workers above 1 set log_rotation = "
            "none and rotate with logrotate, or log to the journal (empty log_file)"
        )
    return Settings(api_key=api_key, config_file=config_path, **resolved)
