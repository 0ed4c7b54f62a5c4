"""A fast fake LLM upstream for the benchmark: OpenAI chat/embeddings and Anthropic Messages.

Plain aiohttp with pre-encoded bodies and no validation, so that it costs far less CPU per
request than any gateway in front of it. It counts the TCP connections it accepts, so a
gateway that pools its upstream connections can be told from one that does not:
``GET /stats`` → ``{"connections": n, "requests": m}``.

    python bench/fake_upstream.py --port 9100 [--latency-ms 0] [--chunks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
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


@dataclass
class Counters:
    connections: int = 0
    requests: int = 0


@dataclass
class Bodies:
    """Response bodies, encoded once per (kind, model, variant) and reused."""

    options: Options
    cache: dict[tuple[str, str, int], bytes | list[bytes]] = field(default_factory=dict)

    def chat(self, model: str) -> bytes:
        key = ("chat", model, 0)
        if key not in self.cache:
            n = self.options.chunks
            message = {"role": "assistant", "content": WORD * n, "refusal": None}
            self.cache[key] = orjson.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED,
                "model": model, "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "stop"}],
                "usage": usage(n),
            })  # fmt: skip
        return self._bytes(key)

    def chat_stream(self, model: str, include_usage: bool) -> list[bytes]:
        key = ("chat-stream", model, int(include_usage))
        if key not in self.cache:
            base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                    "created": CREATED, "model": model, "system_fingerprint": "fp_bench"}  # fmt: skip

            def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return sse(orjson.dumps({**base, "choices": [choice]}))

            frames = [chunk({"role": "assistant", "content": ""})]
            frames += [chunk({"content": WORD}) for _ in range(self.options.chunks)]
            frames.append(chunk({}, "stop"))
            if include_usage:
                frames.append(
                    sse(orjson.dumps({**base, "choices": [], "usage": usage(self.options.chunks)}))
                )
            frames.append(b"data: [DONE]\n\n")
            self.cache[key] = frames
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
                "content": [{"type": "text", "text": WORD * n}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": n},
            })  # fmt: skip
        return self._bytes(key)

    def message_stream(self, model: str) -> list[bytes]:
        key = ("message-stream", model, 0)
        if key not in self.cache:
            n = self.options.chunks
            start: dict[str, object] = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model,
                     "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}  # fmt: skip
            delta = {"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": WORD}}  # fmt: skip
            frames = [
                event("message_start", {"type": "message_start", "message": start}),
                event("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}}),
                event("ping", {"type": "ping"}),
                *[event("content_block_delta", delta) for _ in range(n)],
                event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": n}}),
                event("message_stop", {"type": "message_stop"}),
            ]  # fmt: skip
            self.cache[key] = frames
        return self._frames(key)

    def _bytes(self, key: tuple[str, str, int]) -> bytes:
        value = self.cache[key]
        assert isinstance(value, bytes)
        return value

    def _frames(self, key: tuple[str, str, int]) -> list[bytes]:
        value = self.cache[key]
        assert isinstance(value, list)
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


async def _stream(request: web.Request, frames: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    delay = request.app[OPTIONS].chunk_delay_ms / 1000
    for frame in frames:
        await response.write(frame)
        if delay:
            await asyncio.sleep(delay)
    await response.write_eof()
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
        return await _stream(request, bodies.chat_stream(_model(data), include))
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


def create_app(options: Options) -> web.Application:
    app = web.Application()
    app[OPTIONS] = options
    app[COUNTERS] = Counters()
    app[BODIES] = Bodies(options)
    for prefix in ("", "/v1"):
        app.router.add_post(prefix + "/chat/completions", chat_completions)
        app.router.add_post(prefix + "/embeddings", embeddings)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/stats", stats)
    return app


async def serve(host: str, port: int, options: Options) -> None:
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
    listener = await loop.create_server(protocol, host, port, reuse_address=True, backlog=1024)
    print(f"fake upstream listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        listener.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between chunks")
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument("--embedding-dim", type=int, default=1536)
    args = parser.parse_args()
    options = Options(args.latency_ms, args.chunk_delay_ms, args.chunks, args.embedding_dim)
    asyncio.run(serve(args.host, args.port, options))


if __name__ == "__main__":
    main()
