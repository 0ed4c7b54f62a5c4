"""A fast fake LLM upstream for the benchmark: OpenAI chat/embeddings and Anthropic Messages.

Plain aiohttp with pre-encoded bodies and no validation, so that it costs far less CPU per
request than any gateway in front of it. It counts the TCP connections it accepts, so a
gateway that pools its upstream connections can be told from one that does not:
``GET /stats`` → ``{"connections": n, "requests": m}``.

``GET /streams`` tells what its streams did: how many are open, finished and cut off (the
peer went away), how many open ones are blocked in a write, and for each open one the bytes
it has written so far and the bytes still in its own write buffer. A stream writes one frame
at a time and awaits the write (aiohttp drains past 64 KiB), so a reader that does not read
stops the writer: the bytes written show how far backpressure let it go
(``bench/slow_streams.py``). A streamed chat stops at the request's ``max_tokens`` chunks
when that is fewer than ``--chunks``, as a model would. ``--extra-port`` listens on more
ports (the same app), so a gateway that pools connections per host and port can be given
several upstreams; ``--mss`` and ``--sndbuf`` set the TCP segment size and send buffer of its
connections.

    python bench/fake_upstream.py --port 9100 [--latency-ms 0] [--chunks 50] [--chunk-words 1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

CREATED = 1_700_000_000
PROMPT_TOKENS = 12
WORD = "lorem "


@dataclass
class Options:
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    chunks: int = 50
    embedding_dim: int = 1536
    chunk_words: int = 1  # words of content per chunk
    mss: int = 0  # TCP maximum segment size of its connections (0: the system's)
    sndbuf: int = 0  # SO_SNDBUF of its connections (0: the system's, autotuned)

    @property
    def content(self) -> str:
        """The content of one chunk."""
        return WORD * self.chunk_words


@dataclass
class Counters:
    connections: int = 0
    requests: int = 0


@dataclass(eq=False)
class Sent:
    """One stream being written."""

    transport: asyncio.BaseTransport | None
    bytes: int = 0  # handed to the transport: written to the socket or in its buffer
    writing: bool = False  # inside a write: seen from outside, blocked until the peer reads

    def buffered(self) -> int:
        """Bytes still in this process's write buffer (not yet in the kernel)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            return transport.get_write_buffer_size()
        return 0


@dataclass
class Streams:
    open: set[Sent] = field(default_factory=set)
    done: int = 0  # written to the end
    cut: int = 0  # the peer went away first
    done_bytes: int = 0  # written by the streams no longer open


@dataclass(frozen=True)
class Frames:
    """A stream's frames: ``head``, then ``body`` ``count`` times, then ``tail``; the body
    frame is one object however long the stream, so a long stream costs no memory."""

    head: tuple[bytes, ...]
    body: bytes
    count: int
    tail: tuple[bytes, ...]

    def __iter__(self) -> Iterator[bytes]:
        yield from self.head
        for _ in range(self.count):
            yield self.body
        yield from self.tail

    def __len__(self) -> int:
        return len(self.head) + self.count + len(self.tail)

    @property
    def size(self) -> int:
        """Bytes of the whole stream (its frames; not the HTTP chunked framing)."""
        return sum(map(len, self.head)) + len(self.body) * self.count + sum(map(len, self.tail))


