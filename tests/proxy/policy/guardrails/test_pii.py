"""PII detection per entity type: what is found (exact spans), what is not (the hard
negatives each recognizer exists to reject), and masking."""

from __future__ import annotations

import pytest

from servegate.policy.guardrails.entities import EntityType, Finding, resolve
from servegate.policy.guardrails.pii import PiiDetector, detect, mask
from servegate.policy.guardrails.secrets import machine_made


def found(text: str) -> list[tuple[str, str]]:
    return [(f.type.value, text[f.start : f.end]) for f in detect(text)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("write to alice@example.com today", "alice@example.com"),
        ("From: Jane <j.doe+news@mail.example.co.uk>", "j.doe+news@mail.example.co.uk"),
        ("mailto:bob@example.com.", "bob@example.com"),
        ("Ünsal.Test@example.de", "Ünsal.Test@example.de"),
        ("o'connor@example.ie", "o'connor@example.ie"),
        ("info@bäckerei.example", "info@bäckerei.example"),
    ],
)
def test_email(text: str, value: str) -> None:
    assert found(text) == [("EMAIL_ADDRESS", value)]


@pytest.mark.parametrize(
    "text",
    [
        "@alice please review",
        "user@localhost",
        "icon@2x.png",
        "npm i lodash@4.17.21",
        "nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c",
        "a..b@example.com is not valid",
        "a@" + ".".join(["b" * 60] * 5) + ".com",  # longer than 254
    ],
)
def test_not_email(text: str) -> None:
    assert [k for k, _ in found(text)] == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Call me at +44 20 7946 0958.", "+44 20 7946 0958"),
        ("(415) 555-2671", "(415) 555-2671"),
        ("+1-415-555-2671", "+1-415-555-2671"),
        ("0049 30 1234567", "0049 30 1234567"),
        ("+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
        ("020 7946 0958", "020 7946 0958"),
        ("06 12 34 56 78", "06 12 34 56 78"),
        ("1-415-555-2671", "1-415-555-2671"),
        ("+14155552671", "+14155552671"),
        ("call 4155552671", "4155552671"),
        ("Mobile 98765 43210", "98765 43210"),
        ("Call 415 555 2671 24 hours a day", "415 555 2671"),
        ("(+44 20 7946 0958)", "+44 20 7946 0958"),
    ],
)
def test_phone(text: str, value: str) -> None:
    assert found(text) == [("PHONE_NUMBER", value)]


@pytest.mark.parametrize(
    "text",
    [
        "4155552671",  # bare, nothing says it is a phone number
        "SN 7734-2291-08",  # a valid number, grouped as no US number is
        "Order #415-555-2671",
        "Your order number is 112-4567890-1234567.",
        "ISBN 0-306-40615-2",
        "2024-03-15",
        "15.03.2024",
        "epoch 1710498645",
        "123-456-7890",
        "5555 5555 5555",  # valid in Germany only with its 0
        "00493012345678",  # international prefix, bare, no word before
    ],
)
def test_not_phone(text: str) -> None:
    assert found(text) == []


