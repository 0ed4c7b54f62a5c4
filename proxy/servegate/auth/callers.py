"""Caller authentication and authorization: a bearer token in, a ``Principal`` out; then, per
query, "may this principal query that endpoint?".

Two authenticators produce principals:

- :class:`BearerTokenAuthenticator`: the auth file lists principals by the SHA-256 of their
  token, so the file itself holds no usable secret::

      tokens:
        - name: ana@example.com
          sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
          groups: [data-science]
          kind: user              # or service_principal (per-service-principal rate limits)
          endpoints: [chat]       # optional: the endpoints this token may query (absent: all)

- :class:`servegate.auth.kube.KubernetesAuthenticator`: projected ServiceAccount tokens,
  checked with a TokenReview and authorized with a SubjectAccessReview (static tokens from
  the auth file keep working beside it).

Both are async because the Kubernetes one makes HTTP calls; the file one simply never
awaits anything. Per-user rate limits, usage rows and the access log all consume the same
``Principal``, so an authenticator only has to produce one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol, runtime_checkable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servegate.ingress.errors import GatewayError, PermissionDenied, Unauthenticated

QUERY: Final = "query"
"""The verb of a query (the RBAC verb a Role grants on ``servingendpoints``)."""
MANAGE: Final = "update"
"""The verb that makes a caller a manager of an endpoint (it may change its manifest)."""

PermissionLevel = Literal["CAN_MANAGE", "CAN_QUERY", "CAN_VIEW"]


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    authenticated: bool = True
    kind: Literal["user", "service_principal"] = "user"
    endpoints: frozenset[str] | None = None
    """The endpoints this caller's token is limited to (the auth file's ``endpoints``);
    None: no limit beyond what authorization decides."""
    uid: str = ""
    """Kubernetes user UID (from a TokenReview), passed on to SubjectAccessReviews."""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Kubernetes user extra attributes (pod name, node...), passed on as well: authorizers
    other than RBAC (webhooks, the Node authorizer) may decide on them. A tuple, not a
    dict, so the principal stays hashable."""


ANONYMOUS = Principal(name="anonymous", authenticated=False)


class AuthUnavailable(GatewayError):
    """Authentication or authorization could not be decided (the API server is unreachable,
    or refuses the gateway's own reviews). The gateway fails closed: 503, never a guess."""

    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class Authenticator(Protocol):
    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller of a request; raises ``Unauthenticated`` (401) or ``AuthUnavailable``."""
        ...

    async def authorize(self, principal: Principal, endpoint: str, verb: str) -> None:
        """Return if ``principal`` may ``verb`` the endpoint; raise ``PermissionDenied`` (403)
        or ``AuthUnavailable`` (503) otherwise."""
        ...


@runtime_checkable
class SupportsClose(Protocol):
    async def close(self) -> None: ...


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 when there is none."""
    header = headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Missing bearer token: send 'Authorization: Bearer <token>'.")
    if not token.isascii():
        # Bearer tokens are ASCII (RFC 6750). aiohttp keeps other bytes as lone surrogates,
        # which cannot even be hashed: refuse them here, as any unknown token.
        raise Unauthenticated("Invalid access token.")
    return token


def check_token_scope(principal: Principal, endpoint: str) -> None:
    """Enforce the auth file's per-token ``endpoints`` list (a restriction of the token,
    applied before and on top of any other authorization)."""
    if principal.endpoints is not None and endpoint not in principal.endpoints:
        raise PermissionDenied(
            f"The caller '{principal.name}' may not query endpoint '{endpoint}': its token "
            "is limited to other endpoints."
        )


class AllowAnonymous:
    """No auth file: every caller is ``anonymous`` and may do anything, queries and
    endpoint changes (``--state-dir``) alike. Only allowed on loopback (the machine's own
    user), or with --insecure-no-auth; see cli.py."""

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return ANONYMOUS

    async def authorize(self, principal: Principal, endpoint: str, verb: str) -> None:
        return None


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    groups: list[str] = Field(default_factory=list)
    kind: Literal["user", "service_principal"] = "user"
    endpoints: list[str] | None = None


