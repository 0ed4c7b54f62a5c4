"""Secret references, the credentials a provider config holds, and their redaction.

Every credential field of a provider config comes in a pair: `X` holds a *reference*
`{{secrets/<scope>/<key>}}` that is resolved at request time (Databricks Secrets; in
Kubernetes the Secret `<scope>`, key `<key>`), while `X_plaintext` holds the value itself.
`Credential` is the resolver-facing view of one such pair, so code that fetches secrets
never has to know which provider, or which field name, it is dealing with.
`redacted_dump` is the other side: the one way a spec is shown to the outside world.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import to_jsonable_python

PLAINTEXT_SUFFIX = "_plaintext"
"""Suffix of every literal-credential field; such fields never leave the process."""

SECRET_REF_SYNTAX = "{{secrets/<scope>/<key>}}"
"""The one accepted reference form, quoted in error messages."""

# Scope and key share one alphabet. Dots are allowed (Databricks allows them) but a
# name made only of dots (".", "..") is rejected: in Kubernetes these become file and
# object names, where such names mean "this/parent directory".
_NAME = r"[A-Za-z0-9_.-]+"
_REF_RE = re.compile(rf"\{{\{{secrets/({_NAME})/({_NAME})\}}\}}")


def _valid_name(name: str) -> bool:
    return name.strip(".") != "" and ".." not in name


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A parsed `{{secrets/<scope>/<key>}}` reference."""

    scope: str
    key: str

    def __post_init__(self) -> None:
        for part in (self.scope, self.key):
            if not re.fullmatch(_NAME, part) or not _valid_name(part):
                raise ValueError(f"invalid secret reference part; expected {SECRET_REF_SYNTAX}")

    def __str__(self) -> str:
        return f"{{{{secrets/{self.scope}/{self.key}}}}}"


def parse_secret_ref(value: str) -> SecretRef | None:
    """Return the reference `value` spells, or None when it is not exactly one reference.

    No whitespace is tolerated anywhere, matching the platform: a reference with a stray
    space would otherwise be sent to a provider as a literal API key.
    """
    match = _REF_RE.fullmatch(value)
    if match is None:
        return None
    scope, key = match.groups()
    if not (_valid_name(scope) and _valid_name(key)):
        return None
    return SecretRef(scope, key)


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential of a provider config: either a secret reference or a plaintext value.

    `field` is the dotted name of the reference field of the pair (`openai_api_key`,
    `api_key_auth.value`), whichever of the two was actually given.
    """

    field: str
    ref: SecretRef | None = None
    plaintext: str | None = None

    def __post_init__(self) -> None:
        if (self.ref is None) == (self.plaintext is None):
            raise ValueError(
                f"credential {self.field}: exactly one of ref or plaintext is required"
            )

    def __repr__(self) -> str:
        # The plaintext must never reach a log line through a repr of a list of credentials.
        value = str(self.ref) if self.ref is not None else "<plaintext>"
        return f"Credential(field={self.field!r}, {value})"


def redacted_dump(spec: BaseModel) -> dict[str, Any]:
    """The spec as GET returns it: JSON-ready, None-free, with plaintext credentials removed.

    Plaintext fields are dropped, not masked, matching the platform (which never echoes
    them); secret references are kept verbatim. The walk is generic: any `SecretStr`
    value, and any key ending in `_plaintext`, disappears wherever it sits.
    """
    redacted: dict[str, Any] = to_jsonable_python(
        _redact_mapping(spec.model_dump(mode="python", exclude_none=True))
    )
    return redacted


def _redact_mapping(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    return {
        key: _redact(item)
        for key, item in mapping.items()
        if not isinstance(item, SecretStr)
        and not (isinstance(key, str) and key.endswith(PLAINTEXT_SUFFIX))
    }


def _redact(value: object) -> object:
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value