def test_phone_regions_are_configurable() -> None:
    text = "Tokyo 090-1234-5678"
    assert detect(text) == []
    japan = PiiDetector(phone_regions=("JP",))
    assert [text[f.start : f.end] for f in japan.detect(text)] == ["090-1234-5678"]


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "3782 822463 10005",  # Amex 4-6-5
        "5105105105105100",
        "6011 1111 1111 1117",
        "6200000000000005",  # UnionPay
    ],
)
def test_card(value: str) -> None:
    assert found(f"card: {value}.") == [("CREDIT_CARD", value)]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "1234 5678 9012 3456",
        "0000 0000 0000 0000",
        "8888888888888888",  # no network issues 8…
        "4111-1111 1111-1111",  # mixed separators
        "41 11 11 11 11 11 11 11",  # not grouped like a card
        "41111111111111111111111",  # too long
        "DE89 3704 0044 0532 0130 01",  # an invalid IBAN whose digits pass Luhn
    ],
)
def test_not_card(text: str) -> None:
    assert [k for k, _ in found(text)] == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("SSN: 536-22-8109", "536-22-8109"),
        ("536 22 8109", "536 22 8109"),
        ("social security number 536228109", "536228109"),
        ("SSN#536228109", "536228109"),
    ],
)
def test_ssn(text: str, value: str) -> None:
    assert found(text) == [("US_SSN", value)]


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "078-05-1120",  # published as an example, never issued
        "536-22 8109",  # mixed separators
        "Account 536228109",  # nine bare digits, nothing says SSN
        "Part # 536-22-8109",
    ],
)
def test_not_ssn(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    "value",
    [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89 3704 0044 0532 0130 00",
        "FR14 2004 1010 0505 0001 3M02 606",
        "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
    ],
)
def test_iban(value: str) -> None:
    assert found(f"IBAN {value}, thanks") == [("IBAN_CODE", value)]


def test_iban_followed_by_capitals() -> None:
    text = "pay DE89 3704 0044 0532 0130 00 THEN stop"
    assert found(text) == [("IBAN_CODE", "DE89 3704 0044 0532 0130 00")]


@pytest.mark.parametrize(
    "text",
    [
        "GB82 WEST 1234 5698 7654 33",
        "US12 3456 7890 1234 5678 90",
        "GB82 WEST 1234",
        "XX00 0000 0000 0000",
    ],
)
def test_not_iban(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("from 203.0.113.7, blocked", "203.0.113.7"),
        ("http://192.168.1.20:8080/", "192.168.1.20"),
        ("host 8.8.8.8.", "8.8.8.8"),
        ("fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        ("http://[2001:db8::1]:443/", "2001:db8::1"),
        ("loopback ::1 only", "::1"),
        ("mapped ::ffff:192.0.2.128", "::ffff:192.0.2.128"),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ],
)
def test_ip(text: str, value: str) -> None:
    assert found(text) == [("IP_ADDRESS", value)]


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3.4",
        "v1.2.3.4",
        "build 10.0.0.1",
        "256.1.1.1",
        "01.2.3.4",
        "OID 1.3.6.1.2.1",
        "12:30:45",
        "MAC 00:1A:2B:3C:4D:5E",
        "std::vector",
        "add::face",
    ],
)
def test_not_ip(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("key AKIAIOSFODNN7EXAMPLE.", "AKIAIOSFODNN7EXAMPLE"),
        ("GITHUB_TOKEN=ghp_" + "aB3" * 12, "ghp_" + "aB3" * 12),
        (
            "github_pat_" + "A1b" * 8 + "_" + "x9Y" * 20,
            "github_pat_" + "A1b" * 8 + "_" + "x9Y" * 20,
        ),
        ("use sk-proj-Ab3dEfGhIjKlMnOpQrStUv12", "sk-proj-Ab3dEfGhIjKlMnOpQrStUv12"),
        ("xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
        ("AIza" + "Sy" + "A1b2C3d4E5" * 3 + "xyz", "AIza" + "Sy" + "A1b2C3d4E5" * 3 + "xyz"),
        ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        ('password: "Tr0ub4dor9x"', "Tr0ub4dor9x"),
        ("api_key = '9f86d081884c7d659a2feaa0c55ad015'", "9f86d081884c7d659a2feaa0c55ad015"),
        ("access_token=Zx81KqPl0Vb3Nm2R&scope=read", "Zx81KqPl0Vb3Nm2R"),
        ("Authorization: Bearer Zx81KqPl0Vb3Nm2RtY7u", "Zx81KqPl0Vb3Nm2RtY7u"),
        ("https://ghp_" + "aB3" * 12 + "@github.com/a/b", "ghp_" + "aB3" * 12),
    ],
)
def test_secret(text: str, value: str) -> None:
    assert found(text) == [("SECRET_KEY", value)]


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)


