#!/usr/bin/env python3
"""Write tests/proxy/policy/guardrails/pii_corpus.jsonl, the labelled PII corpus.

Each line is ``{"text": ..., "entities": [{"type": ..., "value": ...}]}``: the exact
substrings a person would want masked, with their type. Values are written by hand or made
here with their own checksums (Luhn, mod 97, the SSN issuing rules), never by asking the
detector, so the corpus measures the detector instead of echoing it. A seeded RNG keeps
the file byte-for-byte reproducible; tests/proxy/policy/guardrails/test_corpus.py fails
when the committed file differs from what this script writes (``--check`` does the same
here).

Decisions the labels encode (the hard negatives):

* ``version 1.2.3.4``, ``v1.2.3.4`` and ``build 10.0.0.1`` are version numbers, not IP
  addresses; a bare ``10.0.0.1`` is an address, private or not.
* A number after a label like ``Order #``, ``ISBN``, ``SN:`` or ``ref`` is that thing, not
  a phone number or SSN; a Luhn-valid 13-19 digit number that starts as a card network's
  numbers do *is* a card, whatever it is called, so no such order number is listed.
* ``password=hunter2`` is out of scope (see servegate.policy.guardrails.secrets): only
  machine-made values assigned to secret-sounding names are secrets, so no low-entropy
  password is listed either way.
* SSNs that were never issued (area 000, 666 or 9xx, group 00, serial 0000) and the ones
  published as examples (078-05-1120) are not SSNs.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "proxy" / "policy" / "guardrails" / "pii_corpus.jsonl"

Entity = tuple[str, str]
Record = tuple[str, list[Entity]]

# --- values -------------------------------------------------------------------------------


def luhn_complete(prefix: str, length: int, rnd: random.Random) -> str:
    body = prefix + "".join(rnd.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, char in enumerate(reversed(body)):
        digit = int(char)
        if i % 2 == 0:  # these are doubled once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return body + str((10 - total % 10) % 10)


def group(digits: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, at = [], 0
    for size in sizes:
        parts.append(digits[at : at + size])
        at += size
    return sep.join(parts)


def cards(rnd: random.Random) -> Iterator[str]:
    published = ["4111 1111 1111 1111", "5555 5555 5555 4444", "3782 822463 10005"]
    published += ["6011 1111 1111 1117", "4012-8888-8888-1881", "5105105105105100"]
    yield from published
    kinds = [
        ("4", 16, (4, 4, 4, 4)),
        ("4", 13, (4, 4, 5)),
        ("51", 16, (4, 4, 4, 4)),
        ("55", 16, (4, 4, 4, 4)),
        ("2221", 16, (4, 4, 4, 4)),
        ("2720", 16, (4, 4, 4, 4)),
        ("34", 15, (4, 6, 5)),
        ("37", 15, (4, 6, 5)),
        ("6011", 16, (4, 4, 4, 4)),
        ("65", 16, (4, 4, 4, 4)),
        ("36", 14, (4, 6, 4)),
        ("3530", 16, (4, 4, 4, 4)),
        ("62", 19, (4, 4, 4, 4, 3)),
    ]
    for i in range(34):
        prefix, length, sizes = kinds[i % len(kinds)]
        digits = luhn_complete(prefix, length, rnd)
        yield [group(digits, sizes, " "), group(digits, sizes, "-"), digits][i % 3]


def bad_luhn(card: str) -> str:
    last = card[-1]
    return card[:-1] + str((int(last) + 3) % 10)


def ssns(rnd: random.Random) -> Iterator[str]:
    published = {"078-05-1120", "219-09-9999", "457-55-5462"}
    made = 0
    while made < 36:
        area = rnd.choice([n for n in range(1, 900) if n != 666])
        value = f"{area:03d}-{rnd.randint(1, 99):02d}-{rnd.randint(1, 9999):04d}"
        if value in published:
            continue
        made += 1
        yield value if made % 4 else value.replace("-", " ")


def iban_checked(country: str, bban: str) -> str:
    moved = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in moved))
    compact = f"{country}{98 - number % 97:02d}{bban}"
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ibans(rnd: random.Random) -> Iterator[str]:
    published = [
        "GB82 WEST 1234 5698 7654 32",
        "DE89 3704 0044 0532 0130 00",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91 ABNA 0417 1643 00",
        "ES91 2100 0418 4502 0005 1332",
        "IT60 X054 2811 1010 0000 0123 456",
        "CH93 0076 2011 6238 5295 7",
        "AT61 1904 3002 3457 3201",
        "NO93 8601 1117 947",
        "DK50 0040 0440 1162 43",
        "FI21 1234 5600 0007 85",
        "PL61 1090 1014 0000 0712 1981 2874",
        "PT50 0002 0123 1234 5678 9015 4",
        "IE29 AIBK 9311 5212 3456 78",
        "LU28 0019 4006 4475 0000",
        "SA03 8000 0000 6080 1016 7519",
        "AE07 0331 2345 6789 0123 456",
        "BR15 0000 0000 0000 1093 2840 814 P2",
        "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
        "GR16 0110 1250 0000 0001 2300 695",
        "CZ65 0800 0000 1920 0014 5399",
        "RO49 AAAA 1B31 0075 9384 0000",
        "SI56 2633 0001 2039 086",
        "LT12 1000 0111 0100 1000",
    ]
    for i, value in enumerate(published):
        yield value.replace(" ", "") if i % 4 == 3 else value
    for i in range(14):
        if i % 2:
            bban = "".join(rnd.choice(string.digits) for _ in range(18))
            value = iban_checked("DE", bban)
        else:
            bank = "".join(rnd.choice(string.ascii_uppercase) for _ in range(4))
            value = iban_checked("GB", bank + "".join(rnd.choice(string.digits) for _ in range(14)))
        yield value.replace(" ", "") if i % 3 == 0 else value


def ipv4s(rnd: random.Random) -> Iterator[str]:
    for i in range(26):
        first = [10, 192, 172, 203, 198, 8, 34, 100][i % 8]
        second = {192: 168, 172: rnd.randint(16, 31), 203: 0, 198: 51}.get(
            first, rnd.randint(0, 255)
        )
        yield f"{first}.{second}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"


IPV6 = [
    "2001:db8::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "fe80::1ff:fe23:4567:890a",
    "::1",
    "::ffff:192.0.2.128",
    "2606:4700:4700::1111",
    "2001:db8:0:1:1:1:1:1",
    "fd12:3456:789a:1::1",
    "2001:DB8::8:800:200C:417A",
    "2a00:1450:4001:82b::200e",
    "fe80::a00:27ff:fe4e:66a1",
    "2001:db8:1234::",
]

EMAILS = [
    "alice@example.com",
    "bob.smith@mail.example.co.uk",
    "j.doe+newsletter@gmail.com",
    "support@servegate.io",
    "maria_garcia92@outlook.es",
    "o'connor@example.ie",
    "first.last@sub.domain.example.org",
    "x@y.io",
    "admin@intranet.corp.example",
    "Ünsal.Test@example.de",
    "dev-team@lists.example.net",
    "billing%acme@example.com",
    "li.wei@company.cn",
    "noreply@notifications.example.com",
    "Jane.Doe@Example.COM",
    "user123@example-mail.com",
    "sales@example.travel",
    "hr@example.museum",
    "ceo@startup.ai",
    "a.b.c.d@e.fg",
    "jean-luc.picard@starfleet.example",
    "tom@localhost.localdomain",
    "priya.k@iit.example.in",
    "ops+alerts@status.example.com",
    "m@example.technology",
    "hello@world.dev",
    "kim_lee@example.kr",
    "r2d2@tatooine.example",
    "info@bäckerei.example",
    "anna.schmidt@t-online.de",
    "root@mail.example.com",
    "fake.person@proton.me",
]

PHONES = [
    "+44 20 7946 0958",
    "+44 (0)20 7946 0958",
    "020 7946 0958",
    "+44 7911 123456",
    "07911 123456",
    "(415) 555-2671",
    "415-555-2671",
    "415.555.2671",
    "+1-415-555-2671",
    "+1 (415) 555-2671",
    "1-415-555-2671",
    "+14155552671",
    "(212) 555-0123",
    "212 555 0199",
    "(646) 555-0142",
    "312-555-0188",
    "+1 650 253 0000",
    "(800) 275-2273",
    "0049 30 1234567",
    "+49 30 1234567",
    "030 1234567",
    "+49 (30) 1234567",
    "+49 151 23456789",
    "0151 23456789",
    "+49 89 636 48018",
    "+33 6 12 34 56 78",
    "06 12 34 56 78",
    "01 23 45 67 89",
    "+33 (0)1 23 45 67 89",
    "+33 1 42 68 53 00",
    "+91 98765 43210",
    "+91-98765-43210",
    "98765 43210",
    "+91 22 2778 1234",
    "+61 2 9374 4000",
    "(02) 9374 4000",
    "0412 345 678",
    "+61 412 345 678",
    "+81 3-1234-5678",
    "+86 10 6552 9988",
    "+34 912 345 678",
    "+39 06 1234 5678",
    "+31 20 123 4567",
    "+46 8 123 456 78",
    "+55 11 91234-5678",
    "+52 55 1234 5678",
    "+27 21 123 4567",
    "+65 6123 4567",
    "+971 4 330 0000",
    "+7 495 123-45-67",
    "011 44 20 7946 0958",
    "0044 20 7946 0958",
    "+353 1 234 5678",
    "+41 44 668 18 00",
    "+48 22 123 45 67",
    "+82 2-312-3456",
    "+64 9 379 1234",
    "+1 416 555 0134",
]

# Bare numbers are phone numbers only when the words before say so.
PHONES_WITH_WORDS = [
    ("Call 4155552671 after 5pm.", "4155552671"),
    ("phone: 2125550123", "2125550123"),
    ("Tel. 02079460958", "02079460958"),
    ("Mobile 07911123456 (UK)", "07911123456"),
    ("whatsapp +447911123456 anytime", "+447911123456"),
    ("Fax 0049301234567", "0049301234567"),
    ("my number is 6465550142", "6465550142"),
    ("text me at 3125550188!", "3125550188"),
]


def alnum(rnd: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    while True:
        value = "".join(rnd.choice(alphabet) for _ in range(n))
        lower = any(c.islower() for c in value) or alphabet.isupper()
        if any(c.isdigit() for c in value) and any(c.isupper() for c in value) and lower:
            return value


def b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def secrets(rnd: random.Random) -> Iterator[tuple[str, str]]:
    """(template, value) pairs: the template places the value in a typical context."""
    b32 = string.ascii_uppercase + "234567"
    for template in ("AWS_ACCESS_KEY_ID={}", "aws key {} was leaked", "- AccessKeyId: {}"):
        yield template, "AKIA" + alnum(rnd, 16, b32)
    yield "session creds: {}", "ASIA" + alnum(rnd, 16, b32)
    yield "GITHUB_TOKEN={}", "ghp_" + alnum(rnd, 36)
    yield "git clone https://{}@github.com/acme/app.git", "ghp_" + alnum(rnd, 36)
    yield "oauth token {} expires soon", "gho_" + alnum(rnd, 36)
    yield "export GH_TOKEN={}", "github_pat_" + alnum(rnd, 22) + "_" + alnum(rnd, 59)
    yield "OPENAI_API_KEY={}", "sk-" + alnum(rnd, 48)
    yield "client = OpenAI(api_key='{}')", "sk-proj-" + alnum(rnd, 40) + "-" + alnum(rnd, 20)
    yield "Use the key {} for the demo.", "sk-proj-" + alnum(rnd, 64)
    yield "x-api-key: {}", "sk-ant-api03-" + alnum(rnd, 80) + "-" + alnum(rnd, 12) + "AA"
    yield "stripe.api_key = {}", "sk_live_" + alnum(rnd, 24)
    yield "the restricted key {} works", "rk_test_" + alnum(rnd, 24)
    slack_bot = f"xoxb-{rnd.randint(10**10, 10**11)}-{rnd.randint(10**11, 10**12)}-"
    yield "SLACK_BOT_TOKEN={}", slack_bot + alnum(rnd, 24)
    yield "slack user token: {}", f"xoxp-{rnd.randint(10**10, 10**11)}-" + alnum(rnd, 20)
    yield "maps key {}", "AIza" + alnum(rnd, 35)
    yield "GOOGLE_API_KEY = '{}'", "AIza" + alnum(rnd, 35)
    for template in ("Authorization: Bearer {}", "token={}", "JWT: {}", "{}"):
        claims = {"sub": str(rnd.randint(10**6, 10**7)), "name": "Jo", "iat": 1516239022}
        jwt = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url(claims)
        yield template, jwt + "." + alnum(rnd, 43, string.ascii_letters + string.digits + "-_")
    pem_body = "\n".join(
        alnum(rnd, 64, string.ascii_letters + string.digits + "+/") for _ in range(4)
    )
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\nAb12==\n-----END RSA PRIVATE KEY-----"
    yield "Here is the key:\n{}\nKeep it safe.", pem
    pem_body = "\n".join(
        alnum(rnd, 64, string.ascii_letters + string.digits + "+/") for _ in range(3)
    )
    yield (
        "{}",
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body}\n-----END OPENSSH PRIVATE KEY-----",
    )
    yield "key.pem starts with {} and then the body", "-----BEGIN PRIVATE KEY-----"
    yield 'password: "{}"', alnum(rnd, 14, string.ascii_letters + string.digits + "!#%&*")
    yield "DB_PASSWORD={}", alnum(rnd, 20)
    yield '{{"client_secret": "{}"}}', alnum(rnd, 32)
    yield "api_key = '{}'", "".join(rnd.choice("0123456789abcdef") for _ in range(32))
    yield "SECRET_KEY: {}", alnum(rnd, 50, string.ascii_letters + string.digits + "-_")
    yield "access_token={}&scope=read", alnum(rnd, 30)
    yield "curl -H 'Authorization: Bearer {}' https://api.example.com", alnum(rnd, 40)
    yield "auth_key => {}", alnum(rnd, 24)
    yield "private_key_passphrase: {}", alnum(rnd, 16, string.ascii_letters + string.digits + "@$")


# --- snippets -----------------------------------------------------------------------------

TEMPLATES: dict[str, list[str]] = {
    "EMAIL_ADDRESS": [
        "Please contact {} for details.",
        "Email: {}",
        "From: Jane Doe <{}>",
        "mailto:{}",
        "Send the invoice to {}, thanks!",
        "{}",
        "Reach out ({}) anytime.",
        'user = {{"name": "Ann", "email": "{}"}}',
        "CC {} and me on the thread.",
        "Is {} still the right address?",
    ],
    "CREDIT_CARD": [
        "My card number is {}.",
        "Card: {} exp 12/27 CVV 123",
        "Charge {} for the order.",
        "{}",
        "pay with visa {} please",
        "The number on the card is {} (expires 04/26).",
    ],
    "US_SSN": [
        "SSN: {}",
        "My social is {}.",
        "Employee {} record for Jane",
        "{}",
        "social security number {} on file",
        "The form lists {} as the taxpayer ID.",
    ],
    "IBAN_CODE": [
        "IBAN: {}",
        "Please wire the money to {} by Friday.",
        "Bank account {} (BIC DEUTDEFF)",
        "{}",
        "Refund to IBAN {}, ref. invoice 2291.",
    ],
    "IP_ADDRESS": [
        "Server at {} is down.",
        "Request from IP {}, blocked.",
        "ssh admin@{}",
        "{}",
        "The client ({}) retried 3 times.",
        "connect to {} on port 5432",
    ],
    "PHONE_NUMBER": [
        "Call me at {}.",
        "Phone: {}",
        "Reach me on {} tomorrow",
        "{}",
        "Our office number is {} (9am-5pm).",
        "Contact: Jane, {}, jane's desk",
        "If urgent, ring {}",
    ],
}

MIXED: list[Record] = [
    (
        "Hi, I'm Jane (jane.doe@example.com, +1 415-555-2671). My SSN is 536-22-8109.",
        [
            ("EMAIL_ADDRESS", "jane.doe@example.com"),
            ("PHONE_NUMBER", "+1 415-555-2671"),
            ("US_SSN", "536-22-8109"),
        ],
    ),
    (
        "Refund 4111 1111 1111 1111 or wire to GB82 WEST 1234 5698 7654 32.",
        [("CREDIT_CARD", "4111 1111 1111 1111"), ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32")],
    ),
    (
        "Login from 203.0.113.42 by bob@example.org at 10:31:07 using key AKIAJ7Q4WERTYUIOP2X3.",
        [
            ("IP_ADDRESS", "203.0.113.42"),
            ("EMAIL_ADDRESS", "bob@example.org"),
            ("SECRET_KEY", "AKIAJ7Q4WERTYUIOP2X3"),
        ],
    ),
    (
        "Contact: +44 20 7946 0958 / ops@example.co.uk / fe80::1ff:fe23:4567:890a",
        [
            ("PHONE_NUMBER", "+44 20 7946 0958"),
            ("EMAIL_ADDRESS", "ops@example.co.uk"),
            ("IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
        ],
    ),
    (
        "version 1.2.3.4 deployed to 10.0.4.17 (order #100234987) by ci@example.com",
        [("IP_ADDRESS", "10.0.4.17"), ("EMAIL_ADDRESS", "ci@example.com")],
    ),
    (
        "Card 5555-5555-5555-4444, phone (646) 555-0142, SSN 219 54 8732.",
        [
            ("CREDIT_CARD", "5555-5555-5555-4444"),
            ("PHONE_NUMBER", "(646) 555-0142"),
            ("US_SSN", "219 54 8732"),
        ],
    ),
    (
        "Pay DE89 3704 0044 0532 0130 00 then email receipts@example.de; questions: 030 1234567",
        [
            ("IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
            ("EMAIL_ADDRESS", "receipts@example.de"),
            ("PHONE_NUMBER", "030 1234567"),
        ],
    ),
    (
        "the db is at 172.16.4.20:5432, user admin, password=Xk29PqLm74Rz",
        [("IP_ADDRESS", "172.16.4.20"), ("SECRET_KEY", "Xk29PqLm74Rz")],
    ),
    (
        "Tickets: ISBN 978-0-306-40615-7 ordered by +33 6 12 34 56 78 (order 4829-1177-3350).",
        [("PHONE_NUMBER", "+33 6 12 34 56 78")],
    ),
    (
        "Amex 3782 822463 10005 belongs to amy@example.com, born 1990-04-12.",
        [("CREDIT_CARD", "3782 822463 10005"), ("EMAIL_ADDRESS", "amy@example.com")],
    ),
]

# More ways of writing things, several per snippet type.
FORMATS: list[Record] = [
    ("(+44) 20 7946 0958", [("PHONE_NUMBER", "(+44) 20 7946 0958")]),
    ("UK office: +44-20-7946-0958", [("PHONE_NUMBER", "+44-20-7946-0958")]),
    ("+44.20.7946.0958 (switchboard)", [("PHONE_NUMBER", "+44.20.7946.0958")]),
    ("<a href='tel:+14155552671'>call</a>", [("PHONE_NUMBER", "+14155552671")]),
    ("Dial 1 (415) 555-2671 toll free", [("PHONE_NUMBER", "1 (415) 555-2671")]),
    ("Berlin: +49-30-1234567", [("PHONE_NUMBER", "+49-30-1234567")]),
    ("Paris 0033 1 42 68 53 00", [("PHONE_NUMBER", "0033 1 42 68 53 00")]),
    ("Mumbai office +91 (22) 2778 1234", [("PHONE_NUMBER", "+91 (22) 2778 1234")]),
    ("+1.415.555.2671", [("PHONE_NUMBER", "+1.415.555.2671")]),
    ("Call 415 555 2671 24 hours a day", [("PHONE_NUMBER", "415 555 2671")]),
    ("WRITE TO JOHN@EXAMPLE.COM NOW", [("EMAIL_ADDRESS", "JOHN@EXAMPLE.COM")]),
    ("cc user.name@sub.example.co.jp", [("EMAIL_ADDRESS", "user.name@sub.example.co.jp")]),
    ("addr = 'quoted@example.com'", [("EMAIL_ADDRESS", "quoted@example.com")]),
    ("Mail me: bob@example.com.", [("EMAIL_ADDRESS", "bob@example.com")]),
    ("https://user@example.com/path", [("EMAIL_ADDRESS", "user@example.com")]),
    ("subnet 192.168.1.1/24", [("IP_ADDRESS", "192.168.1.1")]),
    ("http://[2001:db8::1]:8080/", [("IP_ADDRESS", "2001:db8::1")]),
    ("listen 10.0.0.1:8080", [("IP_ADDRESS", "10.0.0.1")]),
    ("IP=10.1.1.1;", [("IP_ADDRESS", "10.1.1.1")]),
    ("resolve with host 8.8.8.8.", [("IP_ADDRESS", "8.8.8.8")]),
    ("See RFC 1918: 10.0.0.0/8", [("IP_ADDRESS", "10.0.0.0")]),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        [("SECRET_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")],
    ),
    ("4111-1111-1111-1111.", [("CREDIT_CARD", "4111-1111-1111-1111")]),
    ("(4111 1111 1111 1111)", [("CREDIT_CARD", "4111 1111 1111 1111")]),
    ("cc: 5105 1051 0510 5100 exp 01/30", [("CREDIT_CARD", "5105 1051 0510 5100")]),
    ("ssn=536-22-8109,", [("US_SSN", "536-22-8109")]),
    ("SSN#536228109", [("US_SSN", "536228109")]),
    ("IBAN:DE89370400440532013000.", [("IBAN_CODE", "DE89370400440532013000")]),
]

NEGATIVES = [
    # numbers that are something else
    "Order #100234987 shipped on 2024-03-15.",
    "Your order number is 112-4567890-1234567.",
    "Invoice 2024-00123 is due 15/04/2024.",
    "ISBN 978-0-306-40615-7",
    "ISBN-10: 0-306-40615-2",
    "Tracking number 1Z999AA10123456784",
    "SN: 7734-2291-08",
    "Serial No. 4155552671",
    "Part No. 555-1234-567",
    "ref 7734229108",
    "SKU 88412-77103",
    "Case #2125550123 was closed.",
    "Model 7300-4412-88",
    "Batch 2291-4410-7781-0021",
    "ticket 06 12 34 56 78",
    "Transaction 4829117733501122 settled",
    # dates and times
    "Meeting on 2024-03-15 at 10:30.",
    "Deadline: 03/15/2024",
    "Born 15.03.1990 in Berlin.",
    "Timestamp 2024-03-15T10:30:45Z",
    "Logged at 2024-03-15 10:30:45.123",
    "epoch 1710498645",
    "epoch millis 1710498645123",
    "The meeting runs 10:30-11:45.",
    "From 2019-2023 we grew 40%.",
    # versions and other dotted numbers
    "Upgrade to version 1.2.3.4 today.",
    "release v1.2.3.4",
    "Python 3.11.7 and Node 20.11.1",
    "build 10.0.19045.3930",
    "Windows build 10.0.0.1 is old",
    "SNMP OID 1.3.6.1.2.1.1",
    "Section 1.2.3 covers this.",
    "Invalid address 256.300.1.1 rejected.",
    "10.0.0.256 is not an address",
    "ratio 1.5.2",
    # money and quantities
    "Total: $1,299.99 (incl. tax)",
    "It costs € 4.111,00 per unit.",
    "Population 8,336,817 in 2020",
    "We sold 1234 5678 widgets",
    "Distance: 384 400 km",
    "Price 4 111 111 EUR",
    # card-like numbers that are not cards
    "4111 1111 1111 1112",
    "Card 5555 5555 5555 4445 was declined (typo).",
    "1234 5678 9012 3456",
    "0000 0000 0000 0000",
    "7111 2222 3333 4444 5555",
    "9012-3456-7890-1234",
    "8888888888888888",
    "41111111111111111111111",
    # SSN-like numbers that are not SSNs
    "000-12-3456",
    "666-12-3456",
    "912-34-5678",
    "123-00-4567",
    "123-45-0000",
    "078-05-1120",
    "Account 123456789 is active",
    "ZIP 94103-1234",
    "Part 123-456-789",
    # IBAN-like
    "DE89 3704 0044 0532 0130 01",
    "GB82 WEST 1234 5698 7654 33",
    "US12 3456 7890 1234 5678 90",
    "GB82 WEST 1234",
    "ABCD EFGH IJKL MNOP QRST",
    "XX00 0000 0000 0000 0000",
    # identifiers and hashes
    "request_id=550e8400-e29b-41d4-a716-446655440000",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "git sha a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "docker pull nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
    "object id 5f8d0d55b54764421b7156c3",
    "MAC 00:1A:2B:3C:4D:5E",
    "Time 12:30:45 UTC",
    "std::vector<int> v;",
    "a::b::c",
    "Scores were 3:2:1 overall",
    "ISO 8601: 2024-03-15T10:30:45+01:00",
    # @ without an address
    "@alice please review",
    "ping @bob-smith and @carol",
    "npm i @types/node",
    "icon@2x.png and logo@3x.jpg",
    "npm install lodash@4.17.21",
    "user@localhost can log in",
    "Follow us @servegate_io",
    "email alice at example dot com",
    "The @ sign is used in emails.",
    "decorators like @property and @staticmethod",
    # key-like text that is not a key
    "scikit-learn and sk-learn-style APIs",
    "task-force meeting at noon",
    "AKIA1234 is too short",
    "ghp_short",
    "eyJhbGciOiJIUzI1NiJ9 alone is just a header",
    "password: ********",
    "token = None",
    "api_key = os.environ['OPENAI_API_KEY']",
    "max_tokens=4096",
    "secret_name: my-app-secret-2024",
    "password_reset_url: https://example.com/reset?id=42",
    "token_count = 12345678",
    "api_key: {{secrets/openai/api_key}}",
    "Authorization: Bearer $TOKEN",
    "Bearer <token>",
    "Set OPENAI_API_KEY in your environment.",
    "The session token expired after 3600 seconds.",
    "-----BEGIN CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----",
    "sk-this-is-not-a-real-key-at-all",
    "xoxb-not-a-token",
    # numbers that cannot be dialled, and other digits
    "123-456-7890",
    "(123) 456-7890",
    "555-555-5555",
    "000-000-0000",
    "Meet at 10.30 am",
    "Pi is 3.14159265358979",
    "Call 911",
    "Dial 112 or 999",
    "ISBN 978 0 306 40615 7",
    "lat 51.5074, lon -0.1278",
    "coordinates 40.7128, -74.0060",
    # plain prose
    "The quick brown fox jumps over the lazy dog.",
    "Call me tomorrow, I'll be in the office.",
    "Room 1402, building 7, floor 14.",
    "Flight UA 2291 departs at 14:05 from gate B12.",
    "Chapter 11, verse 42.",
    "We have 3 cats and 2 dogs.",
    "The answer is 42.",
    "In 1969, 600 million people watched the landing.",
    "Top 10 tips for 2024",
    "HTTP 404 and 500 errors spiked at 3am.",
]


def records() -> list[Record]:
    rnd = random.Random(20240917)
    out: list[Record] = []

    def place(kind: str, values: list[str]) -> None:
        templates = TEMPLATES[kind]
        for i, value in enumerate(values):
            out.append((templates[i % len(templates)].format(value), [(kind, value)]))

    place("EMAIL_ADDRESS", EMAILS)
    card_values = list(cards(rnd))
    place("CREDIT_CARD", card_values)
    place("US_SSN", list(ssns(rnd)))
    out += [
        ("SSN 536228109 on the W-2", [("US_SSN", "536228109")]),
        ("social security no. 219548732", [("US_SSN", "219548732")]),
    ]
    place("IBAN_CODE", list(ibans(rnd)))
    place("IP_ADDRESS", list(ipv4s(rnd)) + IPV6)
    place("PHONE_NUMBER", PHONES)
    out += [(text, [("PHONE_NUMBER", value)]) for text, value in PHONES_WITH_WORDS]
    out += [(t.format(v), [("SECRET_KEY", v)]) for t, v in secrets(rnd)]
    out += MIXED
    out += FORMATS
    out += [(text, []) for text in NEGATIVES]
    out += [(f"Card {bad_luhn(v)} was rejected.", []) for v in card_values[6:18]]
    return out


def render() -> str:
    lines = []
    for text, entities in records():
        for _, value in entities:
            assert value in text, (value, text)
        labelled = [{"type": kind, "value": value} for kind, value in entities]
        lines.append(json.dumps({"text": text, "entities": labelled}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = CORPUS.read_text(encoding="utf-8") if CORPUS.exists() else ""
        if current != text:
            print(
                f"{CORPUS.relative_to(REPO)} is stale: run {Path(__file__).name}", file=sys.stderr
            )
            return 1
        return 0
    CORPUS.write_text(text, encoding="utf-8")
    print(f"wrote {CORPUS.relative_to(REPO)} ({text.count(chr(10))} snippets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
