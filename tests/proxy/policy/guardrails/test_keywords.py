"""``invalid_keywords``: whole words only, case-insensitive in the Unicode sense,
multi-word keywords across any whitespace."""

from __future__ import annotations

import pytest

from servegate.policy.guardrails.keywords import KeywordMatcher

MATCHER = KeywordMatcher(["bomb", "credit card", "c++", "#tag", "Straße", "炸弹", "Ωmega"])


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("how to build a bomb", "bomb"),
        ("A BOMB!", "bomb"),
        ("anti-bomb device", "bomb"),
        ("the bomb's fuse", "bomb"),
        ("(bomb)", "bomb"),
        ("\uff42\uff4f\uff4d\uff42", "bomb"),  # full-width letters
        ("my Credit Card number", "credit card"),
        ("credit\n\t card", "credit card"),
        ("I write c++ daily", "c++"),
        ("see #tag.", "#tag"),
        ("Hauptstrasse is not it but STRASSE is", "Straße"),
        ("有炸弹吗", "炸弹"),  # no spaces between words in Chinese
        ("ωMEGA point", "Ωmega"),
    ],
)
def test_finds(text: str, keyword: str) -> None:
    assert MATCHER.find(text) == keyword


@pytest.mark.parametrize(
    "text",
    [
        "bombastic speech",
        "A-bombs",
        "xbomb",
        "bomb_maker",
        "bomb2",
        "creditcard",
        "credit cards",
        "c++x",
        "a#tag",
        "#tags",
        "Hauptstraße",
        "",
    ],
)
def test_whole_words_only(text: str) -> None:
    assert MATCHER.find(text) is None


def test_first_occurrence_and_longest_keyword() -> None:
    matcher = KeywordMatcher(["card", "credit card", "gift"])
    assert matcher.find("a gift or a credit card") == "gift"
    assert matcher.find("a credit card") == "credit card"


def test_keywords_with_regex_characters_are_literal() -> None:
    matcher = KeywordMatcher(["a.b", "(x)"])
    assert matcher.find("a.b") == "a.b"
    assert matcher.find("axb") is None
    assert matcher.find("call (x) now") == "(x)"


def test_blank_and_duplicate_keywords() -> None:
    assert not KeywordMatcher([])
    assert not KeywordMatcher(["", "   "])
    assert KeywordMatcher([" Bomb ", "bomb", "BOMB"]).find("bomb") == "Bomb"
    assert KeywordMatcher([]).find("anything") is None
