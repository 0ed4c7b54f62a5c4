"""Caller authentication: a bearer token in, a ``Principal`` (name + groups) out.

The auth file lists principals by the SHA-256 of their token, so the file itself holds no
usable secret::

    tokens:
      - name: ana@example.com
        sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
        groups: [data-science]
        kind: user              # or service_principal (per-service-principal rate limits)

Per-user rate limits, usage rows and (later) Kubernetes TokenReview all consume the same
``Principal``, so another authenticator only has to produce one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servegate.ingress.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    authenticated: bool = True
    kind: Literal["user", "service_principal"] = "user"


ANONYMOUS = Principal(name="anonymous", authenticated=False)


class Authenticator(Protocol):
    def authenticate(self, headers: Mapping[str, str]) -> Principal: ...


class AllowAnonymous:
    """No auth file: every caller is ``anonymous`` (only allowed on loopback, see cli.py)."""

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return ANONYMOUS


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    groups: list[str] = Field(default_factory=list)
    kind: Literal["user", "service_principal"] = "user"


class _AuthFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[_TokenEntry]


class AuthFileError(ValueError):
    pass


class BearerTokenAuthenticator:
    """Looks the token's SHA-256 up in the table loaded from the auth file."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._by_digest = dict(principals)

    @classmethod
    def from_file(cls, path: Path) -> BearerTokenAuthenticator:
        try:
            raw = yaml.safe_load(path.read_text())
            parsed = _AuthFile.model_validate(raw)
        except (OSError, yaml.YAMLError) as exc:
            raise AuthFileError(f"{path}: cannot read the auth file: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise AuthFileError(f"{path}: {loc}: {first['msg']}") from None
        principals = {
            entry.sha256.lower(): Principal(entry.name, frozenset(entry.groups), kind=entry.kind)
            for entry in parsed.tokens
        }
        return cls(principals)

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        header = headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Missing bearer token: send 'Authorization: Bearer <token>'.")
        # A lookup by digest leaks nothing useful through timing: the digest is not the token.
        principal = self._by_digest.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if principal is None:
            raise Unauthenticated("Invalid access token.")
        return principal


class AuthHolder:
    """The live authenticator; replaced whole when the auth file changes."""

    def __init__(self, current: Authenticator, path: Path | None = None) -> None:
        self.current = current
        self.path = path

    def reload(self) -> None:
        if self.path is not None:
            self.current = BearerTokenAuthenticator.from_file(self.path)