class _AuthFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[_TokenEntry]


class AuthFileError(ValueError):
    pass


class BearerTokenAuthenticator:
    """Looks the token's SHA-256 up in the table loaded from the auth file.

    Authorization is local: a token may query every endpoint unless its entry lists
    ``endpoints``; members of ``manage_group`` may also create, change and delete endpoints
    through the API (``--state-dir``), and nobody else may.
    """

    def __init__(
        self, principals: Mapping[str, Principal], *, manage_group: str | None = None
    ) -> None:
        self._by_digest = dict(principals)
        self.manage_group = manage_group

    @classmethod
    def from_file(cls, path: Path, *, manage_group: str | None = None) -> BearerTokenAuthenticator:
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
            entry.sha256.lower(): Principal(
                entry.name,
                frozenset(entry.groups),
                kind=entry.kind,
                endpoints=None if entry.endpoints is None else frozenset(entry.endpoints),
            )
            for entry in parsed.tokens
        }
        return cls(principals, manage_group=manage_group)

    def lookup(self, token: str) -> Principal | None:
        """The principal of a token, or None. A lookup by digest leaks nothing useful
        through timing: the digest is not the token."""
        return self._by_digest.get(hashlib.sha256(token.encode()).hexdigest())

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        principal = self.lookup(bearer_token(headers))
        if principal is None:
            raise Unauthenticated("Invalid access token.")
        return principal

    async def authorize(self, principal: Principal, endpoint: str, verb: str) -> None:
        if verb == QUERY:
            check_token_scope(principal, endpoint)
            return
        if self.manage_group is None or self.manage_group not in principal.groups:
            who = f"members of group '{self.manage_group}'" if self.manage_group else "nobody"
            raise PermissionDenied(
                f"The caller '{principal.name}' may not {verb} endpoint '{endpoint}' ({who} may)."
            )


async def permission_level(
    authenticator: Authenticator, principal: Principal, endpoint: str
) -> PermissionLevel:
    """What GET reports as the caller's ``permission_level`` on an endpoint.

    CAN_QUERY if the caller may query it; CAN_MANAGE if it may also change it (``update``
    on the ServingEndpoint); CAN_VIEW otherwise (it may still read the endpoint's
    description). Manage without query is CAN_VIEW: the level promises what a query
    will do. ``AuthUnavailable`` propagates: the answer is unknown, not "view".
    """
    try:
        await authenticator.authorize(principal, endpoint, QUERY)
    except PermissionDenied:
        return "CAN_VIEW"
    try:
        await authenticator.authorize(principal, endpoint, MANAGE)
    except PermissionDenied:
        return "CAN_QUERY"
    return "CAN_MANAGE"


class AuthHolder:
    """The live authenticator; replaced whole when the auth file changes.

    ``rebuild`` turns a freshly read auth file into the new authenticator (the default:
    the file alone). The Kubernetes authenticator passes one that keeps its API client and
    review caches and swaps only the static tokens.
    """

    def __init__(
        self,
        current: Authenticator,
        path: Path | None = None,
        *,
        rebuild: Callable[[BearerTokenAuthenticator], Authenticator] | None = None,
        manage_group: str | None = None,
    ) -> None:
        self.current = current
        self.path = path
        self._rebuild = rebuild
        self._manage_group = manage_group

    def reload(self) -> None:
        if self.path is None:
            return
        tokens = BearerTokenAuthenticator.from_file(self.path, manage_group=self._manage_group)
        self.current = self._rebuild(tokens) if self._rebuild is not None else tokens

    async def close(self) -> None:
        """Release what the authenticator holds (the Kubernetes one: its HTTP session)."""
        if isinstance(self.current, SupportsClose):
            await self.current.close()
