"""What a guardrail finds: an entity type and a span of the text it was found in.

Every recognizer reports spans on its own; :func:`resolve` merges overlapping findings of
one type (``password=…`` running into a ``-----BEGIN`` block is one secret), then keeps one
finding per stretch of text: secrets first (a token in ``https://ghp_…@github.com`` is a key, not the
local part of an email address), then the rest leftmost first, then longest, then the
more specific type, so a card number that also looks like a phone number is masked once,
as a card.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class EntityType(StrEnum):
    """The entity types, with Presidio's names where it has one (also the mask placeholders)."""

    SECRET_KEY = "SECRET_KEY"
    EMAIL_ADDRESS = "EMAIL_ADDRESS"
    IBAN_CODE = "IBAN_CODE"
    CREDIT_CARD = "CREDIT_CARD"
    US_SSN = "US_SSN"
    IP_ADDRESS = "IP_ADDRESS"
    PHONE_NUMBER = "PHONE_NUMBER"


# Where two findings cover the same span, the earlier type here wins.
_PRECEDENCE = {t: i for i, t in enumerate(EntityType)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One entity: its type and its span ``text[start:end]``."""

    type: EntityType
    start: int
    end: int

    def shifted(self, offset: int) -> Finding:
        return Finding(self.type, self.start + offset, self.end + offset)


def placeholder(entity: EntityType) -> str:
    """The text a masked entity is replaced with: ``[EMAIL_ADDRESS]`` and so on."""
    return f"[{entity.value}]"


def resolve(findings: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping findings in text order (see the module doc for who wins)."""
    kept: list[Finding] = []
    starts: list[int] = []
    for finding in sorted(_merged(findings), key=_rank):
        at = bisect_right(starts, finding.start)
        if at > 0 and kept[at - 1].end > finding.start:
            continue
        if at < len(kept) and kept[at].start < finding.end:
            continue
        kept.insert(at, finding)
        starts.insert(at, finding.start)
    return kept


def _merged(findings: Iterable[Finding]) -> list[Finding]:
    merged: list[Finding] = []
    last: dict[EntityType, int] = {}  # the index in merged of each type's last finding
    for finding in sorted(findings, key=lambda f: f.start):
        at = last.get(finding.type)
        if at is not None and finding.start < merged[at].end:
            previous = merged[at]
            merged[at] = Finding(finding.type, previous.start, max(previous.end, finding.end))
        else:
            last[finding.type] = len(merged)
            merged.append(finding)
    return merged


def _rank(finding: Finding) -> tuple[bool, int, int, int]:
    secret = finding.type is EntityType.SECRET_KEY
    return (not secret, finding.start, finding.start - finding.end, _PRECEDENCE[finding.type])


def apply_mask(text: str, findings: Iterable[Finding]) -> str:
    """``text`` with every (resolved, in order) finding replaced by its placeholder."""
    parts: list[str] = []
    at = 0
    for finding in findings:
        parts.append(text[at : finding.start])
        parts.append(placeholder(finding.type))
        at = finding.end
    parts.append(text[at:])
    return "".join(parts)
