"""The Microsoft identity platform (Entra ID) v2.0 simulator: client credentials only.

The gateway gets Azure OpenAI tokens through MSAL, which first reads the tenant's
OpenID discovery document and then posts to the token endpoint it names. So this app
serves:

``GET /{tenant}/v2.0/.well-known/openid-configuration``
    The discovery document, with every URL built from the request's own scheme and
    host, so it is right on whatever port (and behind whatever TLS) it runs.
``POST /{tenant}/oauth2/v2.0/token``
    ``grant_type=client_credentials`` with ``client_id`` and ``client_secret`` (form
    fields or HTTP Basic) and a ``<resource>/.default`` scope. Success is
    ``{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}``;
    failures use Entra's body (``error``, ``error_description`` with ``AADSTS``
    code and trace trailer, ``error_codes``, ``timestamp``, ``trace_id``,
    ``correlation_id`` (the client's ``client-request-id`` when sent),
    ``error_uri``).
``GET /{tenant}/discovery/v2.0/keys``
    An empty key set (the document references it; tokens here are opaque).

Issued tokens go into the shared :class:`~.tokens.TokenRegistry`, whose
``issued_count`` lets tests check that clients cache tokens. MSAL only accepts an
https authority: serve this app with :func:`~.tls.server_ssl_context`.
"""

from __future__ import annotations

import binascii
import secrets
import uuid
from base64 import b64decode
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .faults import install_control
from .tokens import TokenRegistry
from .wire import JsonReply, deliver, json_response

__all__ = ["create_entra_app", "entra_error_body", "entra_status_error"]

_DEFAULT_SUFFIX = "/.default"
_CLAIMS = (
    "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
    "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
    "name", "tid", "ver", "at_hash", "c_hash", "email",
)  # fmt: skip


def entra_error_body(
    request: web.Request, error: str, code: int | None, description: str
) -> dict[str, Any]:
    """Entra's error envelope; ``code`` None leaves ``error_codes`` empty."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    prefix = f"AADSTS{code}: " if code is not None else ""
    return {
        "error": error,
        "error_description": f"{prefix}{description}\r\nTrace ID: {trace_id}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {now}",
        "error_codes": [code] if code is not None else [],
        "timestamp": now,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code or 0}",
    }


def _invalid_secret(request: web.Request, client_id: str) -> dict[str, Any]:
    return entra_error_body(
        request,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        f"client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    )


def entra_status_error(
    request: web.Request, status: int, model: str | None, _headers: Mapping[str, str]
) -> object:
    """Entra's body for a fault that names only ``status`` (``model`` is the client id)."""
    if status == 401:
        return _invalid_secret(request, model or "")
    error = "temporarily_unavailable" if status == 429 or status >= 500 else "invalid_request"
    return entra_error_body(request, error, None, f"Simulated fault (HTTP {status}).")


def _missing(request: web.Request, name: str) -> web.Response:
    body = entra_error_body(
        request,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )
    return json_response(400, body)


def _client_credentials(
    request: web.Request, form: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """(client_id, client_secret) from the form or, failing that, HTTP Basic auth."""
    client_id, secret = form.get("client_id"), form.get("client_secret")
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            basic_id, _, basic_secret = b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return client_id, secret
        return client_id or basic_id, secret or basic_secret
    return client_id, secret


def create_entra_app(
    *,
    clients: Mapping[str, str],
    tokens: TokenRegistry,
    token_lifetime_s: int = 3599,
    tenants: Collection[str] | None = None,
) -> web.Application:
    """An aiohttp app simulating ``login.microsoftonline.com`` for client credentials.

    ``clients`` maps client id to secret; ``tenants`` restricts the accepted tenant
    path segments (None: any). Faults match on the client id.
    """
    known_tenants = frozenset(tenants) if tenants is not None else None

    def unknown_tenant(request: web.Request) -> web.Response | None:
        tenant = request.match_info["tenant"]
        if known_tenants is None or tenant in known_tenants:
            return None
        body = entra_error_body(
            request,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud. Check with your subscription "
            "administrator, this may happen if there are no active subscriptions for the tenant.",
        )
        return json_response(400, body)

    async def openid_configuration(request: web.Request) -> web.StreamResponse:
        rejected = unknown_tenant(request)
        if rejected is not None:
            return rejected
        tenant = request.match_info["tenant"]
        base = f"{request.scheme}://{request.host}/{tenant}"
        document = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": list(_CLAIMS),
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": None,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return json_response(200, document)

    async def keys(request: web.Request) -> web.StreamResponse:
        return unknown_tenant(request) or json_response(200, {"keys": []})

    async def token(request: web.Request) -> web.StreamResponse:
        rejected = unknown_tenant(request)
        if rejected is not None:
            return rejected
        form = {k: str(v) for k, v in (await request.post()).items()}
        grant_type = form.get("grant_type")
        if not grant_type:
            return _missing(request, "grant_type")
        if grant_type != "client_credentials":
            body = entra_error_body(
                request,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
            return json_response(400, body)
        client_id, secret = _client_credentials(request, form)
        if not client_id:
            return _missing(request, "client_id")
        tenant = request.match_info["tenant"]
        if client_id not in clients:
            body = entra_error_body(
                request,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by "
                "the administrator of the tenant or consented to by any user in the tenant. "
                "You may have sent your authentication request to the wrong tenant.",
            )
            return json_response(400, body)
        if not secret:
            body = entra_error_body(
                request,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the "
                "'client_credentials' grant type.",
            )
            return json_response(401, body)
        if not secrets.compare_digest(secret.encode(), clients[client_id].encode()):
            return json_response(401, _invalid_secret(request, client_id))
        scope = form.get("scope", "").strip()
        if not scope:
            return _missing(request, "scope")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith(_DEFAULT_SUFFIX):
            body = entra_error_body(
                request,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
            return json_response(400, body)
        audience = scopes[0].removesuffix(_DEFAULT_SUFFIX)

        def issue() -> JsonReply:
            issued = tokens.issue(
                client_id=client_id,
                tenant=tenant,
                audience=audience,
                lifetime_s=token_lifetime_s,
            )
            answer = {
                "token_type": "Bearer",
                "expires_in": token_lifetime_s,
                "ext_expires_in": token_lifetime_s,
                "access_token": issued.access_token,
            }
            headers = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
            return JsonReply(200, answer, headers)

        return await deliver(request, issue, model=client_id)

    app = web.Application()
    install_control(app, error_factory=entra_status_error)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    return app
