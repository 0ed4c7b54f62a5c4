"""PII detection and masking for ``guardrails.{input,output}.pii`` (BLOCK and MASK).

Each entity type has a recognizer (:mod:`.secrets`, :mod:`.network`, :mod:`.numbers`,
:mod:`.phones`): precompiled regexes find candidates, and checksums, registries or
libraries decide (Luhn, mod 97, SSN issuing rules, ``ipaddress``, ``phonenumbers``).
Nothing is learned and nothing is downloaded, so a finding can always be explained.
Overlaps are resolved once for all types (:func:`.entities.resolve`).

Each type scans on its own rather than through one alternation of every pattern: in one
regex, a candidate that fails its checksum would hide a candidate of another type at the
same place (a Luhn-invalid run of digits that is a phone number), and each scan is one
pass in C anyway. Where patterns share a shape they are one regex (the vendor key
prefixes). ``detect(text, start)`` reports findings from ``start`` on, reading the text
before it as context: the stream masker rescans only what it holds.

Cost, measured with ``scripts/pii-report.py --bench`` on the 2-core CI machine (Python
3.11): about 0.2 ms per KB of prose (one pass of each precompiled regex; the email,
IPv6 and PEM scans skipped when there is no ``@``, ``::`` or ``-----BEGIN``), about 0.8 ms
per KB of text dense with entities, every number new (six findings per 170 characters,
each validated). A phone candidate is the dearest check (about 40 µs per region tried, in
``phonenumbers``), so candidates already inside another finding are not parsed, and
``phonenumbers`` and IBAN results are cached (the stream masker rescans its window).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .entities import EntityType, Finding, apply_mask, resolve
from .network import find_emails, find_ips
from .numbers import find_cards, find_ibans, find_ssns
from .phones import DEFAULT_REGIONS, find_phones
from .secrets import find_secrets

Recognizer = Callable[[str, int], Iterable[tuple[int, int]]]

_RECOGNIZERS: dict[EntityType, Recognizer] = {
    EntityType.SECRET_KEY: find_secrets,
    EntityType.EMAIL_ADDRESS: find_emails,
    EntityType.IBAN_CODE: find_ibans,
    EntityType.CREDIT_CARD: find_cards,
    EntityType.US_SSN: find_ssns,
    EntityType.IP_ADDRESS: find_ips,
}


class PiiDetector:
    """Finds entities of ``types`` (all by default); national phone numbers are read as
    numbers of ``phone_regions``, in that order."""

    def __init__(
        self,
        types: Iterable[EntityType] | None = None,
        *,
        phone_regions: Sequence[str] = DEFAULT_REGIONS,
    ) -> None:
        self.types = frozenset(EntityType if types is None else types)
        self.phone_regions = tuple(phone_regions)
        self._recognizers = [(t, r) for t, r in _RECOGNIZERS.items() if t in self.types]

    def detect(self, text: str, start: int = 0) -> list[Finding]:
        """The entities in ``text``, in order, none overlapping. With ``start``, only those
        from there on (the text before is still read as context)."""
        found = [
            Finding(entity, a, b)
            for entity, recognize in self._recognizers
            for a, b in recognize(text, start)
        ]
        if EntityType.PHONE_NUMBER in self.types:
            covered = [(f.start, f.end) for f in found]
            phones = find_phones(text, start, self.phone_regions, covered)
            found += [Finding(EntityType.PHONE_NUMBER, a, b) for a, b in phones]
        return [f for f in resolve(found) if f.start >= start]

    def mask(self, text: str) -> tuple[str, list[Finding]]:
        """``text`` with each entity replaced by ``[TYPE]``, and the entities (spans of the
        original text)."""
        findings = self.detect(text)
        return apply_mask(text, findings), findings


DEFAULT = PiiDetector()


def detect(text: str) -> list[Finding]:
    """The entities in ``text`` (every type, default phone regions)."""
    return DEFAULT.detect(text)


def mask(text: str) -> tuple[str, list[Finding]]:
    """``text`` with every entity replaced by its placeholder, and the entities."""
    return DEFAULT.mask(text)
