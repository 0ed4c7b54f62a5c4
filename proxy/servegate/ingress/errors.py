"""Every error the gateway returns, and the one place that turns it into an HTTP response.

The tree::

    GatewayError                      status, error_code, message
    ├── BadRequest                    400 BAD_REQUEST / INVALID_PARAMETER_VALUE
    ├── PayloadTooLarge               413 BAD_REQUEST
    ├── Unauthenticated               401 UNAUTHENTICATED
    ├── PermissionDenied              403 PERMISSION_DENIED
    ├── NotFound                      404 RESOURCE_DOES_NOT_EXIST
    ├── MethodNotAllowed              405 BAD_REQUEST
    ├── EndpointNotReady              503 TEMPORARILY_UNAVAILABLE
    ├── UpstreamError                 the provider's own status, its body wrapped as
    │                                 {"external_model_provider", "external_model_error"}
    ├── UpstreamFault                 the provider failed without an error answer of its own
    │   ├── UpstreamTimeout           504 DEADLINE_EXCEEDED
    │   └── UpstreamUnavailable       502 TEMPORARILY_UNAVAILABLE (connection refused or lost,
    │                                 a body that is not what the provider documents)
    └── InternalError                 500 INTERNAL_ERROR

The codes are the ones databricks-sdk, MLflow and the OpenAI SDK already map
(``databricks-api.md`` §3.7). Two client quirks shape the messages: the SDK retries any
error whose message contains "Unexpected error", and both SDKs honour an integer
``Retry-After`` on 429/503, so it must be truthful.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

# HTTP status of an upstream error → the error_code clients expect for it.
_CODE_FOR_STATUS: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_CONFLICT",
    413: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    501: "NOT_IMPLEMENTED",
    502: "TEMPORARILY_UNAVAILABLE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# A Retry-After of more digits than this (over 31 years) is garbage, not a delay.
_MAX_RETRY_DIGITS = 9


def error_code_for_status(status: int) -> str:
    """The Databricks error code for an HTTP status, falling back by class (4xx/5xx)."""
    if status in _CODE_FOR_STATUS:
        return _CODE_FOR_STATUS[status]
    return "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"


class GatewayError(Exception):
    """Base of every error the gateway answers with; carries what the response needs."""

    status: int = 500
    error_code: str = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        # databricks-sdk retries any error whose message holds "Unexpected error" (case and
        # all): a provider's own text must not make a client retry what it should not.
        message = message.replace("Unexpected error", "unexpected error")
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error_code is not None:
            self.error_code = error_code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, int(self.retry_after)))}


class BadRequest(GatewayError):
    status = 400
    error_code = "BAD_REQUEST"


class InvalidParameter(BadRequest):
    error_code = "INVALID_PARAMETER_VALUE"


class PayloadTooLarge(GatewayError):
    status = 413
    error_code = "BAD_REQUEST"


class Unauthenticated(GatewayError):
    status = 401
    error_code = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    status = 403
    error_code = "PERMISSION_DENIED"


class NotFound(GatewayError):
    status = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class MethodNotAllowed(GatewayError):
    status = 405
    error_code = "BAD_REQUEST"


class EndpointNotReady(GatewayError):
    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class UpstreamFault(GatewayError):
    """The provider failed without answering an error of its own: it could not be reached,
    went silent, hung up, or sent something that is not what it documents.

    There is no provider body to wrap (that is :class:`UpstreamError`), so the details go
    in the error format's ``details`` list, as one ``google.rpc.ErrorInfo`` (the shape the
    platform's SDKs parse): ``reason`` is a stable code (:data:`FAULT_REASONS`) and
    ``metadata`` names the ``external_model_provider`` and the ``external_model_error``.
    The provider's name is filled in by the routing stage when the raiser did not know it.
    """

    reason: str = "UPSTREAM_BAD_RESPONSE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        provider: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, status=status, retry_after=retry_after)
        if reason is not None:
            self.reason = reason
        self.provider = provider

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.provider is not None:
            body["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "servegate.io",
                    "metadata": {
                        "external_model_provider": self.provider,
                        "external_model_error": self.message,
                    },
                }
            ]
        return body


#: ``UpstreamFault.reason`` values, documented in the README ("Errors").
FAULT_REASONS = (
    "UPSTREAM_UNREACHABLE",  # connection refused, DNS, TLS handshake or verification failed
    "UPSTREAM_CONNECTION_LOST",  # the connection broke before the response was complete
    "UPSTREAM_TIMEOUT",  # no response, or not all of it, within the deadline
    "UPSTREAM_BAD_RESPONSE",  # malformed JSON or event, a wrong content type, unknown shape
    "UPSTREAM_RESPONSE_TOO_LARGE",  # a body or one stream event over the size cap
)


class UpstreamTimeout(UpstreamFault):
    status = 504
    error_code = "DEADLINE_EXCEEDED"
    reason = "UPSTREAM_TIMEOUT"


class UpstreamUnavailable(UpstreamFault):
    status = 502
    error_code = "TEMPORARILY_UNAVAILABLE"


class InternalError(GatewayError):
    status = 500
    error_code = "INTERNAL_ERROR"


class UpstreamError(GatewayError):
    """The provider answered with an error: keep its status, wrap its body verbatim.

    The message is a JSON string, as the platform sends it, so clients that show
    ``message`` show the provider's own explanation.
    """

    def __init__(
        self,
        provider: str,
        status: int,
        body: Any,
        *,
        retry_after: int | None = None,
    ) -> None:
        self.provider = provider
        self.upstream_body = body
        wrapped = {"external_model_provider": provider, "external_model_error": body}
        super().__init__(
            orjson.dumps(wrapped).decode(),
            status=status,
            error_code=error_code_for_status(status),
            retry_after=retry_after,
        )


def parse_retry_after(headers: Mapping[str, str]) -> int | None:
    """An upstream ``Retry-After`` (seconds) or OpenAI's ``retry-after-ms``, as whole seconds.

    Anything else (an HTTP date, non-ASCII digits, an absurd number) counts as absent.
    """
    value = headers.get("Retry-After")
    if value is not None:
        value = value.strip()
        if value.isascii() and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
            return int(value)
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            millis = float(ms)
        except ValueError:
            return None
        if not math.isfinite(millis) or millis >= 10**_MAX_RETRY_DIGITS * 1000:
            return None
        return max(1, -(-int(millis) // 1000))
    return None


def error_response(error: GatewayError) -> web.Response:
    """The single mapper from a GatewayError to the response the client sees."""
    return web.Response(
        status=error.status,
        body=orjson.dumps(error.body()),
        content_type="application/json",
        headers=error.headers(),
    )
