"""Kubernetes identities: TokenReview for who is calling, SubjectAccessReview for what
they may do.

In-cluster callers send a projected ServiceAccount token minted for the gateway's
audience (``--auth-audience``)::

    volumes:
      - name: servegate-token
        projected:
          sources:
            - serviceAccountToken: {audience: servegate, path: token, expirationSeconds: 3600}

The gateway asks the API server (a TokenReview with that audience) whether the token is
valid *for the gateway*: a token minted for another audience, the API server's own
included, is refused, so the gateway never accepts a credential it could replay
elsewhere, and a token for the gateway is useless anywhere else.

Each query is then authorized with a SubjectAccessReview: verb ``query`` on
``servingendpoints.servegate.io``, named after the endpoint, in the gateway's namespace.
A team grants access with an ordinary Role::

    rules:
      - apiGroups: [servegate.io]
        resources: [servingendpoints]
        resourceNames: [chat]
        verbs: [query]

so RBAC, and whatever other authorizer the cluster runs, decides; the gateway keeps no
access list of its own. Static tokens of the auth file keep working beside Kubernetes
identities (for callers outside the cluster): they skip the TokenReview, and are
authorized through the same SubjectAccessReview as their configured user and groups, after
their own ``endpoints`` restriction.

Answers are cached briefly (:mod:`servegate.auth.cache`). When the API server cannot
answer, requests fail closed with 503 ``TEMPORARILY_UNAVAILABLE``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from servegate.auth.cache import CachePolicy, Clock, ReviewCache
from servegate.auth.callers import (
    AuthUnavailable,
    BearerTokenAuthenticator,
    Principal,
    bearer_token,
    check_token_scope,
)
from servegate.auth.kubeapi import ApiUnavailable, KubernetesApi
from servegate.ingress.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("servegate.auth")

TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
API_GROUP: Final = "servegate.io"
RESOURCE: Final = "servingendpoints"
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"
DEFAULT_AUDIENCE: Final = "servegate"
RETRY_AFTER: Final = 1
"""Seconds clients are told to wait when the API server is down: failures are not cached,
so the very next request asks again."""


@dataclass(frozen=True)
class ReviewPolicy:
    """How long review answers are kept (see :mod:`servegate.auth.cache`)."""

    tokens: CachePolicy = field(default_factory=CachePolicy)
    access: CachePolicy = field(default_factory=CachePolicy)


AccessKey = tuple[str, frozenset[str], str, tuple[tuple[str, tuple[str, ...]], ...], str, str]


class KubernetesAuthenticator:
    """``authenticate`` with TokenReview (or a static token), ``authorize`` with
    SubjectAccessReview. Build one per process; :meth:`with_static` shares its API client
    and caches with a new set of static tokens when the auth file changes."""

    def __init__(
        self,
        api: KubernetesApi,
        *,
        audience: str,
        namespace: str,
        static: BearerTokenAuthenticator | None = None,
        policy: ReviewPolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not audience:
            raise ValueError("a TokenReview audience is required")
        policy = policy or ReviewPolicy()
        self.api = api
        self.audience = audience
        self.namespace = namespace
        self.static = static
        self._tokens: ReviewCache[bytes, Principal | str] = ReviewCache(policy.tokens, clock)
        self._access: ReviewCache[AccessKey, str] = ReviewCache(policy.access, clock)

    def with_static(self, static: BearerTokenAuthenticator | None) -> KubernetesAuthenticator:
        """The same authenticator (API client, caches) with other static tokens."""
        clone = copy.copy(self)  # shallow: the API client and the caches are shared
        clone.static = static
        return clone

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        token = bearer_token(headers)
        if self.static is not None and (principal := self.static.lookup(token)) is not None:
            return principal
        # Keyed by digest: the cache never holds a usable token.
        key = hashlib.sha256(token.encode()).digest()
        _, answer = await self._tokens.get(key, lambda: self._review_token(token))
        if isinstance(answer, Principal):
            return answer
        raise Unauthenticated(answer)

    async def _review_token(self, token: str) -> tuple[bool, Principal | str]:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        status = await self._create(TOKEN_REVIEWS, review, token, "verify the caller's token")
        if not status.get("authenticated"):
            # status.error says why (expired, unknown signer...); it names no token, but
            # it is the API server's business: the client gets the usual message.
            log.debug("TokenReview: not authenticated: %s", status.get("error") or "-")
            return False, "Invalid access token."
        # An audience-aware API server returns the audiences the token is valid for among
        # those asked; an empty list means "valid for the API server itself": refused.
        if self.audience not in (status.get("audiences") or []):
            return False, (
                f"Invalid access token: it was not issued for this gateway (send a "
                f"projected ServiceAccount token with audience '{self.audience}')."
            )
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        if not username:
            return False, "Invalid access token."
        return True, Principal(
            name=username,
            groups=frozenset(str(g) for g in user.get("groups") or ()),
            kind="service_principal" if username.startswith(SERVICE_ACCOUNT_PREFIX) else "user",
            uid=str(user.get("uid") or ""),
            extra=_extra(user.get("extra")),
        )

    # ------------------------------------------------------------------ authorization

    async def authorize(self, principal: Principal, endpoint: str, verb: str) -> None:
        check_token_scope(principal, endpoint)
        key: AccessKey = (
            principal.name,
            principal.groups,
            principal.uid,
            principal.extra,
            endpoint,
            verb,
        )
        allowed, reason = await self._access.get(
            key, lambda: self._review_access(principal, endpoint, verb)
        )
        if allowed:
            return
        because = f" ({reason})" if reason else ""
        raise PermissionDenied(
            f"The caller '{principal.name}' may not {verb} endpoint '{endpoint}'{because}. "
            f"Grant it with a Role in namespace '{self.namespace}' allowing verb '{verb}' "
            f"on resource '{RESOURCE}' of apiGroup '{API_GROUP}' (resourceNames: "
            f"['{endpoint}']), bound to the caller."
        )

    async def _review_access(
        self, principal: Principal, endpoint: str, verb: str
    ) -> tuple[bool, str]:
        spec: dict[str, Any] = {
            "user": principal.name,
            "groups": sorted(principal.groups),
            "resourceAttributes": {
                "namespace": self.namespace,
                "verb": verb,
                "group": API_GROUP,
                "resource": RESOURCE,
                "name": endpoint,
            },
        }
        if principal.uid:
            spec["uid"] = principal.uid
        if principal.extra:
            spec["extra"] = {key: list(values) for key, values in principal.extra}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        status = await self._create(ACCESS_REVIEWS, review, None, "check the caller's access")
        if status.get("evaluationError"):
            log.debug("SubjectAccessReview evaluation error: %s", status["evaluationError"])
        # ``denied`` (an explicit deny) implies not allowed; neither is "no opinion": denied.
        allowed = bool(status.get("allowed")) and not status.get("denied")
        return allowed, "" if allowed else str(status.get("reason") or "")

    # ------------------------------------------------------------------ plumbing

    async def _create(
        self, path: str, review: dict[str, Any], secret: str | None, purpose: str
    ) -> dict[str, Any]:
        try:
            answer = await self.api.create(path, review, secret=secret)
        except ApiUnavailable as exc:
            problem = (
                "the gateway is not allowed to create reviews: its ServiceAccount needs "
                "'create' on tokenreviews and subjectaccessreviews"
                if exc.refused
                else "the Kubernetes API server is unavailable"
            )
            raise AuthUnavailable(
                f"Cannot {purpose}: {problem}. Try again shortly.", retry_after=RETRY_AFTER
            ) from None
        status = answer.get("status")
        return status if isinstance(status, dict) else {}

    async def close(self) -> None:
        self._tokens.cancel()
        self._access.cancel()
        await self.api.close()


def _extra(raw: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(raw, dict):
        return ()
    return tuple(
        sorted((str(key), tuple(str(v) for v in values or ())) for key, values in raw.items())
    )