@dataclass
class Bodies:
    """Response bodies, encoded once per (kind, model, variant) and reused."""

    options: Options
    cache: dict[tuple[str, str, int], bytes | Frames] = field(default_factory=dict)

    def chat(self, model: str) -> bytes:
        key = ("chat", model, 0)
        if key not in self.cache:
            n = self.options.chunks
            message = {"role": "assistant", "content": self.options.content * n, "refusal": None}
            self.cache[key] = orjson.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED,
                "model": model, "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "stop"}],
                "usage": usage(n),
            })  # fmt: skip
        return self._bytes(key)

    def chat_stream(self, model: str, include_usage: bool, limit: int | None = None) -> Frames:
        """``--chunks`` content chunks, or ``limit`` (the request's max_tokens) if fewer."""
        n = min(self.options.chunks, limit) if limit else self.options.chunks
        key = ("chat-stream", model, 2 * n + int(include_usage))
        if key not in self.cache:
            base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                    "created": CREATED, "model": model, "system_fingerprint": "fp_bench"}  # fmt: skip

            def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return sse(orjson.dumps({**base, "choices": [choice]}))

            tail = [chunk({}, "stop")]
            if include_usage:
                tail.append(sse(orjson.dumps({**base, "choices": [], "usage": usage(n)})))
            tail.append(b"data: [DONE]\n\n")
            head = (chunk({"role": "assistant", "content": ""}),)
            body = chunk({"content": self.options.content})
            self.cache[key] = Frames(head, body, n, tuple(tail))
        return self._frames(key)

    def embeddings(self, model: str, count: int) -> bytes:
        key = ("embeddings", model, count)
        if key not in self.cache:
            dim = self.options.embedding_dim
            vector = [round(((i * 7919) % 2000) / 1000 - 1, 6) for i in range(dim)]
            data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)]
            self.cache[key] = orjson.dumps({
                "object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": PROMPT_TOKENS * count, "total_tokens": PROMPT_TOKENS * count},
            })  # fmt: skip
        return self._bytes(key)

    def message(self, model: str) -> bytes:
        key = ("message", model, 0)
        if key not in self.cache:
            n = self.options.chunks
            self.cache[key] = orjson.dumps({
                "id": "msg_bench", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": self.options.content * n}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": n},
            })  # fmt: skip
        return self._bytes(key)

    def message_stream(self, model: str) -> Frames:
        key = ("message-stream", model, 0)
        if key not in self.cache:
            n = self.options.chunks
            start: dict[str, object] = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model,
                     "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}  # fmt: skip
            delta = {"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": self.options.content}}  # fmt: skip
            head = (
                event("message_start", {"type": "message_start", "message": start}),
                event("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}}),
                event("ping", {"type": "ping"}),
            )  # fmt: skip
            tail = (
                event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": n}}),
                event("message_stop", {"type": "message_stop"}),
            )  # fmt: skip
            self.cache[key] = Frames(head, event("content_block_delta", delta), n, tail)
        return self._frames(key)

    def _bytes(self, key: tuple[str, str, int]) -> bytes:
        value = self.cache[key]
        assert isinstance(value, bytes)
        return value

    def _frames(self, key: tuple[str, str, int]) -> Frames:
        value = self.cache[key]
        assert isinstance(value, Frames)
        return value


def usage(completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


OPTIONS = web.AppKey("options", Options)
COUNTERS = web.AppKey("counters", Counters)
STREAMS = web.AppKey("streams", Streams)
BODIES = web.AppKey("bodies", Bodies)


async def _request_json(request: web.Request) -> dict[str, object]:
    request.app[COUNTERS].requests += 1
    latency = request.app[OPTIONS].latency_ms
    raw = await request.read()
    if latency:
        await asyncio.sleep(latency / 1000)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


async def _stream(request: web.Request, frames: Frames) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    delay = request.app[OPTIONS].chunk_delay_ms / 1000
    streams = request.app[STREAMS]
    sent = Sent(request.transport)
    streams.open.add(sent)
    try:
        for frame in frames:
            sent.writing = True
            await response.write(frame)
            sent.writing = False
            sent.bytes += len(frame)
            if delay:
                await asyncio.sleep(delay)
        await response.write_eof()
        streams.done += 1
    except (ConnectionResetError, asyncio.CancelledError):
        streams.cut += 1
        raise
    finally:
        streams.open.discard(sent)
        streams.done_bytes += sent.bytes
    return response


def _model(data: dict[str, object]) -> str:
    model = data.get("model")
    return model if isinstance(model, str) else "fake-model"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    data = await _request_json(request)
    bodies = request.app[BODIES]
    if data.get("stream"):
        options = data.get("stream_options")
        include = isinstance(options, dict) and bool(options.get("include_usage"))
        limit = data.get("max_completion_tokens", data.get("max_tokens"))
        limit = limit if isinstance(limit, int) and limit > 0 else None
        return await _stream(request, bodies.chat_stream(_model(data), include, limit))
    return web.Response(body=bodies.chat(_model(data)), content_type="application/json")


async def embeddings(request: web.Request) -> web.Response:
    data = await _request_json(request)
    inputs = data.get("input")
    count = (
        len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
    )
    body = request.app[BODIES].embeddings(_model(data), count)
    return web.Response(body=body, content_type="application/json")


async def messages(request: web.Request) -> web.StreamResponse:
    data = await _request_json(request)
    bodies = request.app[BODIES]
    if data.get("stream"):
        return await _stream(request, bodies.message_stream(_model(data)))
    return web.Response(body=bodies.message(_model(data)), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    counters = request.app[COUNTERS]
    body = {"connections": counters.connections, "requests": counters.requests}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def streams(request: web.Request) -> web.Response:
    """The streams: open, done and cut counts, how many open ones are blocked in a write (a
    write returns at once unless the peer stopped reading); per open stream, the bytes
    written (handed to the transport) and the bytes of those still in this process's write
    buffer."""
    found = request.app[STREAMS]
    current = list(found.open)
    body = {
        "open": len(current),
        "blocked": sum(1 for s in current if s.writing),
        "done": found.done,
        "cut": found.cut,
        "done_bytes": found.done_bytes,
        "written": [s.bytes for s in current],
        "buffered": [s.buffered() for s in current],
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def create_app(options: Options) -> web.Application:
    app = web.Application()
    app[OPTIONS] = options
    app[COUNTERS] = Counters()
    app[STREAMS] = Streams()
    app[BODIES] = Bodies(options)
    for prefix in ("", "/v1"):
        app.router.add_post(prefix + "/chat/completions", chat_completions)
        app.router.add_post(prefix + "/embeddings", embeddings)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/stats", stats)
    app.router.add_get("/streams", streams)
    return app


async def serve(host: str, ports: list[int], options: Options) -> None:
    app = create_app(options)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    server = runner.server
    assert server is not None
    counters = app[COUNTERS]

    def protocol() -> asyncio.Protocol:
        counters.connections += 1
        return server()

    loop = asyncio.get_running_loop()
    listeners = []
    for port in ports:
        if options.mss or options.sndbuf:  # accepted connections inherit both
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if options.mss:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, options.mss)
            if options.sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, options.sndbuf)
            sock.bind((host, port))
            listener = await loop.create_server(protocol, sock=sock, backlog=4096)
        else:
            listener = await loop.create_server(
                protocol, host, port, reuse_address=True, backlog=4096
            )
        listeners.append(listener)
        print(f"fake upstream listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for listener in listeners:
            listener.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between chunks")
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument(
        "--chunk-words", type=int, default=1, help="words of content per chunk (6 bytes each)"
    )
    parser.add_argument("--embedding-dim", type=int, default=1536)
    parser.add_argument(
        "--extra-port", type=int, action="append", default=[], help="listen here too (repeat)"
    )
    parser.add_argument(
        "--mss",
        type=int,
        default=0,
        help="TCP maximum segment size, e.g. 1448 as on Ethernet (default: the system's; "
        "loopback's 64 KiB lets the kernel grow its buffers to megabytes)",
    )
    parser.add_argument(
        "--sndbuf",
        type=int,
        default=0,
        help="SO_SNDBUF of its connections in bytes (the kernel doubles it; default: autotuned)",
    )
    args = parser.parse_args()
    options = Options(
        args.latency_ms,
        args.chunk_delay_ms,
        args.chunks,
        args.embedding_dim,
        args.chunk_words,
        args.mss,
        args.sndbuf,
    )
    asyncio.run(serve(args.host, [args.port, *args.extra_port], options))


if __name__ == "__main__":
    main()
