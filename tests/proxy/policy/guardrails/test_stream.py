"""The stream masker: split anywhere, the joined output is ``mask(full text)``; the held
text stays bounded; BLOCK callers see each entity before its text is sent."""

from __future__ import annotations

import base64
import json
import random
import string
from itertools import pairwise

import pytest

from servegate.policy.guardrails.entities import EntityType
from servegate.policy.guardrails.pii import PiiDetector, mask
from servegate.policy.guardrails.stream import MAYBE_ENTITY, StreamMasker, hold_start
from tests.proxy.policy.guardrails.corpus import CORPUS, load_corpus

TEXTS = [
    "Mail bob@example.com or call (415) 555-2671 now. Card 4111 1111 1111 1111.",
    "IBAN GB82 WEST 1234 5698 7654 32 THEN ip 10.0.0.1, fe80::1 and version 1.2.3.4.",
    'key AKIAIOSFODNN7EXAMPLE and password = "Zx81KqPl0Vb3Nm2R" then +44 20 7946 0958.',
    "SSN 536-22-8109, call 4155552671 or 0049 30 1234567; order #415-555-2671.",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabcd==\n-----END RSA PRIVATE KEY-----\nok",
    "DB_PASSWORD=8ciUGZJrKvQq0emJ-----BEGIN PRIVATE KEY-----\nMIIEowIBAAK\n, done",
    "token=Ab3dEfGh12auth_key => Zx81KqPl0Vb3Nm2R ok",
    "bob@exa" + "mple.com",
    "no entities at all, just words",
    "",
]


def streamed(text: str, cuts: list[int], masker: StreamMasker | None = None) -> str:
    masker = masker or StreamMasker()
    bounds = [0, *cuts, len(text)]
    out = [masker.feed(text[a:b]) for a, b in pairwise(bounds)]
    return "".join(out) + masker.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_every_split_point(text: str) -> None:
    expected = mask(text)[0]
    for cut in range(len(text) + 1):
        assert streamed(text, [cut]) == expected, cut


@pytest.mark.parametrize("text", TEXTS)
def test_one_character_at_a_time(text: str) -> None:
    assert streamed(text, list(range(1, len(text)))) == mask(text)[0]


def test_split_email() -> None:
    masker = StreamMasker()
    assert masker.feed("write to bob@exa") == "write to "
    assert masker.feed("mple.com today") == "[EMAIL_ADDRESS] "
    assert masker.flush() == "today"


def test_random_chunks_over_the_corpus() -> None:
    rnd = random.Random(7)
    for text, _ in load_corpus():
        cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, 6)))
        assert streamed(text, cuts) == mask(text)[0], text


def test_corpus_snippets_run_together() -> None:
    rnd = random.Random(11)
    texts = [text for text, _ in load_corpus()]
    for _ in range(150):
        sep = rnd.choice([" ", "\n", ", ", "", "  ", ": "])
        text = sep.join(rnd.choice(texts) for _ in range(rnd.randint(2, 4)))
        cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, 12)))
        masker = StreamMasker(max_hold=rnd.choice([64, 256]))
        assert streamed(text, cuts, masker) == mask(text)[0], text


def b64(rnd: random.Random, n: int) -> str:
    return "".join(rnd.choice(string.ascii_letters + string.digits + "+/") for _ in range(n))


def long_texts() -> list[str]:
    rnd = random.Random(3)
    body = "\n".join(b64(rnd, 64) for _ in range(30))
    pem = f"-----BEGIN PRIVATE KEY-----\n{body}\nAb==\n-----END PRIVATE KEY-----"
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256"}).encode()).decode().rstrip("=")
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "x" * 500}).encode()).decode()
    jwt = f"{head}.{claims.rstrip('=')}.{b64(rnd, 43).replace('+', '-').replace('/', '_')}"
    return [
        f"Here is the key:\n{pem}\nKeep it safe.",
        f"Auth with {jwt}. Done",
        f"token={jwt} done",
        "X " * 400 + "call +44 20 7946 0958 now",
        "word " * 400 + "bob@example.com",
        f"-----BEGIN PRIVATE KEY-----\nComment: {'c ' * 200}\n{body}\n-----END PRIVATE KEY-----",
        "mail " + "a" * 60 + "@" + ".".join(["b" * 60] * 3) + ".com please",  # 249 long
        "mail " + "a" * 60 + "@" + ".".join(["b" * 60] * 4) + ".com please",  # too long
    ]


@pytest.mark.parametrize("index", range(8))
def test_long_entities_and_runs_stay_bounded(index: int) -> None:
    text = long_texts()[index]
    rnd = random.Random(index)
    for _ in range(20):
        masker = StreamMasker(max_hold=256)
        out, at = [], 0
        while at < len(text):
            step = rnd.randint(1, 16)
            out.append(masker.feed(text[at : at + step]))
            at += step
            assert masker.held <= 256
        assert "".join(out) + masker.flush() == mask(text)[0]


def test_memory_bounded_on_a_long_stream() -> None:
    masker = StreamMasker(max_hold=64)
    chunk = "A1 B2 C3 D4 " * 10
    for _ in range(500):
        masker.feed(chunk)
        assert masker.held <= 64
    masker.flush()


def test_findings_are_known_before_their_text_is_sent() -> None:
    masker = StreamMasker()
    sent = masker.feed("my card is 4111 1111 ")
    assert sent == "my card is " and masker.findings == []
    sent = masker.feed("1111 1111 ok")
    assert sent == "[CREDIT_CARD] "
    assert [(f.type, f.start, f.end) for f in masker.findings] == [(EntityType.CREDIT_CARD, 11, 30)]


def test_long_secret_is_reported_while_open() -> None:
    masker = StreamMasker(max_hold=64)
    sent = masker.feed("key sk-" + "aB3" * 40)
    assert sent == "key [SECRET_KEY]"
    assert masker.findings[0].type is EntityType.SECRET_KEY
    assert masker.feed("aB3 more") == " "
    assert masker.flush() == "more"
    assert (masker.findings[0].start, masker.findings[0].end) == (4, 4 + 3 + 3 * 41)


def test_detector_types_apply() -> None:
    masker = StreamMasker(PiiDetector([EntityType.EMAIL_ADDRESS]))
    text = "bob@example.com 10.0.0.1 -----BEGIN PRIVATE KEY-----\nAAAA"
    assert masker.feed(text) + masker.flush() == "[EMAIL_ADDRESS] 10.0.0.1 " + text[25:]


def test_max_hold_has_a_floor() -> None:
    with pytest.raises(ValueError, match="max_hold"):
        StreamMasker(max_hold=10)


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("hello wor", "wor"),
        ("hello world ", ""),
        ("card 4111 1111 ", "4111 1111 "),
        ("card 4111 1111", "4111 1111"),
        ("call +44 20 79", "+44 20 79"),
        ("tel:415 555-2671x", "tel:415 555-2671x"),
        ("1111  2222", "2222"),
        ("1111\n2222", "2222"),
        ("iban GB82 WEST 12", "GB82 WEST 12"),
        ("IBAN GB82 WEST 12", "IBAN GB82 WEST 12"),  # capitals join: it could be one
        ("ends with newline\n", ""),
    ],
)
def test_hold_start(text: str, held: str) -> None:
    assert text[hold_start(text) :] == held


def test_every_labelled_entity_has_a_trigger() -> None:
    """Text without a digit, an @ or a key prefix is sent without a scan: no entity of the
    corpus may lack one."""
    for _, labels in load_corpus():
        for _, value in labels:
            assert MAYBE_ENTITY.search(value), value
    assert CORPUS.exists()
