"""What machine and software a run was on, for the head of RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path


def version(argv: Sequence[str]) -> str:
    """The first line a ``--version``-style command prints, or "unavailable"."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unavailable"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    return {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "CPUs": f"{os.cpu_count()} (nproc), model: {cpu_model()}",
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp / orjson / uvloop": f"{_package('aiohttp')} / {_package('orjson')} / {_package('uvloop')}",
        "wrk": version(["wrk", "-v"]),
        "redis-server": version(["redis-server", "--version"]),
    }


def settings_text(settings: Mapping[str, object]) -> dict[str, str]:
    gateway, load = settings.get("gateway_cpus"), settings.get("load_cpus")
    return {
        "pinning": f"gateway under test on CPU {gateway}; load generator, fake upstream, "
        f"Redis and this script on CPU {load}"
        if gateway
        else "none (fewer than 2 CPUs)",
        "per measurement": f"{settings['warmup']} s warm-up, then {settings['duration']} s",
        "fake upstream": "0 ms latency, 50 content chunks per stream, 1536-dim embeddings",
        "servegate settings": "its defaults; no auth file (loopback); `--redis-url` when "
        "redis-server is installed (the exact command is below)",
    }


def servegate_has_workers(env: Mapping[str, str]) -> bool:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "servegate", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in proc.stdout
