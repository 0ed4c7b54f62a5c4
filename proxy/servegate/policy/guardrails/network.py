"""Email and IP addresses.

* ``EMAIL_ADDRESS``: ``local@domain.tld`` (letters of any script, so internationalized
  addresses too) with a letters-only top-level domain,
  so ``@mentions``, ``user@localhost``, ``lodash@4.17.21`` and ``image@sha256:…`` are not
  addresses; neither are image names like ``icon@2x.png`` (a top-level domain that is an
  image file extension).
* ``IP_ADDRESS``: dotted quads and IPv6 (``::`` shorthand, IPv4-mapped forms), each
  validated by :mod:`ipaddress` (so ``256.1.1.1`` and ``01.2.3.4`` are not addresses, nor
  are times like ``12:30:45`` or MAC addresses). A dotted quad after a word like
  "version", "build" or "v" (``version 1.2.3.4``) is a version number, not an address;
  an IPv6 candidate needs a decimal digit, so ``std::vector`` and ``add::face`` are not.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from .context import says_version

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[^\W_][\w.%+'\-]{0,63}"
    r"@(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,24}"
    r"(?![\w\-]|\.\w)"
)
_LONGEST = 254  # RFC 5321: the longest path an address can be used in
_NOT_DOMAINS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tiff"})


def find_emails(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    if "@" not in text:
        return
    for match in _EMAIL.finditer(text, pos):
        address = match.group()
        local, domain = address.split("@", 1)
        if ".." in local or local.endswith(".") or len(address) > _LONGEST:
            continue
        if domain.rsplit(".", 1)[1].lower() in _NOT_DOMAINS:
            continue
        yield match.span()


_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?![\w:]|\.\d)"
)


def find_ips(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    for match in _IPV4.finditer(text, pos):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        if not says_version(text, match.start()):
            yield match.span()
    if "::" not in text and text.count(":") < 7:
        return
    for match in _IPV6.finditer(text, pos):
        candidate = match.group()
        if not any(c.isdigit() for c in candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield match.span()
