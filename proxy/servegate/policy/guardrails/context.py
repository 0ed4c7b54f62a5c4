"""The words just before a candidate that make it more or less likely to be an entity.

Only text *before* a candidate is read (at most :data:`REACH` characters), never text
after it: the stream masker can then decide on a candidate as soon as it ends, with the
already-sent text it keeps as context.
"""

from __future__ import annotations

import re

REACH = 40

# A label that names the number as something else: "Order #", "ISBN", "SN:", "Part No.".
_NOT_PERSONAL = re.compile(
    r"(?i)(?:\b(?:order|invoice|isbn(?:-1[03])?|serial|s/n|sn|sku|part|model|ticket|tracking"
    r"|ref|reference|case|item|batch|lot|build|po|issue|pr|tx|txn|transaction|hash|card)"
    r"(?:\s*(?:no\.?|nr\.?|num(?:ber)?|id|#))?(?:\s+(?:is|was|reads))?|#)[\s:#.=\-]*$"
)

_PHONE_WORDS = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|mob|cell|call|fax|whatsapp|sms|text\s+me|dial|ring"
    r"|reach\s+me|contact|number|hotline|landline)\b"
)

_SSN_WORDS = re.compile(r"(?i)\b(?:ssn|ss#|social\s+security|soc\.?\s*sec\.?|taxpayer)")

# "version 1.2.3.4", "build 10.0.0.1", "v: 1.2.3.4".
_VERSION = re.compile(r"(?i)\b(?:version|ver|release|build|firmware|rev|revision|v)\.?\s*[:=]?\s*$")


def _before(text: str, start: int) -> str:
    return text[max(0, start - REACH) : start]


def labelled_otherwise(text: str, start: int) -> bool:
    """Whether the candidate at ``start`` follows a label like ``Order #`` or ``ISBN``."""
    return _NOT_PERSONAL.search(_before(text, start)) is not None


def says_phone(text: str, start: int) -> bool:
    return _PHONE_WORDS.search(_before(text, start)) is not None


def says_ssn(text: str, start: int) -> bool:
    return _SSN_WORDS.search(_before(text, start)) is not None


def says_version(text: str, start: int) -> bool:
    return _VERSION.search(_before(text, start)) is not None
