"""The HTTP errors aiohttp answers by itself, in the platform's shape, and the HTTP limits.

A request line, header or header count over the limits, or bytes that are not HTTP, are
refused by aiohttp's protocol handler before any route or middleware runs, with a
``text/plain`` body. ``GatewayRunner`` (a drop-in ``web.AppRunner``) answers them as
``{"error_code", "message"}`` like every other error, closes the connection as aiohttp
does, logs a client's malformed request without a stack trace (aiohttp logs each one at
ERROR with its trace), and applies ``HTTP_LIMITS`` unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from servegate.ingress.errors import GatewayError, error_code_for_status, error_response

HTTP_LIMITS: dict[str, float] = {
    # The request line: method, path and query. Gateway paths are short.
    "max_line_size": 8190,
    # One header line. Room for a large bearer token (an Entra ID or OIDC JWT with many
    # group claims passes 8 KB), which aiohttp's default of 8190 bytes would refuse.
    "max_field_size": 16384,
    # The number of headers: SDK requests send about 15.
    "max_headers": 128,
    # Seconds aiohttp keeps reading (and dropping) a body left unread after the answer, so
    # the client can read it before the connection closes. The default is 10 s: a body
    # refused with 413 before it was read would still be drained that long.
    "lingering_time": 2.0,
}
_MAX_DETAIL = 300


class _JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("A response was already started; cannot send the error.")
        if status >= 500:  # never a trace in the body, whatever aiohttp's debug setting
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            text = "The gateway failed to handle the request."
        else:  # the client's mistake: no stack trace in the log for every garbage request
            self.log_debug("Refused a request from %s: %s", request.remote, message)
            detail = (message or "").strip()[:_MAX_DETAIL]
            text = "The request is not valid HTTP" + (f": {detail}" if detail else ".")
        error = GatewayError(text, status=status, error_code=error_code_for_status(status))
        response = error_response(error)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose protocol-level errors are JSON, with ``HTTP_LIMITS``."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**HTTP_LIMITS, **kwargs})

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same object, this class's connection handler
        return server
