"""Output MASK (and BLOCK) on streamed responses: mask entities that arrive split across
deltas, holding back as little text as possible.

:class:`StreamMasker` is fed the deltas in order; ``feed`` returns the text that is safe to
send now, already masked, and ``flush`` the rest at the end. For a stream with no run of
more than ``max_hold`` characters that could be one entity, the joined output is exactly
``mask(full_text)``: ``"bob@exa"`` then ``"mple.com"`` comes out as ``[EMAIL_ADDRESS]``.

What is held back, and why that suffices. Every recognizer's candidates are either one
whitespace-free token (emails, keys, IP addresses, ``4111-1111-1111-1111``), or several
tokens joined by single spaces whose edges are digits, capitals, ``+``, ``(``, ``)`` or
``-`` (``+44 20 7946 0958``, ``GB82 WEST 1234 …``, ``-----BEGIN RSA PRIVATE KEY-----``);
the only other thing a recognizer reads is a little text before a candidate (a label
like "call" or "password=", at most :data:`CONTEXT` characters). So the masker holds the
last token, together with the tokens before it that such a single space joins to it,
and sends everything before: no candidate can span that cut, and every candidate before
it has all the text it depends on. It keeps the last :data:`CONTEXT` characters already
sent (unmasked) as the left context of the next scan. Prose thus leaves with a delay of
one word.

The bound. The held run is capped at ``max_hold`` characters (256 by default: longer than
any card, IBAN, SSN, IP address or phone number, and than nearly every email address and
vendor key). Memory is therefore ``max_hold + CONTEXT`` characters plus the delta being
fed, however long the stream. When a run outgrows the cap, all but its last ``max_hold``
characters are sent, with two exceptions that keep long secrets masked whole: an entity
in progress where the cut falls (a JWT, a long key, or any token that starts with a key
prefix) is masked at once and the rest of its token is dropped as it arrives; and a PEM
private key is masked from its ``-----BEGIN`` line on, its lines dropped one by one up to
and with the ``-----END`` line. Only text with a run of more than ``max_hold`` characters
that are not such a token (300 characters of capitals and digits joined by single
spaces) may come out differently from ``mask``.

Cost: each delta that completes a word rescans the held text, with its context (text with
no digit, ``@`` or key prefix is sent without a scan), about 1.2 ms per KB of prose
with numbers in it and 2.4 ms per KB of text dense with entities, in 4-character deltas
(``scripts/pii-report.py --bench``).

For output BLOCK: :attr:`StreamMasker.findings` lists every entity seen so far (spans of
the unmasked stream); it is up to date when ``feed`` returns, before its text is sent, and
an entity is never part of what ``feed`` returns unmasked.
"""

from __future__ import annotations

import re
from enum import Enum, auto

from .context import REACH
from .entities import EntityType, Finding, apply_mask, placeholder
from .pii import DEFAULT, PiiDetector
from .secrets import (
    ASSIGNMENT_REACH,
    PEM_ARMOR_LINE,
    PEM_ARMOR_NAMES,
    PEM_BODY_LINE,
    PEM_FOOTER,
    PEM_HEADER,
    SECRET_START,
    TOKEN_RUN,
    continuation,
)

CONTEXT = max(REACH, ASSIGNMENT_REACH) + 16

# Every entity has one of these in it (a digit, ``@``, a key prefix; see the recognizers),
# so text without any is sent without a scan.
MAYBE_ENTITY = re.compile(
    r"[0-9@]|-----BEGIN|eyJ|AKIA|ASIA|ABIA|ACCA|AIza|gh[pousr]_|github_pat_|[sr]k_(?:live|test)_"
)

# The characters at the edge of a token that a single space can join to the next token
# inside one candidate.
_JOINS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+()-")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")
_LINE_REST = re.compile(r"[^\r\n]*")


def _run_end(run: re.Pattern[str], text: str, start: int) -> int:
    match = run.match(text, start)
    return match.end() if match else start


class _Mode(Enum):
    TEXT = auto()
    TOKEN = auto()  # inside a long token already masked: drop the rest of it
    PEM = auto()  # inside a PEM private key already masked: drop its lines


