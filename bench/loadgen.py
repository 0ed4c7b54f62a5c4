"""An async Python load generator: latency percentiles, errors and streaming time to first byte.

A fixed number of concurrent workers, each sending one request after another on its own
kept-alive connection, until the duration is up or the request count is reached. Every
response is read to the end; a non-200 status, a transport error, or a stream that does not
end with ``--expect`` counts as an error. Prints one JSON object:

    python bench/loadgen.py --url http://127.0.0.1:9200/v1/chat/completions \\
        --body '{"model": "m", "messages": [...]}' --concurrency 1 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector


@dataclass(frozen=True)
class Load:
    url: str
    body: bytes
    concurrency: int
    duration_s: float
    max_requests: int | None = None
    stream: bool = False
    expect: bytes = b""
    timeout_s: float = 30.0
    bearer: str | None = None  # sent as "Authorization: Bearer <bearer>"
    fresh_bearer: str | None = None  # ... or "<fresh_bearer><n>", a new token per request


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    started: int = 0

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted in place), or None when empty."""
    if not values:
        return None
    values.sort()
    rank = max(1, min(len(values), round(pct / 100 * len(values) + 0.5)))
    return values[rank - 1]


async def _one(session: ClientSession, load: Load, tally: Tally, number: int) -> None:
    start = time.perf_counter()
    headers = {"Content-Type": "application/json"}
    if load.fresh_bearer is not None:
        headers["Authorization"] = f"Bearer {load.fresh_bearer}{number}"
    elif load.bearer is not None:
        headers["Authorization"] = f"Bearer {load.bearer}"
    async with session.post(load.url, data=load.body, headers=headers) as response:
        first = await response.content.readany()
        ttfb = time.perf_counter() - start
        tail = first
        while chunk := await response.content.readany():
            tail = (tail + chunk)[-64:]
        elapsed = time.perf_counter() - start
    if response.status != 200:
        tally.fail(f"HTTP {response.status}: {first[:200]!r}")
    elif load.expect and load.expect not in tail[-64:]:
        tally.fail(f"response did not end with {load.expect!r}: ...{tail[-64:]!r}")
    else:
        tally.latencies.append(elapsed)
        if load.stream:
            tally.ttfbs.append(ttfb)


async def _worker(session: ClientSession, load: Load, tally: Tally, deadline: float) -> None:
    while time.perf_counter() < deadline:
        if load.max_requests is not None and tally.started >= load.max_requests:
            return
        tally.started += 1
        try:
            await _one(session, load, tally, tally.started)
        except (ClientError, TimeoutError, OSError) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")


async def run(load: Load) -> dict[str, object]:
    """Run ``load`` and return its summary (times in milliseconds)."""
    tally = Tally()
    connector = TCPConnector(limit=load.concurrency, force_close=False)
    timeout = ClientTimeout(total=load.timeout_s)
    async with ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + load.duration_s
        workers = [_worker(session, load, tally, deadline) for _ in range(load.concurrency)]
        await asyncio.gather(*workers)
        wall = time.perf_counter() - start
    ok = len(tally.latencies)

    def ms(values: list[float], pct: float) -> float | None:
        value = percentile(values, pct)
        return None if value is None else round(value * 1000, 3)

    return {
        "requests": ok + tally.errors,
        "ok": ok,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "duration_s": round(wall, 3),
        "rps": round(ok / wall, 1) if wall else 0.0,
        "p50_ms": ms(tally.latencies, 50),
        "p90_ms": ms(tally.latencies, 90),
        "p99_ms": ms(tally.latencies, 99),
        "ttfb_p50_ms": ms(tally.ttfbs, 50),
        "ttfb_p90_ms": ms(tally.ttfbs, 90),
        "ttfb_p99_ms": ms(tally.ttfbs, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="the JSON request body")
    body.add_argument("--body-file", help="a file holding the JSON request body")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (upper bound)")
    parser.add_argument("--requests", type=int, help="stop after this many requests")
    parser.add_argument("--stream", action="store_true", help="record time to first byte")
    parser.add_argument("--expect", default="", help="a stream must end with this text")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--bearer", help="send 'Authorization: Bearer BEARER'")
    auth.add_argument(
        "--fresh-bearer", metavar="PREFIX", help="a new token each request: PREFIX<n>"
    )
    args = parser.parse_args()
    if args.body_file:
        with open(args.body_file, "rb") as handle:
            payload = handle.read()
    else:
        payload = args.body.encode()
    load = Load(
        url=args.url,
        body=payload,
        concurrency=args.concurrency,
        duration_s=args.duration,
        max_requests=args.requests,
        stream=args.stream,
        expect=args.expect.encode(),
        timeout_s=args.timeout,
        bearer=args.bearer,
        fresh_bearer=args.fresh_bearer,
    )
    json.dump(asyncio.run(run(load)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
