"""Phone numbers (``PHONE_NUMBER``), validated offline by ``phonenumbers`` (Google's
libphonenumber metadata: which number ranges are in service in each country).

A regex finds runs of 7 to 21 digits joined by single spaces, dots, dashes or
parentheses; ``phonenumbers`` decides. Its own ``PhoneNumberMatcher`` is about 3 ms per KB,
too slow for every request, so only these candidates are parsed (about 40 µs each).

* International numbers (``+44 20 7946 0958``, ``+1-415-555-2671``, ``+14155552671``,
  ``0049 30 1234567``, ``011 44 20 7946 0958``) must be valid numbers of their country.
  Without a ``+`` and without separators (``00493012345678``), a word like "phone" or
  "call" must come first.
* National numbers (``(415) 555-2671``, ``020 7946 0958``, ``06 12 34 56 78``) must be
  valid in one of ``regions`` and written as that country writes them: the digits of its
  national format, trunk prefix included (``5555 5555 5555`` is a German number only as
  ``05555 …``) except where people drop it (the US ``1``, India's ``0``), and the area
  code as the first group, so a serial like ``7734-2291-08`` is not a phone number
  although 773 422 9108 is one. A word like "phone" or "call" before the number waives
  the grouping rule, and a bare national number (``4155552671``) needs one.
* Never: dates (``2024-03-15``, ``15.03.2024``), dotted quads, and numbers after a label
  such as ``Order #``, ``ISBN`` or ``SN:`` (:mod:`.context`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from .context import labelled_otherwise, says_phone

DEFAULT_REGIONS = ("US", "GB", "DE", "FR", "IN", "AU")
# Where numbers are commonly written without their trunk prefix (elsewhere, "030 1234567"
# in Germany, a number without its 0 is not a number as anyone writes it).
_TRUNK_OPTIONAL = frozenset({"US", "CA", "IN"})

_CANDIDATE = re.compile(
    r"(?<![\w+.\-/])(?:\+ ?|\(\+?(?=\d{1,5}\)))?\d(?:(?:[ .\-]|\) ?|[ .\-]?\()?\d){6,20}(?!\w|[.\-]?\d)"
)
_DATE = re.compile(r"\d{4}([-./ ])\d{1,2}\1\d{1,2}|\d{1,2}([-./ ])\d{1,2}\2\d{2,4}")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_GROUP = re.compile(r"\d+")


@lru_cache(maxsize=2048)
def _parse(number: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    """The valid number ``number`` is, or None (cached: the stream masker asks again)."""
    try:
        parsed = phonenumbers.parse(number, region)
    except NumberParseException:
        return None
    return parsed if phonenumbers.is_valid_number(parsed) else None


def _national_form(
    candidate: str, parsed: phonenumbers.PhoneNumber, region: str
) -> tuple[bool, bool]:
    """Whether the candidate has the digits of the number's national format (with or
    without the trunk prefix where people write it so: ``1-415-555-2671`` in the US,
    ``98765 43210`` in India), and whether it starts with the area code as grouped there."""
    national = _GROUP.findall(phonenumbers.format_number(parsed, PhoneNumberFormat.NATIONAL))
    groups = _GROUP.findall(candidate)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    prefix = (metadata.national_prefix if metadata else None) or ""
    digits, expected = "".join(groups), "".join(national)
    same = digits == expected
    if prefix and not expected.startswith(prefix):
        same = same or digits == prefix + expected
    elif prefix and region in _TRUNK_OPTIONAL:
        same = same or prefix + digits == expected
    area = national[0]
    firsts = {area, area.removeprefix(prefix) if prefix else area}
    area_first = groups[0] in firsts or (groups[0] == prefix and groups[1:2] == [area])
    return same, area_first


def _is_phone(candidate: str, text: str, start: int, regions: Sequence[str]) -> bool:
    if _DATE.fullmatch(candidate) or _DOTTED_QUAD.fullmatch(candidate):
        return False
    grouped = len(_GROUP.findall(candidate)) > 1
    if candidate.startswith(("+", "(+")):
        return _parse(candidate, None) is not None
    for exit_code in ("00", "011"):
        if candidate.startswith(exit_code) and candidate[len(exit_code)] != "0":
            international = "+" + candidate[len(exit_code) :]
            if _parse(international, None) is not None:
                return grouped or says_phone(text, start)
    named = says_phone(text, start)
    if not grouped and not named:
        return False
    for region in regions:
        parsed = _parse(candidate, region)
        if parsed is not None:
            digits, area_first = _national_form(candidate, parsed, region)
            if digits and (area_first or named or not grouped):
                return True
    return False


def _shorter(candidate: str) -> Iterator[str]:
    """The candidate, then without its last group if that is a short count after a space
    (a run of digits may go on past the number: "call 415 555 2671 24 hours a day")."""
    yield candidate
    head, _, tail = candidate.rpartition(" ")
    if head and tail.isdigit() and len(tail) <= 3:
        yield head


def find_phones(
    text: str,
    pos: int = 0,
    regions: Sequence[str] = DEFAULT_REGIONS,
    covered: Sequence[tuple[int, int]] = (),
) -> Iterator[tuple[int, int]]:
    """Spans of phone numbers from ``pos`` on. Candidates inside a ``covered`` span (what
    another recognizer found, which would win the overlap anyway) are not parsed."""
    for match in _CANDIDATE.finditer(text, pos):
        start, end = match.span()
        if any(a <= start and end <= b for a, b in covered) or labelled_otherwise(text, start):
            continue
        for candidate in _shorter(match.group()):
            digits = sum(c.isdigit() for c in candidate)
            if 7 <= digits <= 15 and _is_phone(candidate, text, start, regions):
                yield start, start + len(candidate)
                break
