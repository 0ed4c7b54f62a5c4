"""OpenAI's error envelope and the errors OpenAI returns for common statuses.

OpenAI wraps every error as ``{"error": {"message", "type", "param", "code"}}``;
clients (the openai SDK included) pick the exception class from the HTTP status and
read ``error`` for details, so a simulator must reproduce both. The messages below
are the ones the real API sends (see the package report for sources); a fault that
names only a status gets the matching one from :func:`openai_status_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "openai_error", "openai_status_error"]


class ApiError(Exception):
    """Raised by validation to answer ``status`` with ``body`` instead of a result."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def openai_error(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def openai_status_error(
    _request: web.Request, status: int, model: str | None, _headers: Mapping[str, str]
) -> object:
    """OpenAI's body for ``status`` (the fault machinery's default for OpenAI apps)."""
    model_name = model or "gpt-4o-mini"
    if status == 400:
        return openai_error("Invalid request (simulated fault).")
    if status == 401:
        return openai_error(
            "Incorrect API key provided: sk-sim***********. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    if status == 403:
        return openai_error(
            f"Project `proj_simulated` does not have access to model `{model_name}`",
            code="model_not_found",
        )
    if status == 404:
        return openai_error(
            f"The model `{model_name}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    if status == 429:
        return openai_error(
            f"Rate limit reached for {model_name} in organization org-simulated on requests "
            "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            type="requests",
            code="rate_limit_exceeded",
        )
    if status == 500:
        return openai_error(
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )
    if status == 503:
        return openai_error("The server is overloaded or not ready yet.", type="server_error")
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return openai_error(f"Simulated upstream error (HTTP {status}).", type=kind)
