"""Bearer tokens shared between the Entra simulator (which issues them) and the Azure
OpenAI simulator (which accepts them).

Real Entra access tokens are opaque to clients (Microsoft's docs tell callers not to
parse them), and Azure OpenAI checks them against its own audience. The simulators
model exactly that contract with a registry both apps hold a reference to: the
issuer records who a token was minted for and until when, and the resource server
asks whether a presented token is live for its audience. Nothing is signed, so
nothing here can be mistaken for a real credential.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COGNITIVE_SERVICES_AUDIENCE", "IssuedToken", "TokenRegistry"]

#: The resource Azure OpenAI accepts tokens for (scope ``<this>/.default``).
COGNITIVE_SERVICES_AUDIENCE = "https://cognitiveservices.azure.com"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """One access token the Entra simulator handed out."""

    access_token: str
    client_id: str
    tenant: str
    audience: str
    issued_at: float
    expires_at: float


class TokenRegistry:
    """Thread-safe record of issued tokens.

    ``clock`` returns wall-clock seconds; tests inject a fake one to expire tokens
    without waiting. The registry is touched from aiohttp handlers and, in msal tests,
    read from other threads, hence the lock.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        self._issued_count = 0

    def issue(self, *, client_id: str, tenant: str, audience: str, lifetime_s: int) -> IssuedToken:
        now = self._clock()
        token = IssuedToken(
            access_token=secrets.token_urlsafe(48),
            client_id=client_id,
            tenant=tenant,
            audience=audience.rstrip("/"),
            issued_at=now,
            expires_at=now + lifetime_s,
        )
        with self._lock:
            self._tokens[token.access_token] = token
            self._issued_count += 1
        return token

    def lookup(self, access_token: str) -> IssuedToken | None:
        """The token's record, or None if this registry never issued it."""
        with self._lock:
            return self._tokens.get(access_token)

    def is_live(self, access_token: str, *, audience: str) -> bool:
        """True when the token was issued here, for ``audience``, and has not expired."""
        token = self.lookup(access_token)
        return (
            token is not None
            and token.audience == audience.rstrip("/")
            and self._clock() < token.expires_at
        )

    def revoke_all(self) -> None:
        """Forget every token (they stop being live); the issued count is kept."""
        with self._lock:
            self._tokens.clear()

    @property
    def issued_count(self) -> int:
        """How many tokens were issued since creation (tests use it to check caching)."""
        with self._lock:
            return self._issued_count

    def issued(self) -> list[IssuedToken]:
        """All tokens still remembered, oldest first."""
        with self._lock:
            return list(self._tokens.values())