def hold_start(text: str) -> int:
    """Where the trailing run that could still grow into (or be part of) an entity starts:
    the last token and the tokens a single space joins to it (see the module doc)."""
    start = len(text)
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while start > 0:
        gap = start - 1
        if text[gap] != " " or gap == 0 or text[gap - 1].isspace():
            break
        if text[gap - 1] not in _JOINS or (start < len(text) and text[start] not in _JOINS):
            break
        start = gap
        while start > 0 and not text[start - 1].isspace():
            start -= 1
    return start


class StreamMasker:
    """Masks a stream of text deltas as :meth:`PiiDetector.mask` masks the whole text."""

    def __init__(self, detector: PiiDetector | None = None, *, max_hold: int = 256) -> None:
        if max_hold < 64:
            raise ValueError("max_hold must be at least 64 characters")
        self.detector = detector or DEFAULT
        self.max_hold = max_hold
        self.findings: list[Finding] = []
        self._pending = ""  # received, not yet sent nor dropped
        self._context = ""  # the last CONTEXT characters before _pending, unmasked
        self._offset = 0  # where _pending starts in the stream
        self._mode = _Mode.TEXT
        self._open: tuple[EntityType, int] | None = None  # the entity being dropped
        self._continue = TOKEN_RUN
        self._pem_phase = 0  # 0: after BEGIN, 1: after armor lines, 2: in the body
        self._pem_rest: re.Pattern[str] | None = None  # a line too long to hold: its chars

    @property
    def held(self) -> int:
        """How many received characters are held back right now."""
        return len(self._pending)

    def feed(self, delta: str) -> str:
        """Take the next delta; return the text that can be sent now, masked."""
        self._pending += delta
        return self._drain(final=False)

    def flush(self) -> str:
        """The end of the stream: return everything still held, masked."""
        text = self._drain(final=True)
        self._close()
        return text

    def _drain(self, *, final: bool) -> str:
        out: list[str] = []
        steps = {
            _Mode.TEXT: self._text_step,
            _Mode.TOKEN: self._token_step,
            _Mode.PEM: self._pem_step,
        }
        while steps[self._mode](out, final=final):
            pass
        return "".join(out)

    # Bookkeeping.

    def _consume(self, count: int) -> None:
        self._context = (self._context + self._pending[:count])[-CONTEXT:]
        self._pending = self._pending[count:]
        self._offset += count

    def _send(self, out: list[str], upto: int, findings: list[Finding]) -> None:
        kept = [f for f in findings if f.end <= upto]
        out.append(apply_mask(self._pending[:upto], kept))
        self.findings.extend(f.shifted(self._offset) for f in kept)
        self._consume(upto)

    def _open_entity(self, out: list[str], entity: EntityType) -> None:
        out.append(placeholder(entity))
        self._open = (entity, self._offset)
        self.findings.append(Finding(entity, self._offset, self._offset))

    def _close(self) -> None:
        if self._open is not None:
            entity, start = self._open
            self.findings[-1] = Finding(entity, start, self._offset)
            self._open = None
        self._mode = _Mode.TEXT

    # Modes: each step returns whether the drain should go on.

    def _text_step(self, out: list[str], *, final: bool) -> bool:
        if not self._pending:
            return False
        cut = len(self._pending) if final else hold_start(self._pending)
        if len(self._pending) - cut <= self.max_hold and not MAYBE_ENTITY.search(
            self._pending, 0, cut
        ):
            self._send(out, cut, [])  # prose: nothing to scan
            return False
        base = len(self._context)
        window = self._context + self._pending
        findings = [f.shifted(-base) for f in self.detector.detect(window, base)]
        if EntityType.SECRET_KEY in self.detector.types:
            header = PEM_HEADER.search(window, base)
            if header is not None:
                start, end = header.start() - base, header.end() - base
                for finding in findings:  # a secret running into the block is part of it
                    if (
                        finding.type is EntityType.SECRET_KEY
                        and finding.start < start < finding.end
                    ):
                        start = finding.start
                self._send(out, start, findings)
                self._open_entity(out, EntityType.SECRET_KEY)
                self._consume(end - start)
                self._mode, self._pem_phase, self._pem_rest = _Mode.PEM, 0, None
                return True
        if final:
            self._send(out, cut, findings)
            return False
        for finding in reversed(findings):
            if finding.start < cut < finding.end:
                cut = finding.start
        if len(self._pending) - cut > self.max_hold:
            return self._cap(out, findings)
        self._send(out, cut, findings)
        return False

    def _cap(self, out: list[str], findings: list[Finding]) -> bool:
        """The held run is longer than max_hold: send all but its last max_hold characters,
        or mask at once an entity in progress where the cut falls."""
        size = len(self._pending)
        cut = size - self.max_hold
        straddling = [f for f in findings if f.start < cut < f.end]
        if straddling and straddling[0].end < size:  # complete: send it masked
            cut = straddling[0].end
        elif straddling:
            entity = straddling[0]
            return self._start_token(out, entity.start, entity.type, findings, entity.end)
        else:
            for key in SECRET_START.finditer(self._pending, 0, cut):
                start = key.start()
                if _run_end(TOKEN_RUN, self._pending, start) == size:
                    return self._start_token(out, start, EntityType.SECRET_KEY, findings, start)
        self._send(out, cut, findings)
        return False

    def _start_token(
        self, out: list[str], start: int, entity: EntityType, findings: list[Finding], known: int
    ) -> bool:
        """Mask the entity starting at ``start`` now; drop what is known of it (up to
        ``known``) and then, as it arrives, the rest of its token."""
        self._continue = TOKEN_RUN
        if entity is EntityType.SECRET_KEY:
            self._continue = continuation(self._context + self._pending, len(self._context) + start)
        self._send(out, start, findings)
        self._open_entity(out, entity)
        self._consume(known - start)
        self._mode = _Mode.TOKEN
        return True

    def _token_step(self, out: list[str], *, final: bool) -> bool:
        end = _run_end(self._continue, self._pending, 0)
        kept = end
        while kept > 0 and self._pending[kept - 1] == ".":
            kept -= 1
        if end == len(self._pending) and not final:
            # the token may go on; trailing dots wait for the next character
            self._consume(kept if end - kept <= self.max_hold else end)
            return False
        self._consume(kept)
        self._close()
        return True

    def _pem_step(self, out: list[str], *, final: bool) -> bool:
        pending = self._pending
        if self._pem_rest is not None:  # a line too long to hold: drop it as it comes
            end = _run_end(self._pem_rest, pending, 0)
            self._consume(end)
            if end == len(pending):
                return self._pem_end(final)
            self._pem_rest = None
            return True
        if not pending:
            return self._pem_end(final)
        newline = 2 if pending.startswith("\r\n") else 1 if pending.startswith("\n") else 0
        if newline == 0:
            if pending == "\r" and not final:
                return False
            self._close()
            return True
        rest = pending[newline:]
        eol = rest.find("\n")
        line = rest[:eol].removesuffix("\r") if eol >= 0 else rest
        if eol >= 0 or final:
            return self._pem_line(line, newline, ended_by_newline=eol >= 0)
        footer = PEM_FOOTER.match(line)
        if footer is not None:
            self._consume(newline + footer.end())
            self._close()
            return True
        probe = line.removesuffix("\r")
        body = _BASE64.fullmatch(probe) is not None
        maybe_footer = probe.startswith("-") and len(probe) <= 80
        maybe_armor = self._pem_phase < 2 and any(
            n.startswith(probe) or probe.startswith(n) for n in PEM_ARMOR_NAMES
        )
        if not (body or maybe_footer or maybe_armor):
            self._close()
            return True
        if len(pending) > self.max_hold:
            armor = self._pem_phase < 2 and probe.startswith(PEM_ARMOR_NAMES)
            if not (body or armor):
                self._close()
                return True
            self._consume(newline + len(probe))
            self._pem_phase, self._pem_rest = (2, _BASE64) if body else (1, _LINE_REST)
            return True
        return False

    def _pem_line(self, line: str, newline: int, *, ended_by_newline: bool) -> bool:
        """One whole line after the BEGIN line: drop it if it belongs to the key."""
        if self._pem_phase < 2 and PEM_ARMOR_LINE.fullmatch(line):
            self._consume(newline + len(line))
            self._pem_phase = 1
            return True
        if self._pem_phase == 1 and line == "" and ended_by_newline:
            self._consume(newline)
            self._pem_phase = 2
            return True
        if PEM_BODY_LINE.fullmatch(line):
            self._consume(newline + len(line))
            self._pem_phase = 2
            return True
        footer = PEM_FOOTER.match(line)
        if footer is not None:
            self._consume(newline + footer.end())
        self._close()
        return True

    def _pem_end(self, final: bool) -> bool:
        if final:
            self._close()
        return False
