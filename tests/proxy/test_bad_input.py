"""Bad input through real HTTP: every malformed, oversized or hostile request gets a 4xx in
the platform's ``{"error_code", "message"}`` shape, never a 5xx, never a trace.

Requests are written as raw bytes on a socket, so each test controls exactly what is sent
(invalid UTF-8, a Content-Length larger than what follows, a header block over the limits)
and can see that a refusal arrives before the body was sent. The gateway runs in-process
under ``GatewayRunner``, the runner that gives aiohttp's own protocol errors that shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from servegate.ingress.body import MAX_BODY_BYTES
from servegate.ingress.protocol import HTTP_LIMITS, GatewayRunner
from tests.conftest import Workspace, endpoint_doc, openai_entity, write_auth_file, write_yaml

CHAT = "/serving-endpoints/chat/invocations"
HI = b'[{"role": "user", "content": "hi"}]'
TIMEOUT = 10


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int]
    """Statuses of 1xx responses before the final one (100 Continue)."""

    def json(self) -> Any:
        return orjson.loads(self.body)


@pytest.fixture
async def gateway(
    workspace: Workspace, openai_sim: str, in_process_app: Callable[..., web.Application]
) -> AsyncIterator[URL]:
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
    )
    runner = GatewayRunner(in_process_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield URL.build(scheme="http", host=host, port=port)
    await runner.cleanup()


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    interim: list[int] = []
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        if status >= 200:
            break
        interim.append(status)
    length = headers.get("content-length")
    body = await (reader.readexactly(int(length)) if length is not None else reader.read())
    return Reply(status, headers, body, interim)


async def exchange(url: URL, request: bytes) -> Reply:
    """Send ``request`` as it is; the reply to it (the connection is closed after)."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_reply(reader), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def post(
    path: str, body: bytes, *headers: str, content_type: str | None = "application/json"
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", f"Content-Length: {len(body)}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [*headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_platform_error(reply: Reply, status: int) -> dict[str, Any]:
    """A ``status`` reply whose body is exactly the platform's error object, no trace."""
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = reply.json()
    assert set(error) == {"error_code", "message"}
    assert isinstance(error["error_code"], str) and error["error_code"].isupper()
    assert isinstance(error["message"], str) and error["message"]
    assert len(reply.body) < 4096, "the message must not echo the input"
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]
    return error


def nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def chat_with(extra: bytes) -> bytes:
    return b'{"messages": ' + HI + b", " + extra + b"}"


BAD_BODIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"messages": [', id="truncated-json"),
    pytest.param(b"{'messages': []}", id="single-quotes"),
    pytest.param(b"[1, 2]", id="array"),
    pytest.param(b"null", id="null"),
    pytest.param(b'"hello"', id="string"),
    pytest.param(b'{"messages": "hi"}', id="messages-not-a-list"),
    pytest.param(b'{"messages": []}', id="no-messages"),
    pytest.param(b'{"messages": [{"role": "wizard", "content": "hi"}]}', id="unknown-role"),
    pytest.param(b'{"messages": [{"role": "user", "content": 5}]}', id="content-number"),
    pytest.param(chat_with(b'"temperature": "hot"'), id="temperature-string"),
    pytest.param(chat_with(b'"temperature": NaN'), id="nan"),
    pytest.param(chat_with(b'"temperature": 1e400'), id="number-overflow"),
    pytest.param(chat_with(b'"max_tokens": -1'), id="negative-max-tokens"),
    pytest.param(chat_with(b'"stream": [true]'), id="stream-list"),
    pytest.param(chat_with(b'"extra_params": [1]'), id="extra-params-list"),
    pytest.param(chat_with(b'"usage_context": "x"'), id="usage-context-string"),
    pytest.param(b'{"inputs": {"a": [1]}, "messages": []}', id="custom-model-format"),
    pytest.param(b'{"prompt": "hi"}', id="field-of-another-task"),
    pytest.param(chat_with(b'"temperature": "' + b"x" * 3_000_000 + b'"'), id="huge-string"),
    pytest.param(
        b'{"messages": [' + b",".join([b'{"role": "nobody"}'] * 100_000) + b"]}",
        id="huge-array",
    ),
    pytest.param(b'{"messages": ' + nested(100_000) + b"}", id="nested-100k"),
    pytest.param(chat_with(b'"x": ' + nested(300)), id="nested-300"),
    pytest.param(chat_with(b'"x": ' + nested(200)), id="nested-200"),
    pytest.param(chat_with(b'"usage_context": {"a": ' + nested(1000) + b"}"), id="nested-1000"),
    pytest.param(
        chat_with(b'"extra_params": {"x": "' + nested(300) + b'"}'), id="nested-in-extra-params"
    ),
    pytest.param(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', id="invalid-utf8"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', id="utf8-surrogate"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}', id="lone-surrogate-escape"
    ),
    pytest.param(b'{"messages": ' + HI + b"} trailing", id="trailing-bytes"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_bad_body_gets_400(gateway: URL, body: bytes) -> None:
    error = assert_platform_error(await exchange(gateway, post(CHAT, body)), 400)
    assert error["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"messages": ' + HI + b"}", id="no-model"),
        pytest.param(b'{"model": 5, "messages": ' + HI + b"}", id="model-number"),
        pytest.param(b'{"model": "chat", "messages": {"role": "user"}}', id="messages-object"),
        pytest.param(b'{"model": "chat", "input": ["a"]}', id="embeddings-body"),
        pytest.param(b"[]", id="array"),
    ],
)
async def test_bad_body_on_the_openai_route_gets_400(gateway: URL, body: bytes) -> None:
    assert_platform_error(await exchange(gateway, post("/v1/chat/completions", body)), 400)


