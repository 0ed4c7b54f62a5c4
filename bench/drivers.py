"""The two load drivers behind one result type: ``wrk`` (throughput) and bench/loadgen.py
(latency percentiles and streaming time to first byte). Both run as bounded subprocesses
on the caller's CPUs (the suite pins itself to the load CPU)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

# wrk's Lua hook: POST the body from a file, and print a JSON summary at the end
# (latency percentiles are in microseconds).
WRK_LUA = """
local f = assert(io.open("%(body)s", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
%(auth)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "status": %%d, "timeout": %%d, "p50": %%.1f, "p90": %%.1f, '
    .. '"p99": %%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    tool: str
    requests: int  # completed, errors included
    errors: int
    duration_s: float
    rps: float  # successful responses per second
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    ttfb_p50_ms: float | None = None
    ttfb_p90_ms: float | None = None
    ttfb_p99_ms: float | None = None
    error_samples: tuple[str, ...] = ()


# The Authorization header: one token for every request, or a new one for each (a counter
# after a prefix that is new for every run of wrk, so no two runs share a token).
WRK_BEARER = 'wrk.headers["Authorization"] = "Bearer %s"\n'
WRK_FRESH_BEARER = """
local issued = 0
function request()
  issued = issued + 1
  wrk.headers["Authorization"] = "Bearer %s" .. issued
  return wrk.format()
end
"""
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # RFC 6750 b64token: safe in a Lua string


def fresh_prefix(bearer: str) -> str:
    """The prefix of a run's fresh tokens: ``<bearer>.<8 random hex digits>-``."""
    return f"{bearer}.{secrets.token_hex(4)}-"


def _checked(token: str) -> str:
    if not TOKEN_CHARS.fullmatch(token):
        raise ValueError(f"not a bearer token: {token!r}")
    return token


class DriverFailed(RuntimeError):
    """The load generator itself failed (not the requests it sent)."""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    body_file: Path,
    concurrency: int,
    duration_s: float,
    *,
    bearer: str | None = None,
    fresh_tokens: bool = False,
) -> LoadResult:
    """``wrk -t1 -cN -dS`` against ``url``; one thread, since it has one CPU to share.
    ``bearer``: send it as ``Authorization: Bearer``; with ``fresh_tokens``, a new token
    each request (``<bearer>.<random>-<n>``) instead."""
    auth = ""
    if bearer is not None:
        template = WRK_FRESH_BEARER if fresh_tokens else WRK_BEARER
        auth = template % _checked(fresh_prefix(bearer) if fresh_tokens else bearer)
    script = body_file.with_suffix(".lua")
    script.write_text(WRK_LUA % {"body": str(body_file), "auth": auth})
    seconds = max(1, round(duration_s))
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    proc = subprocess.run(
        [*argv, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise DriverFailed(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    data = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    duration = data["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        requests=data["requests"],
        errors=errors,
        duration_s=duration,
        rps=(data["requests"] - data["status"]) / duration if duration else 0.0,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        error_samples=tuple(
            f"{k}: {data[k]}" for k in ("connect", "read", "write", "status", "timeout") if data[k]
        ),
    )


def run_loadgen(
    url: str,
    body_file: Path,
    concurrency: int,
    duration_s: float,
    *,
    stream: bool = False,
    expect: str = "",
    bearer: str | None = None,
    fresh_tokens: bool = False,
) -> LoadResult:
    """bench/loadgen.py in a subprocess of this Python (``bearer`` and ``fresh_tokens`` as
    for :func:`run_wrk`)."""
    argv = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body-file", str(body_file)]
    argv += ["--concurrency", str(concurrency), "--duration", str(duration_s)]
    if bearer is not None and fresh_tokens:
        argv += ["--fresh-bearer", fresh_prefix(bearer)]
    elif bearer is not None:
        argv += ["--bearer", bearer]
    if stream:
        argv.append("--stream")
    if expect:
        argv += ["--expect", expect]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 90)
    if proc.returncode != 0:
        raise DriverFailed(f"loadgen failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout)
    return LoadResult(
        tool="loadgen",
        requests=data["requests"],
        errors=data["errors"],
        duration_s=data["duration_s"],
        rps=data["rps"],
        p50_ms=data["p50_ms"],
        p90_ms=data["p90_ms"],
        p99_ms=data["p99_ms"],
        ttfb_p50_ms=data["ttfb_p50_ms"],
        ttfb_p90_ms=data["ttfb_p90_ms"],
        ttfb_p99_ms=data["ttfb_p99_ms"],
        error_samples=tuple(data["error_samples"]),
    )
