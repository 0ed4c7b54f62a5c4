"""API keys, tokens and private keys (``SECRET_KEY``).

Three kinds of evidence, from strongest to weakest:

* A vendor prefix with a fixed shape: AWS access key ids (``AKIA``/``ASIA``…), GitHub
  tokens (``ghp_``, ``gho_``, ``github_pat_``…), OpenAI- and Anthropic-style ``sk-…``,
  Stripe ``sk_live_``, Slack ``xox…``, Google ``AIza…`` and JWTs (``eyJ….eyJ….sig`` whose
  header decodes to a JSON object). One regex finds the prefixes; the token that follows
  (the run of ``[A-Za-z0-9_.-]``, trailing dots dropped) must then match the vendor's
  shape in full, and the whole token is the finding, so nothing of it is left unmasked.
* A PEM private key: the ``-----BEGIN … PRIVATE KEY-----`` line, the armor header lines
  and base64 lines under it, and the ``-----END`` line when there is one.
* A value assigned to a name that says it is secret (``password=``, ``api_key:``,
  ``"client_secret": "…"``, ``Authorization: Bearer …``), kept only when the value looks
  machine-made: mixed case with digits, or a hexadecimal digest, with enough Shannon
  entropy (:func:`machine_made`). So ``password: ********``, ``token = None`` and
  ``api_key = os.environ["KEY"]`` are not findings, and neither is ``password=hunter2``:
  a guessable human password is out of reach of any pattern that keeps precision high.
  Only the value is the finding; the name stays readable.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator

# The characters a vendor token is made of; a token is their maximal run, trailing dots
# dropped (a sentence may end right after it). The stream masker uses the same rule.
TOKEN_RUN = re.compile(r"[A-Za-z0-9_\-.]*")

SECRET_START = re.compile(
    r"(?<![A-Za-z0-9_\-.])"
    r"(?:AKIA|ASIA|ABIA|ACCA|AIza|gh[pousr]_|github_pat_|sk-|[sr]k_(?:live|test)_"
    r"|xox[abposr]-|xapp-|eyJ)"
)


def _has_classes(value: str, *, digit: bool, upper: bool, lower: bool) -> bool:
    return (
        (not digit or any(c.isdigit() for c in value))
        and (not upper or any(c.isupper() for c in value))
        and (not lower or any(c.islower() for c in value))
    )


def _jwt_header_ok(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        return isinstance(json.loads(decoded), dict)
    except (binascii.Error, ValueError):
        return False


_SHAPES: list[tuple[re.Pattern[str], Callable[[str], bool]]] = [
    (re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}"), lambda t: True),
    (re.compile(r"AIza[0-9A-Za-z_\-]{35}"), lambda t: True),
    (re.compile(r"gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244}"), lambda t: True),
    (
        re.compile(r"sk-[A-Za-z0-9_\-]{20,}"),
        lambda t: _has_classes(t[3:], digit=True, upper=True, lower=True),
    ),
    (re.compile(r"[sr]k_(?:live|test)_[0-9A-Za-z]{16,}"), lambda t: True),
    (
        re.compile(r"(?:xox[abposr]|xapp)-[0-9A-Za-z\-]{10,}"),
        lambda t: _has_classes(t, digit=True, upper=False, lower=False),
    ),
    (
        re.compile(r"eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]*)?"),
        _jwt_header_ok,
    ),
]


def token_end(text: str, start: int) -> int:
    """Where the token starting at ``start`` ends: its run of token characters, less any
    trailing dots."""
    match = TOKEN_RUN.match(text, start)
    end = match.end() if match else start
    while end > start and text[end - 1] == ".":
        end -= 1
    return end


def _vendor_tokens(text: str, pos: int) -> Iterator[tuple[int, int]]:
    for hit in SECRET_START.finditer(text, pos):
        start = hit.start()
        end = token_end(text, start)
        token = text[start:end]
        if any(shape.fullmatch(token) and valid(token) for shape, valid in _SHAPES):
            yield start, end


_PEM_KINDS = r"(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
PEM_HEADER = re.compile(r"-----BEGIN " + _PEM_KINDS)
PEM_FOOTER = re.compile(r"-----END " + _PEM_KINDS)
PEM_ARMOR_LINE = re.compile(r"(?:Proc-Type|DEK-Info|Version|Comment): ?[^\r\n]*")
PEM_BODY_LINE = re.compile(r"[A-Za-z0-9+/=]+")
PEM_ARMOR_NAMES = ("Proc-Type:", "DEK-Info:", "Version:", "Comment:")
_NL = r"\r?\n"
_PEM_BLOCK = re.compile(
    PEM_HEADER.pattern
    + rf"(?:(?:{_NL}{PEM_ARMOR_LINE.pattern})+(?:{_NL}(?={_NL}))?)?"
    + rf"(?:{_NL}{PEM_BODY_LINE.pattern}(?={_NL}|\Z))*"
    + rf"(?:{_NL}{PEM_FOOTER.pattern})?"
)


def _pem_blocks(text: str, pos: int) -> Iterator[tuple[int, int]]:
    if "-----BEGIN" in text:
        for match in _PEM_BLOCK.finditer(text, pos):
            yield match.span()


_SECRET_NAME = (
    r"(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|apikey|access[_\-]?key"
    r"|auth[_\-]?key|private[_\-]?key|client[_\-]?secret|credentials?)"
)
_ASSIGNMENT = re.compile(
    rf"(?i){_SECRET_NAME}(?:[_.\-][a-z0-9]{{1,12}}){{0,3}}[\"']?\s{{0,3}}(?::=|=>|=|:)\s{{0,3}}"
    r"[\"']?(?P<value>[^\s\"'`,;&()\[\]{}<>]{8,})"
)
_VALUE_RUN = re.compile(r"[^\s\"'`,;&()\[\]{}<>]*")
_BEARER = re.compile(r"(?i)\bbearer\s{1,3}(?P<value>[A-Za-z0-9\-._~+/]{16,}=*)")
_BEARER_RUN = re.compile(r"[A-Za-z0-9\-._~+/=]*")

# How far before a value the name that makes it a secret can start; the stream masker
# keeps at least this much already-sent text as context.
ASSIGNMENT_REACH = 80


def _entropy(value: str) -> float:
    counts = Counter(value).values()
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts)


_HEX_TOKEN = re.compile(r"[0-9a-fA-F]+(?:-[0-9a-fA-F]+)*")


def machine_made(value: str) -> bool:
    """Whether a value looks generated (a key or token) rather than typed by a person:
    mixed case with digits (8+ characters), or hexadecimal with digits and letters, dashes
    allowed (16+: digests, UUIDs), with enough entropy either way. URLs never are."""
    if "://" in value:
        return False
    digits = any(c.isdigit() for c in value)
    letters = any(c.isalpha() for c in value)
    if len(value) >= 16 and digits and letters and _HEX_TOKEN.fullmatch(value):
        return _entropy(value) >= 3.0
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value)
    return len(value) >= 8 and mixed and digits and _entropy(value) >= 2.5


def _values(pattern: re.Pattern[str], text: str, pos: int) -> Iterator[re.Match[str]]:
    """Matches of an assignment pattern whose name starts at most ASSIGNMENT_REACH before
    ``pos``; each search starts at the last value, not after it ("token=…auth_key=…" is
    two assignments)."""
    at = max(0, pos - ASSIGNMENT_REACH)
    while (match := pattern.search(text, at)) is not None:
        yield match
        at = match.start("value")


def _assigned_values(text: str, pos: int) -> Iterator[tuple[int, int]]:
    for pattern in (_ASSIGNMENT, _BEARER):
        for match in _values(pattern, text, pos):
            start, end = match.span("value")
            while end > start and text[end - 1] == ".":
                end -= 1
            if machine_made(text[start:end]):
                yield start, end


def continuation(text: str, start: int) -> re.Pattern[str]:
    """The characters a secret starting at ``start`` goes on with: those of an assigned
    value or a bearer token when it is one (each a superset of the next), else a token's.
    The stream masker drops a long secret's rest with it."""
    for pattern, run in ((_ASSIGNMENT, _VALUE_RUN), (_BEARER, _BEARER_RUN)):
        for match in _values(pattern, text, start):
            if match.start("value") == start:
                return run
            if match.start("value") > start:
                break
    return TOKEN_RUN


def find_secrets(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    """Spans of API keys, tokens, private keys and secret-looking assigned values, from
    ``pos`` on (text before it is read as context)."""
    yield from _vendor_tokens(text, pos)
    yield from _pem_blocks(text, pos)
    yield from _assigned_values(text, pos)