async def test_a_good_body_without_content_type_is_accepted(gateway: URL) -> None:
    """Like the platform's clients, the gateway reads the body as JSON whatever the type says
    (curl -d sends form encoding unless told): the body decides, not the header."""
    body = b'{"messages": ' + HI + b"}"
    reply = await exchange(gateway, post(CHAT, body, content_type=None))
    assert reply.status == 200, reply.body
    reply = await exchange(gateway, post(CHAT, body, content_type="text/plain"))
    assert reply.status == 200, reply.body


async def test_a_bad_body_without_content_type_gets_400(gateway: URL) -> None:
    reply = await exchange(gateway, post(CHAT, b"messages=hi", content_type=None))
    assert_platform_error(reply, 400)


async def test_body_over_the_limit_gets_413(gateway: URL) -> None:
    body = b'{"messages": ' + HI + b', "x": "' + b"x" * MAX_BODY_BYTES + b'"}'
    error = assert_platform_error(await exchange(gateway, post(CHAT, body)), 413)
    assert error["error_code"] == "BAD_REQUEST"


async def test_announced_oversized_body_is_refused_before_it_is_sent(gateway: URL) -> None:
    """A Content-Length over the limit is answered at once: the client sent 1 KB of it."""
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {50 * MAX_BODY_BYTES}\r\n\r\n"
    ).encode()
    reply = await exchange(gateway, head + b"{" + b" " * 1023)
    assert_platform_error(reply, 413)


async def test_expect_continue_with_an_oversized_body_gets_413_instead_of_100(
    gateway: URL,
) -> None:
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    reply = await exchange(gateway, head)
    assert reply.interim == []
    assert_platform_error(reply, 413)


async def test_expect_continue_with_a_fitting_body_gets_100_then_the_answer(gateway: URL) -> None:
    body = b'{"messages": ' + HI + b"}"
    head = post(CHAT, body, "Expect: 100-continue").removesuffix(body)
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(head)
        line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert line.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        reply = await asyncio.wait_for(read_reply(reader), TIMEOUT)
    finally:
        writer.close()
    assert reply.status == 200, reply.body


async def test_chunked_body_over_the_limit_gets_413(gateway: URL) -> None:
    """No Content-Length to refuse early: the gateway stops at 4 MB read."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"

    async def send() -> None:
        writer.write(head + b'5\r\n{"a":\r\n')
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):  # bounded: twice the limit
            writer.write(frame)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sender = asyncio.create_task(send())
    try:
        reply = await asyncio.wait_for(read_reply(reader), TIMEOUT)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
    assert_platform_error(reply, 413)


PROTOCOL_ERRORS = [
    pytest.param(
        post(
            CHAT,
            b"{}",
            *(f"X-Header-{i}: {i}" for i in range(int(HTTP_LIMITS["max_headers"]) + 10)),
        ),
        id="too-many-headers",
    ),
    pytest.param(
        post(CHAT, b"{}", "X-Huge: " + "h" * (int(HTTP_LIMITS["max_field_size"]) + 10)),
        id="huge-header",
    ),
    pytest.param(
        post("/serving-endpoints/" + "a" * (int(HTTP_LIMITS["max_line_size"]) + 10), b"{}"),
        id="huge-request-line",
    ),
    pytest.param(b"GARBAGE\r\n\r\n", id="not-http"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", id="bad-content-length"),
    pytest.param(
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        id="bad-chunk-size",
    ),
    pytest.param(b"POST / HTTP/1.1\r\nX-Bad\xff: \x01\r\n\r\n", id="bad-header-bytes"),
]


@pytest.mark.parametrize("request_bytes", PROTOCOL_ERRORS)
async def test_requests_aiohttp_refuses_get_the_platform_shape(
    gateway: URL, request_bytes: bytes
) -> None:
    reply = await exchange(gateway, request_bytes)
    assert 400 <= reply.status < 500
    assert_platform_error(reply, reply.status)


async def test_a_large_bearer_token_fits_the_header_limit(gateway: URL) -> None:
    """An OIDC token with many group claims passes 8 KB, aiohttp's default field limit."""
    token = "Authorization: Bearer " + "t" * 12_000
    reply = await exchange(gateway, post(CHAT, b'{"messages": ' + HI + b"}", token))
    assert reply.status == 200, reply.body


async def test_bearer_token_that_is_not_utf8_gets_401(
    workspace: Workspace, openai_sim: str, in_process_app: Callable[..., web.Application]
) -> None:
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
    )
    auth = write_auth_file(workspace.root / "auth.yaml", {"good-token": ("ana", [])})
    runner = GatewayRunner(in_process_app(auth_file=auth), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        request = post(CHAT, b'{"messages": ' + HI + b"}", "Authorization: Bearer TOKEN")
        url = URL.build(scheme="http", host=host, port=port)
        reply = await exchange(url, request.replace(b"TOKEN", b"\xff\xfe\xed\xa0\x80"))
        assert_platform_error(reply, 401)
        reply = await exchange(url, request.replace(b"TOKEN", b"good-token"))
        assert reply.status == 200, reply.body
    finally:
        await runner.cleanup()


async def test_a_failure_outside_the_middleware_is_a_json_500_without_its_trace() -> None:
    """What the middleware normally catches, in an app without it: aiohttp's own 500 path."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("internal detail")

    app = web.Application()
    app.router.add_get("/boom", boom)
    runner = GatewayRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        url = URL.build(scheme="http", host=host, port=port)
        reply = await exchange(url, b"GET /boom HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    error = assert_platform_error(reply, 500)
    assert error["error_code"] == "INTERNAL_ERROR"
    assert b"internal detail" not in reply.body
