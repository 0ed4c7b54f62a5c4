"""Payment cards, US social security numbers and IBANs: regexes find candidates, checksums
and issuing rules decide.

* ``CREDIT_CARD``: 13 to 19 digits, bare or in groups split by one kind of separator
  (space or dash, groups of 4 to 6 but the last), starting with a digit some card network
  issues (2 to 6), passing the Luhn check. An order number with a valid Luhn digit that
  starts with 4 is indistinguishable from a Visa number and is masked as one.
* ``US_SSN``: ``AAA-GG-SSSS`` or ``AAA GG SSSS``, or nine bare digits after a word like
  "SSN"; python-stdnum rejects area 000, 666 and 9xx, group 00, serial 0000 and numbers
  that were published as examples.
* ``IBAN_CODE``: a country code, two check digits and the account, in capitals, bare or
  in groups of four; python-stdnum checks mod 97, the country's length and the account's structure.
  When a group of capitals follows an IBAN ("… 7654 32 THEN"), shorter prefixes ending at
  a group boundary are tried.

A number right after a label such as ``Order #`` or ``ISBN`` is not an SSN (nor a phone
number) unless a word like "SSN" comes first (``SSN#536228109``): see :mod:`.context`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from stdnum import iban, luhn
from stdnum.us import ssn

from .context import labelled_otherwise, says_ssn

_CARD = re.compile(r"(?<![\w.+\-/])\d(?:[ \-]?\d){12,18}(?!\w|[.\-/]\d)")
_SEPARATORS = re.compile(r"[ \-]")
_IBAN_HEAD = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2} $")


def _card_ok(candidate: str) -> bool:
    digits = _SEPARATORS.sub("", candidate)
    if digits[0] not in "23456" or len(set(digits)) == 1:
        return False
    groups = _SEPARATORS.split(candidate)
    if len(groups) > 1:
        if len(set(_SEPARATORS.findall(candidate))) != 1:
            return False
        if not all(4 <= len(g) <= 6 for g in groups[:-1]) or len(groups[-1]) > 6:
            return False
    return luhn.is_valid(digits)


def find_cards(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text, pos):
        if _IBAN_HEAD.search(text, max(0, match.start() - 5), match.start()):
            continue  # the digits of an IBAN (an invalid one, or it would have been found)
        candidate = match.group()
        for end in _group_ends(candidate, minimum=13):
            if _card_ok(candidate[:end]):
                yield match.start(), match.start() + end
                break


def _group_ends(candidate: str, *, minimum: int) -> Iterator[int]:
    """The whole candidate, then its prefixes that end where a group ends (longest first),
    while they keep ``minimum`` characters that are not separators."""
    yield len(candidate)
    for i in range(len(candidate) - 1, 0, -1):
        if candidate[i] == " " or candidate[i] == "-":
            if len(candidate[:i].replace(" ", "").replace("-", "")) < minimum:
                return
            yield i


_SSN = re.compile(
    r"(?<![\w.\-/])(?:\d{3}(?P<sep>[ \-])\d{2}(?P=sep)\d{4}|(?P<bare>\d{9}))(?!\w|[.\-/]\d)"
)


def find_ssns(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    for match in _SSN.finditer(text, pos):
        start = match.start()
        named = says_ssn(text, start)
        if not named and (match.group("bare") or labelled_otherwise(text, start)):
            continue
        if ssn.is_valid(match.group().replace(" ", "-")):
            yield match.span()


@lru_cache(maxsize=1024)
def _iban_valid(candidate: str) -> bool:
    return iban.is_valid(candidate)  # about 40 µs; the stream masker asks again per delta


_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{1,4}){3,8})(?![A-Za-z0-9])"
)


def find_ibans(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text, pos):
        candidate = match.group()
        for end in _group_ends(candidate, minimum=15):
            if _iban_valid(candidate[:end]):
                yield match.start(), match.start() + end
                break
