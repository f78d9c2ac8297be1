"""The machinery of settings that the server and the engine share: options read from
a flag, a ``DISTCONV_*`` environment variable or an INI config file (highest first),
and the converters that turn their text into values. ``settings`` (the server's) and
``dispatch.engine.config`` (the engine's) each declare a table of ``Option``s.
"""

from __future__ import annotations

import argparse
import configparser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SettingsError(Exception):
    """The settings cannot be used; the message names the key or file."""


# Converters of a setting's text to its value, raising ValueError with the reason;
# public, since the engine's settings (dispatch.engine.config) are read the same way.

def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer from ``minimum`` to ``maximum`` (no upper bound when None)."""
    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f"..{maximum}" if maximum is not None else " or more"
            raise ValueError(f"{value} is out of range ({minimum}{upper})")
        return value

    return convert


def at_least(minimum: float) -> Callable[[str], float]:
    """A finite number no smaller than ``minimum``."""
    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise ValueError(f"{text.strip()} must be a finite number >= {minimum:g}")
        return value

    return convert


def boolean(text: str) -> bool:
    """1/0, true/false, yes/no, on/off, in any case."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def one_of(choices: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    """One of ``choices``, compared in upper case when ``upper`` (else lower)."""
    def convert(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return "WARNING" if value == "WARN" else value

    return convert


def nonempty(text: str) -> str:
    """Any text but blank, stripped."""
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


@dataclass(frozen=True)
class Option:
    """A setting: its field, its converter, and where it may come from (a flag, an
    environment variable, config-file keys: the first one present in the file wins)."""

    field: str
    convert: Callable[[str], Any]
    flag: str | None = None
    env: str | None = None
    keys: tuple[str, ...] = ()


# Levels of precedence; a higher number wins.
_DEFAULT, _FILE, _ENV, _FLAG = 0, 1, 2, 3


def read_config_file(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), default_section="\0none"
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # The original server.conf has no [section] header; give it one.
    try:
        parser.read_string("[distconv]\n" + text, source=path)
    except configparser.Error as exc:
        raise SettingsError(f"cannot parse config file {path}: {exc}") from None
    values: dict[str, str] = {}
    for section in parser.sections():
        values.update(parser.items(section))
    return values


def add_flags(parser: argparse.ArgumentParser, options: Sequence[Option],
              helps: Mapping[str, str]) -> None:
    """One ``--flag VALUE`` per option that has a flag."""
    for option in options:
        if option.flag:
            parser.add_argument(
                option.flag, dest=option.field, default=None, metavar="VALUE",
                help=helps.get(option.flag),
            )


# A value that may come from a file named by another option: (file option, value
# option, what the file holds, its converter).
FromFile = tuple[str, str, str, Callable[[str], Any]]
# The server's and the engine's API key, from --api-key-file.
API_KEY_FILE: FromFile = ("api_key_file", "api_key", "API key", str)


def resolve_options(options: Sequence[Option], args: argparse.Namespace,
                    environ: Mapping[str, str], config_path: str | None,
                    from_file: Sequence[FromFile] = ()) -> dict[str, Any]:
    """The converted value of every option given somewhere (flag > variable > file),
    keyed by field; a value with a ``*_file`` option (``from_file``) holds what that
    file says when the file was given at a higher level than the value itself."""
    file_values = read_config_file(config_path) if config_path else {}
    known_keys = {key: option for option in options for key in option.keys}
    for key in file_values:
        if key not in known_keys:
            raise SettingsError(f"unknown key {key!r} in config file {config_path}")

    resolved: dict[str, Any] = {}
    level: dict[str, int] = {}
    for option in options:
        candidates: list[tuple[int, str, str]] = []
        flag_value = getattr(args, option.field, None) if option.flag else None
        if flag_value is not None:
            candidates.append((_FLAG, flag_value, option.flag or ""))
        if option.env and environ.get(option.env, "") != "":
            candidates.append((_ENV, environ[option.env], option.env))
        for key in option.keys:
            if key in file_values:
                candidates.append((_FILE, file_values[key], f"{key} in {config_path}"))
                break
        if not candidates:
            continue
        source_level, raw, source = max(candidates, key=lambda c: c[0])
        try:
            resolved[option.field] = option.convert(raw)
        except ValueError as exc:
            raise SettingsError(f"invalid value for {source}: {exc}") from None
        level[option.field] = source_level

    # A value may come from a file named by its *_file option, which wins when given
    # at a higher level than the value itself.
    for file_field, field, what, convert in from_file:
        path = resolved.pop(file_field, None)
        if path is not None and (field not in resolved or level[file_field] > level[field]):
            try:
                resolved[field] = convert(read_key_file(path, what))
            except ValueError as exc:
                raise SettingsError(f"{what} file {path}: {exc}") from None
    return resolved


def read_key_file(path: str, what: str = "API key") -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {what} file {path}: {exc.__class__.__name__}") from None
    if not key:
        raise SettingsError(f"{what} file {path} is empty")
    return key
