"""The engine's settings: flags, ``DISTCONV_*`` variables and an INI file, resolved by
the server's machinery (:mod:`dispatch.config.settings`) from the engine's own table.

Precedence, highest first: flag, environment variable, config file, default. A bad
setting raises :class:`~dispatch.config.settings.SettingsError`; ``main`` exits 2 with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from dispatch import __version__
from dispatch.config.options import (
    API_KEY_FILE,
    Option,
    SettingsError,
    add_flags,
    at_least,
    integer,
    nonempty,
    one_of,
    resolve_options,
)
from dispatch.config.settings import LOG_LEVELS
from dispatch.domain.models import ENGINE_ID

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_OUTPUT_DIR = "distconv-output"
# The parts of a chunked job this engine can do (issue 23); "none" advertises none.
TASK_KINDS = ("plan", "chunk", "audio", "stitch")


@dataclass(frozen=True)
class EngineConfig:
    api_key: str
    engine_id: str
    ffmpeg: str
    ffprobe: str
    server: str = DEFAULT_SERVER
    work_dir: str = "distconv-work"
    # Given: outputs are kept there (today's behaviour). Not given: uploaded to the
    # server's store when it offers one, else kept in DEFAULT_OUTPUT_DIR.
    output_dir: str | None = None
    output_url_base: str | None = None
    heartbeat_interval: float = 5.0
    # codec -> encoder ("" = detect); None: every built-in codec, detected.
    codecs: tuple[tuple[str, str], ...] | None = None
    max_download_gb: float = 50.0
    # Threads each ffmpeg decodes and encodes with; 0 lets ffmpeg choose (one per core).
    ffmpeg_threads: int = 0
    task_kinds: tuple[str, ...] = TASK_KINDS
    log_level: str = "INFO"

    @property
    def outputs_folder(self) -> str:
        return self.output_dir or DEFAULT_OUTPUT_DIR

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                          for f in fields(self) if f.name != "api_key")
        return f"EngineConfig(api_key='***', {shown})"


def _server_url(text: str) -> str:
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return url


def _url_base(text: str) -> str:
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if not parts.scheme or not (parts.netloc or parts.scheme == "file"):
        raise ValueError(f"{text!r} is not an absolute URL")
    return url


def _engine_id(text: str) -> str:
    value = text.strip()
    if not ENGINE_ID.match(value):
        raise ValueError(f"{value!r} is not 1-128 letters, digits and ._:-")
    return value


def _codecs(text: str) -> tuple[tuple[str, str], ...]:
    """``h264,vp9,mpeg4=mpeg4``: a codec name, or ``codec=encoder``."""
    items: list[tuple[str, str]] = []
    for item in text.split(","):
        codec, _, encoder = (part.strip() for part in item.partition("="))
        if not item.strip():
            continue
        if not codec or ("=" in item and not encoder) or len(codec) > 64:
            raise ValueError(f"{item.strip()!r} is not CODEC or CODEC=ENCODER")
        items.append((codec, encoder))
    if not items:
        raise ValueError("no codec given")
    return tuple(items)


def _task_kinds(text: str) -> tuple[str, ...]:
    """``plan,chunk,audio,stitch`` (any of them, in any order) or ``none``."""
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if items == ["none"]:
        return ()
    unknown = [item for item in items if item not in TASK_KINDS]
    if unknown or not items:
        raise ValueError(f"{text.strip()!r} is not 'none' or a list of "
                         f"{', '.join(TASK_KINDS)}")
    return tuple(kind for kind in TASK_KINDS if kind in items)


def _program(text: str) -> str:
    value = text.strip()
    found = shutil.which(value)
    if not found:
        raise ValueError(f"{value!r} is not an executable program")
    return found


_OPTIONS: tuple[Option, ...] = (
    Option("api_key", nonempty, "--api-key", "DISTCONV_API_KEY", ("api_key",)),
    Option("api_key_file", nonempty, "--api-key-file", "DISTCONV_API_KEY_FILE", ("api_key_file",)),
    Option("server", _server_url, "--server", "DISTCONV_SERVER", ("server",)),
    Option("engine_id", _engine_id, "--engine-id", "DISTCONV_ENGINE_ID", ("engine_id",)),
    Option("work_dir", nonempty, "--work-dir", "DISTCONV_WORK_DIR", ("work_dir",)),
    Option("output_dir", nonempty, "--output-dir", "DISTCONV_OUTPUT_DIR", ("output_dir",)),
    Option("output_url_base", _url_base, "--output-url-base", "DISTCONV_OUTPUT_URL_BASE",
            ("output_url_base",)),
    Option("heartbeat_interval", at_least(0.1), "--heartbeat-interval",
            "DISTCONV_HEARTBEAT_INTERVAL", ("heartbeat_interval",)),
    Option("codecs", _codecs, "--codecs", "DISTCONV_CODECS", ("codecs",)),
    Option("ffmpeg", _program, "--ffmpeg", "DISTCONV_FFMPEG", ("ffmpeg",)),
    Option("ffprobe", _program, "--ffprobe", "DISTCONV_FFPROBE", ("ffprobe",)),
    Option("max_download_gb", at_least(0.001), "--max-download-gb", "DISTCONV_MAX_DOWNLOAD_GB",
            ("max_download_gb",)),
    Option("ffmpeg_threads", integer(0, 256), "--ffmpeg-threads", "DISTCONV_FFMPEG_THREADS",
           ("ffmpeg_threads",)),
    Option("task_kinds", _task_kinds, "--task-kinds", "DISTCONV_TASK_KINDS", ("task_kinds",)),
    Option("log_level", one_of(LOG_LEVELS, upper=True), "--log-level", "DISTCONV_LOG_LEVEL",
            ("log_level",)),
)

_HELPS = {
    "--server": f"dispatch server URL (default {DEFAULT_SERVER})",
    "--api-key": "API key sent in X-API-Key (DISTCONV_API_KEY); prefer --api-key-file",
    "--api-key-file": "file holding the API key (DISTCONV_API_KEY_FILE)",
    "--engine-id": "this engine's id (default: the host name)",
    "--work-dir": "folder for downloads and partial outputs (default ./distconv-work)",
    "--output-dir": "keep finished outputs in this folder, one file per job (default: "
    "upload them to the server's store; ./distconv-output with a server without one)",
    "--output-url-base": "URL the output folder is served at; output_url is this base, "
    "'/', and the file name (default: the output's file:// URL)",
    "--heartbeat-interval": "seconds between heartbeats (default 5)",
    "--codecs": "comma-separated codecs to offer, each CODEC or CODEC=ENCODER "
    "(default: h264, h265, vp9 and av1, those whose test encode passes)",
    "--ffmpeg": "ffmpeg program (default: ffmpeg from PATH)",
    "--ffprobe": "ffprobe program (default: ffprobe from PATH)",
    "--max-download-gb": "largest source to download, in GB (default 50)",
    "--ffmpeg-threads": "threads each ffmpeg uses, 0 = ffmpeg's choice (default 0); 1 with "
                        "taskset makes an engine one core",
    "--task-kinds": "parts of chunked jobs to take: comma-separated plan, chunk, audio, "
    "stitch, or none (default: all four)",
    "--log-level": "DEBUG, INFO, WARNING or ERROR (default INFO)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch-engine",
        description="DistConv transcoding engine: takes jobs from the dispatch server and "
        "runs them with ffmpeg.",
        epilog="Every flag can also be set by a DISTCONV_* environment variable (the flag "
        "name in capitals, e.g. DISTCONV_WORK_DIR) or in the config file (the flag name "
        "with underscores); flags win over variables, variables over the file.",
    )
    parser.add_argument("--version", action="version", version=f"dispatch-engine {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="INI-style config file (DISTCONV_ENGINE_CONFIG)")
    add_flags(parser, _OPTIONS, _HELPS)
    return parser


def load_config(argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> EngineConfig:
    """Resolve the engine's settings; raise SettingsError naming the bad one."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args([] if argv is None else list(argv))
    # Not DISTCONV_CONFIG: that one is the server's, and both may share a shell.
    config_path = args.config or environ.get("DISTCONV_ENGINE_CONFIG") or None
    values: dict[str, Any] = resolve_options(_OPTIONS, args, environ, config_path,
                                             (API_KEY_FILE,))
    if not values.get("api_key"):
        raise SettingsError("no API key: set DISTCONV_API_KEY, pass --api-key or "
                            "--api-key-file (the dispatch server's key)")
    for program in ("ffmpeg", "ffprobe"):
        if program not in values:
            try:
                values[program] = _program(program)
            except ValueError:
                raise SettingsError(f"no {program} on PATH: install ffmpeg or pass "
                                    f"--{program}") from None
    if "engine_id" not in values:
        try:
            values["engine_id"] = _engine_id(socket.gethostname())
        except ValueError as exc:
            raise SettingsError(f"the host name cannot be the engine id ({exc}); "
                                "pass --engine-id") from None
    return EngineConfig(**values)
