"""Credentials fetched at request time: Microsoft Entra ID client-credentials tokens (MSAL)
and Google service-account access tokens (google-auth).

MSAL does the OAuth exchange, discovery and its own token cache; it is synchronous, so the
exchange runs in a worker thread. In front of it sits a small cache that answers from
memory until the token is within MSAL's own refresh window (five minutes before expiry,
or half the lifetime of a short-lived token), so the hot path never leaves the event loop.
One fetch runs at a time per credential; concurrent requests wait for it.

Providers are rebuilt on every config reload, so token sources live in a registry keyed by
(authority, tenant, client, secret digest) that survives reloads: a reload does not cost a
new token.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from servegate.ingress.errors import GatewayError, UpstreamUnavailable

log = logging.getLogger(__name__)

AZURE_COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_GOOGLE_TOKEN_TIMEOUT_S = 10
_REFRESH_WINDOW_S = 300.0


class EntraTokenError(GatewayError):
    """The token exchange failed: a configuration problem the caller cannot fix."""

    status = 502
    error_code = "TEMPORARILY_UNAVAILABLE"


@dataclass
class EntraTokenSource:
    authority_host: str
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str = AZURE_COGNITIVE_SCOPE
    _token: str | None = field(default=None, repr=False)
    _refresh_at: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _app: Any = field(default=None, repr=False)
    _previous: str | None = field(default=None, repr=False)
    fetches: int = 0

    def recent_tokens(self) -> tuple[str, ...]:
        """The current access token and the one before it (requests may still carry it)."""
        return tuple(t for t in (self._token, self._previous) if t)

    async def token(self) -> str:
        if self._token is not None and self.clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self.clock() < self._refresh_at:
                return self._token
            return await asyncio.to_thread(self._acquire)

    def _acquire(self) -> str:
        if self._app is None:
            import msal  # only gateways with azuread endpoints pay for it

            self._app = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential=self.client_secret,
                authority=f"{self.authority_host.rstrip('/')}/{self.tenant_id}",
                instance_discovery=False,
            )
        started = self.clock()
        try:
            result = self._app.acquire_token_for_client(scopes=[self.scope])
        except Exception as exc:  # network and discovery failures surface as plain exceptions
            log.warning("Entra ID token request for client %s failed: %s", self.client_id, exc)
            raise UpstreamUnavailable(
                f"Could not reach the Microsoft Entra ID authority for client {self.client_id}."
            ) from None
        if "access_token" not in result:
            code = result.get("error", "unknown_error")
            log.warning("Entra ID refused a token for client %s: %s", self.client_id, code)
            raise EntraTokenError(
                f"Microsoft Entra ID refused a token for client {self.client_id} "
                f"in tenant {self.tenant_id}: {code}. Check the endpoint's Entra credentials."
            )
        if result.get("token_source") != "cache":
            self.fetches += 1
        lifetime = float(result.get("expires_in", 0))
        window = min(_REFRESH_WINDOW_S, lifetime / 2)
        token = str(result["access_token"])
        if token != self._token:
            self._previous, self._token = self._token, token
        self._refresh_at = started + lifetime - window
        return self._token


class GoogleTokenSource:
    """One Google service account's access token: fetched by google-auth, reused while fresh.

    A key that is not service-account JSON is a ``ValueError`` here, so the endpoint is
    NOT_READY with the reason; the messages never quote the key.
    """

    def __init__(self, raw_key: str) -> None:
        # Imported here: only gateways with Vertex AI endpoints pay for google-auth.
        import google.auth.transport.requests
        from google.auth.credentials import TokenState
        from google.oauth2 import service_account

        self._fresh = TokenState.FRESH
        try:
            info = orjson.loads(raw_key)
        except orjson.JSONDecodeError:
            info = None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ValueError(
                'private_key must hold a service-account JSON key ("type": "service_account")'
            )
        missing = [f for f in ("client_email", "private_key", "token_uri") if not info.get(f)]
        if missing:
            raise ValueError(f"the service-account key lacks {', '.join(missing)}")
        try:
            self._credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[GOOGLE_SCOPE]
            )
        except Exception:  # google-auth and cryptography messages may quote key material
            raise ValueError("the service-account key's private_key is not a PEM RSA key") from None
        self.token_uri = str(info["token_uri"])
        self._http = functools.partial(
            google.auth.transport.requests.Request(), timeout=_GOOGLE_TOKEN_TIMEOUT_S
        )
        self._lock = asyncio.Lock()
        self._previous: str | None = None

    async def token(self) -> str:
        if self._credentials.token_state is not self._fresh:
            async with self._lock:  # single flight: concurrent requests wait for one fetch
                if self._credentials.token_state is not self._fresh:
                    previous = self._credentials.token
                    await asyncio.to_thread(self._credentials.refresh, self._http)
                    self._previous = previous
        return str(self._credentials.token)

    def recent_tokens(self) -> tuple[str, ...]:
        """The current access token and the one before it (requests may still carry it)."""
        return tuple(t for t in (self._credentials.token, self._previous) if t)


class CredentialRegistry:
    """Token sources shared across config reloads, keyed by everything that identifies them."""

    def __init__(
        self,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authority_host = authority_host
        self._clock = clock
        self._sources: dict[tuple[str, str, str, str], EntraTokenSource] = {}
        self._google: dict[tuple[str, str, str, str], GoogleTokenSource] = {}

    def google(self, service_account_key: str) -> GoogleTokenSource:
        """The token source for a service-account JSON key (ValueError if it is not one)."""
        key = ("google", hashlib.sha256(service_account_key.encode()).hexdigest(), "", "")
        source = self._google.get(key)
        if source is None:
            source = GoogleTokenSource(service_account_key)
            self._google[key] = source
        return source

    def entra(self, tenant_id: str, client_id: str, client_secret: str) -> EntraTokenSource:
        digest = hashlib.sha256(client_secret.encode()).hexdigest()
        key = (self.authority_host, tenant_id, client_id, digest)
        source = self._sources.get(key)
        if source is None:
            source = EntraTokenSource(
                self.authority_host, tenant_id, client_id, client_secret, clock=self._clock
            )
            self._sources[key] = source
        return source
