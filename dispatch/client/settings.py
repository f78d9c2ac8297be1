"""The client's settings: flag, then ``DISTCONV_*`` variable, then the config file
(``~/.config/distconv/client.toml`` or ``--config``), then the default."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_CONFIG = Path("~/.config/distconv/client.toml")
KEYS = ("server", "api_key", "api_key_file", "retries", "poll_interval")


class ConfigError(Exception):
    """A setting that cannot be used: the command exits 2 with this message."""


@dataclass(frozen=True)
class Settings:
    server: str
    api_key: str | None
    retries: int  # attempts after the first when the server cannot be reached
    poll_interval: float  # seconds between two looks at a job being waited for

    def require_key(self) -> str:
        if not self.api_key:
            raise ConfigError(
                "no API key: set DISTCONV_API_KEY, or pass --api-key or --api-key-file "
                "(or api_key in the config file)")
        return self.api_key


def _file(path: Path, explicit: bool) -> dict[str, Any]:
    path = path.expanduser()
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {', '.join(unknown)} "
                          f"(known: {', '.join(KEYS)})")
    return data


def _read_key(path: str) -> str:
    try:
        key = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"API key file {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"API key file {path} is empty")
    return key


def _number(name: str, value: Any, kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name} must be 0 or more, not {value!r}")
    return number


def load(server: str | None, api_key: str | None, api_key_file: str | None,
         config: str | None, environ: dict[str, str] | None = None) -> Settings:
    """Resolve every setting; raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    # Not DISTCONV_CONFIG: that one is the server's INI file, and a shell may hold both.
    path = config or env.get("DISTCONV_CLIENT_CONFIG")
    data = _file(Path(path) if path else DEFAULT_CONFIG, explicit=bool(path))

    def pick(flag: str | None, variable: str, key: str) -> Any:
        if flag is not None:
            return flag
        if env.get(variable):
            return env[variable]
        return data.get(key)

    url = str(pick(server, "DISTCONV_SERVER", "server") or DEFAULT_SERVER).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"server must be an http:// or https:// URL, not {url!r}")
    key = None
    if api_key is not None or api_key_file is not None:
        key = api_key if api_key is not None else _read_key(str(api_key_file))
    elif env.get("DISTCONV_API_KEY"):
        key = env["DISTCONV_API_KEY"]
    elif env.get("DISTCONV_API_KEY_FILE"):
        key = _read_key(env["DISTCONV_API_KEY_FILE"])
    elif data.get("api_key"):
        key = str(data["api_key"])
    elif data.get("api_key_file"):
        key = _read_key(str(data["api_key_file"]))
    retries = pick(None, "DISTCONV_CLIENT_RETRIES", "retries")
    retries = _number("retries", 5 if retries is None else retries, int)
    interval = pick(None, "DISTCONV_CLIENT_POLL_INTERVAL", "poll_interval")
    interval = _number("poll_interval", 0.5 if interval is None else interval, float)
    return Settings(url, key, retries, max(interval, 0.05))
