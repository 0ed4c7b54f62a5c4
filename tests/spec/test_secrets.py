"""Secret references, credentials and redaction."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from servegate.spec import Credential, SecretRef, SpecModel, parse_secret_ref, redacted_dump

CANARY = "sk-CANARY-123"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{secrets/my_scope/openai_key}}", SecretRef("my_scope", "openai_key")),
        ("{{secrets/a.b-c/KEY_1}}", SecretRef("a.b-c", "KEY_1")),
        ("{{secrets/.hidden/k}}", SecretRef(".hidden", "k")),
    ],
    ids=["plain", "dots-dashes", "leading-dot"],
)
def test_parse_secret_ref_accepts(value: str, expected: SecretRef) -> None:
    assert parse_secret_ref(value) == expected
    assert str(expected) == value


@pytest.mark.parametrize(
    "value",
    [
        "{{ secrets/s/k }}",
        "{{secrets/s/k}} ",
        "{{secrets/s}}",
        "{{secrets/s/k/extra}}",
        "{{secrets/../k}}",
        "{{secrets/s/..}}",
        "{{secrets/a..b/k}}",
        "{{secrets/./k}}",
        "{secrets/s/k}",
        "secrets/s/k",
        "{{secret/s/k}}",
        "{{secrets//k}}",
        "{{secrets/s$/k}}",
        "sk-live-abc",
        "",
    ],
    ids=[
        "spaces",
        "trailing-space",
        "no-key",
        "three-parts",
        "dotdot-scope",
        "dotdot-key",
        "embedded-dotdot",
        "single-dot",
        "single-braces",
        "no-braces",
        "wrong-word",
        "empty-scope",
        "bad-char",
        "raw-key",
        "empty",
    ],
)
def test_parse_secret_ref_rejects(value: str) -> None:
    assert parse_secret_ref(value) is None


def test_secret_ref_rejects_invalid_parts() -> None:
    with pytest.raises(ValueError, match="secrets"):
        SecretRef("a/b", "k")


def test_credential_needs_exactly_one_of_ref_or_plaintext() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Credential("openai_api_key")
    with pytest.raises(ValueError, match="exactly one"):
        Credential("openai_api_key", ref=SecretRef("s", "k"), plaintext="x")


def test_credential_repr_hides_plaintext() -> None:
    credential = Credential("api_key_auth.value", plaintext=CANARY)
    assert CANARY not in repr(credential)
    assert CANARY not in str([credential])
    assert credential.plaintext == CANARY
    assert "{{secrets/s/k}}" in repr(Credential("x", ref=SecretRef("s", "k")))


class _Inner(SpecModel):
    token: str | None = None
    token_plaintext: SecretStr | None = None


class _Outer(SpecModel):
    items: list[_Inner]
    note: str | None = None


def test_redacted_dump_removes_plaintext_everywhere() -> None:
    model = _Outer.model_validate(
        {
            "items": [{"token_plaintext": CANARY}, {"token": "{{secrets/s/k}}"}],
            "surprise_plaintext": CANARY,
            "nested": {"deeper_plaintext": CANARY, "kept": 1},
        }
    )
    dumped = redacted_dump(model)
    assert dumped == {
        "items": [{}, {"token": "{{secrets/s/k}}"}],
        "nested": {"kept": 1},
    }
    assert CANARY not in repr(model)
