"""``invalid_keywords``: whether a text contains one of a list of words or phrases.

Matching is whole-word and case-insensitive in the Unicode sense: text and keywords are
NFKC-normalized and case-folded first, so ``BOMB``, full-width ``bomb`` and ``bomb``
are one word, and ``Straße`` matches ``STRASSE``. A keyword never matches inside a longer
word ("bomb" is not in "bombastic" nor in "A-bombs", but is in "bomb's" and "anti-bomb");
word characters are letters, digits and ``_`` of any script. A multi-word keyword matches
across any run of whitespace ("credit  card" and "credit\\ncard" for "credit card").
Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer,
Myanmar) have no word boundaries to check, so a keyword edge in those scripts matches
anywhere. A keyword that starts or ends with punctuation (``c++``, ``#tag``) is bounded
by the same rule: no word character may touch it.

All keywords are compiled into one regex (longest first) when the matcher is made: make
one per keyword list, not per request.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")


def fold(text: str) -> str:
    """The form text and keywords are compared in: NFKC, then case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def _bounded(char: str) -> bool:
    """Whether no word character may touch this keyword edge (every edge but a letter of a
    script written without spaces)."""
    if re.match(r"\w", char) is None:
        return True
    return not unicodedata.name(char, "").startswith(_UNSPACED_SCRIPTS)


def _pattern(keyword: str) -> str:
    body = r"\s+".join(re.escape(word) for word in keyword.split())
    head = r"(?<!\w)" if _bounded(keyword[0]) else ""
    tail = r"(?!\w)" if _bounded(keyword[-1]) else ""
    return head + body + tail


class KeywordMatcher:
    """Finds the first of ``keywords`` in a text; blank keywords are ignored."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self._original: dict[str, str] = {}
        for keyword in keywords:
            folded = " ".join(fold(keyword).split())
            if folded and folded not in self._original:
                self._original[folded] = keyword.strip()
        ordered = sorted(self._original, key=len, reverse=True)
        self._regex = re.compile("|".join(_pattern(k) for k in ordered)) if ordered else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def find(self, text: str) -> str | None:
        """The keyword (as it was given) that occurs first in ``text``, or None."""
        if self._regex is None:
            return None
        match = self._regex.search(fold(text))
        if match is None:
            return None
        return self._original[" ".join(match.group().split())]