def test_jwt_whole_token() -> None:
    assert found(f"token {JWT}. done") == [("SECRET_KEY", JWT)]
    assert found("eyJhbGciOiJIUzI1NiJ9 alone") == []
    assert found("eyJub3QganNvbg.eyJub3QganNvbg.sig") == []  # the header is no JSON object


def test_pem_block() -> None:
    block = (
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n"
        "MIIEowIBAAKCAQEA\nabcd==\n-----END RSA PRIVATE KEY-----"
    )
    assert found(f"key:\n{block}\nbye") == [("SECRET_KEY", block)]
    unterminated = "-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA"
    assert found(f"{unterminated}\nthat is all") == [("SECRET_KEY", unterminated)]
    assert found("-----BEGIN PUBLIC KEY-----\nMIIBIjANBg") == []


@pytest.mark.parametrize(
    "text",
    [
        "password: ********",
        "password=hunter2",
        "token = None",
        "api_key = os.environ['OPENAI_API_KEY']",
        "api_key: {{secrets/openai/api_key}}",
        "max_tokens=4096",
        "token_count = 12345678",
        "secret_name: my-app-secret-2024",
        "password_reset_url: https://example.com/Reset?id=42",
        "Authorization: Bearer $TOKEN",
        "sk-this-is-not-a-real-key-at-all",
        "AKIA1234",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    ],
)
def test_not_secret(text: str) -> None:
    assert found(text) == []


def test_secret_running_into_a_key_block_is_one_secret() -> None:
    text = "DB_PASSWORD=8ciUGZJrKvQq0emJ-----BEGIN PRIVATE KEY-----\nMIIEowIBAAK\n, done"
    assert mask(text)[0] == "DB_PASSWORD=[SECRET_KEY]\n, done"


def test_assignment_inside_a_value() -> None:
    text = "token=Ab3dEfGh12auth_key => Zx81KqPl0Vb3Nm2R ok"
    assert mask(text)[0] == "token=[SECRET_KEY] => [SECRET_KEY] ok"


def test_machine_made() -> None:
    assert machine_made("Zx81KqPl0Vb3")
    assert machine_made("550e8400-e29b-41d4-a716-446655440000")
    assert not machine_made("correcthorsebatterystaple")
    assert not machine_made("Password")
    assert not machine_made("aaaaaaaaaaaaaaaaaaa1")


def test_mask_replaces_each_entity_by_its_type() -> None:
    text = "Mail bob@example.com, card 4111 1111 1111 1111, ip 10.0.0.1."
    masked, findings = mask(text)
    assert masked == "Mail [EMAIL_ADDRESS], card [CREDIT_CARD], ip [IP_ADDRESS]."
    assert [f.type for f in findings] == [
        EntityType.EMAIL_ADDRESS,
        EntityType.CREDIT_CARD,
        EntityType.IP_ADDRESS,
    ]
    assert mask("nothing here") == ("nothing here", [])


def test_detector_limited_to_some_types() -> None:
    text = "bob@example.com 10.0.0.1"
    only_ip = PiiDetector([EntityType.IP_ADDRESS])
    assert only_ip.mask(text)[0] == "bob@example.com [IP_ADDRESS]"


def test_detect_from_a_start_reads_context_before_it() -> None:
    text = "call 4155552671"
    assert PiiDetector().detect(text, start=5) == [Finding(EntityType.PHONE_NUMBER, 5, 15)]
    assert PiiDetector().detect(text, start=6) == []


def test_resolve_keeps_one_finding_per_span() -> None:
    phone = Finding(EntityType.PHONE_NUMBER, 0, 10)
    card = Finding(EntityType.CREDIT_CARD, 0, 10)
    secret = Finding(EntityType.SECRET_KEY, 5, 30)
    email = Finding(EntityType.EMAIL_ADDRESS, 0, 40)
    later = Finding(EntityType.IP_ADDRESS, 30, 35)
    assert resolve([phone, card]) == [card]
    assert resolve([email, secret, later]) == [secret, later]
