"""The URL forms the server accepts, as regular expressions: the same pattern checks a
request (with ``fullmatch``: in Python, ``$`` also matches before a final newline) and
is published in the OpenAPI document, so the two cannot disagree.

- ``source_url``: an absolute URL with a scheme and a host (``scheme://host...``), or
  a ``file:`` URL with a path; no control character or space of any kind.
- ``callback_url``: ``http`` or ``https``, a host listed in ``webhook_allowed_hosts``
  (any letter case), a port only where the listed entry has none or the same one, and
  no credentials. With no host listed, no callback URL is accepted.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Not in a URL: controls, space and every Unicode space, listed rather than written
# "\s", which Python and ECMAScript (the OpenAPI pattern's dialect) define differently.
_BLANKS = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_CHAR = f"[^{_BLANKS}]"
_HOST_CHAR = f"[^/?#{_BLANKS}]"
SOURCE_URL = re.compile(
    rf"^(?:[A-Za-z][A-Za-z0-9+.-]*://{_HOST_CHAR}+(?:[/?#]{_CHAR}*)?|[Ff][Ii][Ll][Ee]:/{_CHAR}+)$")
SOURCE_URL_RULE = ("an absolute URL with a scheme and a host (or file:///path), "
                   "without whitespace")

# 0-65535, leading zeros allowed (the URL parser reads ":0080" as 80); ":" alone is
# no port.
_PORT = r"0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"


def _caseless(text: str) -> str:
    # Only the metacharacters are escaped: "\-" is an error in an ECMAScript pattern.
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha()
                   else f"\\{c}" if c in ".^$*+?()[]{}|\\" else c for c in text)


@lru_cache(maxsize=16)
def callback_pattern(allowed_hosts: tuple[str, ...]) -> re.Pattern[str] | None:
    """The callback URLs ``webhook_allowed_hosts`` lets through; None when it is empty
    (callbacks are disabled)."""
    if not allowed_hosts:
        return None
    netlocs = []
    for entry in allowed_hosts:
        host, colon, port = entry.rpartition(":")
        if colon and port.isdigit() and host and ":" not in host:
            netlocs.append(f"{_caseless(host)}:0*{int(port)}")  # this port only
        else:
            netlocs.append(f"{_caseless(entry)}(?::(?:{_PORT})?)?")
    return re.compile(rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{'|'.join(netlocs)})(?:[/?#]{_CHAR}*)?$")
