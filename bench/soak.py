"""A bounded soak: servegate under mixed load for N minutes, its RSS sampled throughout.

Started by ``bench/run --soak [--soak-minutes N]`` (10 minutes by default; not in CI).
servegate is started as the suite starts it (the same frozen copy of its source, the same
fake upstream, Redis and flags, pinned to CPU 0; the load and the upstream on CPU 1). After
a warm-up, unary chat, governed chat, streamed chat and embeddings run side by side at
moderate concurrency, in chunks (new connections each chunk), while the RSS of every
process of the gateway (VmRSS from /proc/<pid>/status, summed) is sampled every few
seconds. Writes bench/SOAK.md: RSS at the start and end of the soak, its maximum and
growth, the requests served and their errors, and the verdict: growth over 5 % after the
warm-up is a bug. Exits 1 on that verdict, on errors, or when the run did not finish.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import drivers
import machine
import snapshot
from drivers import DriverFailed, LoadResult
from gateway_config import CHAT, EMBED, GOVERNED
from procs import Proc, ProcessFailed, enter_main, rss_by_pid_kib, rss_kib
from report import GatewayFacts, Run
from scenarios import GatewaySpec, chat
from suite import Bench, Env, Settings, smoke, start_services

HERE = Path(__file__).resolve().parent
THRESHOLD_PCT = 5.0  # RSS growth after the warm-up that counts as a leak
DEFAULT_MINUTES = 10.0
Phase = Literal["warm-up", "soak"]


@dataclass(frozen=True)
class Part:
    """One stream of the mixed load, run for the whole soak."""

    key: str
    title: str
    path: str
    body: dict[str, Any]
    concurrency: int
    stream: bool = False


MIX: tuple[Part, ...] = (
    Part("chat", "unary chat (OpenAI, passthrough)", "/v1/chat/completions", chat(CHAT), 8),
    Part(
        "chat-governed",
        "unary chat with usage tracking and PII masking",
        "/v1/chat/completions",
        chat(GOVERNED),
        4,
    ),
    Part(
        "stream",
        "streamed chat, 50 chunks",
        "/v1/chat/completions",
        chat(CHAT, stream=True),
        4,
        stream=True,
    ),
    Part(
        "embed",
        "embeddings, 1 input, 1536 dimensions",
        "/v1/embeddings",
        {"model": EMBED, "input": "The quick brown fox jumps over the lazy dog."},
        4,
    ),
)


@dataclass(frozen=True)
class SoakSettings:
    minutes: float
    warmup_minutes: float
    sample_seconds: float
    chunk_seconds: float
    workers: int
    output: Path
    servegate_ref: str | None
    use_wrk: bool
    gateway_cpus: str | None
    load_cpus: str | None


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the warm-up started
    phase: Phase
    rss_kib: int  # summed over every process of the gateway
    each_kib: dict[int, int]  # pid -> VmRSS


@dataclass
class Tally:
    """What one part of the mix did in one phase, summed over its chunks."""

    requests: int = 0  # completed, errors included
    errors: int = 0
    seconds: float = 0.0
    chunks: int = 0
    driver: str = ""
    error_samples: list[str] = field(default_factory=list)

    def add(self, result: LoadResult) -> None:
        self.requests += result.requests
        self.errors += result.errors
        self.seconds += result.duration_s
        self.chunks += 1
        self.driver = result.tool
        for sample in result.error_samples:
            if len(self.error_samples) < 5:
                self.error_samples.append(sample)

    def fail(self, why: str) -> None:
        """A chunk whose driver failed: counted as one error, its requests unknown."""
        self.errors += 1
        self.chunks += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why)


@dataclass
class Soak:
    settings: SoakSettings
    machine: dict[str, str]
    details: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    tallies: dict[tuple[Phase, str], Tally] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)  # pid -> what the process is
    startup_s: float | None = None
    idle_before_kib: int | None = None
    idle_after_kib: int | None = None
    soak_started: float | None = None  # Sample.seconds at which the soak (not warm-up) began
    finished: bool = False

    def tally(self, phase: Phase, part: Part) -> Tally:
        return self.tallies.setdefault((phase, part.key), Tally())


def parse_args(argv: list[str] | None = None) -> SoakSettings:
    parser = argparse.ArgumentParser(
        prog="bench/run --soak", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help=f"minutes of load after the warm-up (default {DEFAULT_MINUTES:g})",
    )
    parser.add_argument(
        "--warmup-minutes", type=float, default=1.0, help="minutes of warm-up (default 1)"
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=5.0, help="seconds between RSS samples"
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=30.0,
        help="each load generator runs this long, then reconnects (default 30)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="servegate --workers (default 2, both on CPU 0)"
    )
    parser.add_argument("--output", type=Path, default=HERE / "SOAK.md")
    parser.add_argument(
        "--servegate-ref",
        help="soak this git commit or branch of servegate (default: the working tree)",
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="drive every part with bench/loadgen.py"
    )
    args = parser.parse_args(argv)
    if args.soak_minutes <= 0 or args.warmup_minutes < 0:
        parser.error("--soak-minutes must be positive and --warmup-minutes not negative")
    if args.sample_seconds < 0.5 or args.chunk_seconds < 2 or args.workers < 1:
        parser.error("--sample-seconds >= 0.5, --chunk-seconds >= 2 and --workers >= 1")
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    return SoakSettings(
        minutes=args.soak_minutes,
        warmup_minutes=args.warmup_minutes,
        sample_seconds=args.sample_seconds,
        chunk_seconds=args.chunk_seconds,
        workers=args.workers,
        output=args.output,
        servegate_ref=args.servegate_ref,
        use_wrk=not args.no_wrk,
        gateway_cpus="0" if two_cpus else None,
        load_cpus="1" if two_cpus else None,
    )


def role(pid: int, root: int) -> str:
    """What a process of the gateway is, from its command line."""
    if pid == root:
        return "main process"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "resource_tracker" in cmdline:
        return "multiprocessing resource tracker"
    if "multiprocessing" in cmdline:
        return "worker"
    return "child"


def body_bytes(part: Part) -> bytes:
    return json.dumps(part.body).encode()


class Soaker:
    def __init__(self, soak: Soak, env: Env, proc: Proc, base: str) -> None:
        self.soak, self.env, self.proc, self.base = soak, env, proc, base
        self.started = time.monotonic()
        self.next_sample = self.started
        self.bodies: dict[str, Path] = {}
        for part in MIX:
            path = env.tmp / f"soak-{part.key}.json"
            path.write_bytes(body_bytes(part))
            self.bodies[part.key] = path

    def sample(self, phase: Phase) -> None:
        self.proc.check_alive()
        each = rss_by_pid_kib(self.proc.pid)
        for pid in each:
            self.soak.roles.setdefault(pid, role(pid, self.proc.pid))
        seconds = time.monotonic() - self.started
        self.soak.samples.append(Sample(seconds, phase, sum(each.values()), each))

    def drive(self, part: Part, seconds: float) -> LoadResult:
        url, body = self.base + part.path, self.bodies[part.key]
        if part.stream or not self.env.wrk:
            expect = "[DONE]" if part.stream else ""
            return drivers.run_loadgen(url, body, part.concurrency, seconds, expect=expect)
        return drivers.run_wrk(url, body, part.concurrency, seconds)

    def chunk(self, phase: Phase, seconds: float) -> None:
        """Every part of the mix for ``seconds``, side by side; RSS sampled meanwhile."""
        pool = concurrent.futures.ThreadPoolExecutor(len(MIX))
        try:
            futures = {pool.submit(self.drive, part, seconds): part for part in MIX}
            pending = set(futures)
            while pending:
                if time.monotonic() >= self.next_sample:
                    self.sample(phase)
                    self.next_sample += self.soak.settings.sample_seconds
                timeout = max(0.0, self.next_sample - time.monotonic())
                _, pending = concurrent.futures.wait(pending, timeout=timeout)
        finally:
            # On an error or Ctrl-C, go on to stop the gateway at once: the load generators
            # then fail fast and end within their own time bound.
            pool.shutdown(wait=False, cancel_futures=True)
        for future, part in futures.items():
            try:
                self.soak.tally(phase, part).add(future.result())
            except (DriverFailed, subprocess.TimeoutExpired, OSError) as exc:
                self.soak.tally(phase, part).fail(f"{type(exc).__name__}: {str(exc)[:300]}")

    def phase(self, phase: Phase, minutes: float) -> None:
        deadline = time.monotonic() + minutes * 60
        if phase == "soak":
            self.soak.soak_started = time.monotonic() - self.started
            self.sample(phase)  # the start of the soak, exactly at the end of the warm-up
            self.next_sample = time.monotonic() + self.soak.settings.sample_seconds
        while (left := deadline - time.monotonic()) >= 2.0:
            length = min(self.soak.settings.chunk_seconds, left)
            print(f"bench: soak {phase}, {left / 60:.1f} min left", flush=True)
            self.chunk(phase, length)
        if phase == "soak":
            self.sample(phase)  # the end of the soak, right after its last chunk


# ------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figures:
    start_kib: float  # median of the samples in the first window of the soak
    end_kib: float  # median of the samples in the last window
    first_kib: int  # the sample taken when the soak began
    last_kib: int  # the sample taken when it ended
    max_kib: int
    min_kib: int
    growth_pct: float
    slope_kib_per_min: float
    window_s: float
    samples: int

    @property
    def leak(self) -> bool:
        return self.growth_pct > THRESHOLD_PCT


def figures(soak: Soak) -> Figures | None:
    """The verdict's numbers, from the samples of the soak (the warm-up excluded).

    Start and end are medians over a window (30 s, or a quarter of a short soak) at each
    end, so that one sample taken while many responses were in flight does not decide."""
    samples = [s for s in soak.samples if s.phase == "soak"]
    if len(samples) < 2 or soak.soak_started is None:
        return None
    t0, t1 = samples[0].seconds, samples[-1].seconds
    window = min(30.0, (t1 - t0) / 4)
    head = [s.rss_kib for s in samples if s.seconds <= t0 + window]
    tail = [s.rss_kib for s in samples if s.seconds >= t1 - window]
    start, end = statistics.median(head), statistics.median(tail)
    minutes = [(s.seconds - t0) / 60 for s in samples]
    rss = [float(s.rss_kib) for s in samples]
    slope = statistics.linear_regression(minutes, rss).slope if len(set(minutes)) > 1 else 0.0
    return Figures(
        start_kib=start,
        end_kib=end,
        first_kib=samples[0].rss_kib,
        last_kib=samples[-1].rss_kib,
        max_kib=max(s.rss_kib for s in samples),
        min_kib=min(s.rss_kib for s in samples),
        growth_pct=(end - start) / start * 100 if start else 0.0,
        slope_kib_per_min=slope,
        window_s=window,
        samples=len(samples),
    )


def errors(soak: Soak, phase: Phase) -> int:
    return sum(t.errors for (p, _), t in soak.tallies.items() if p == phase)


def passed(soak: Soak) -> bool:
    found = figures(soak)
    return soak.finished and found is not None and not found.leak and errors(soak, "soak") == 0


# -------------------------------------------------------------------------------- SOAK.md


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def verdict_lines(soak: Soak, found: Figures | None) -> list[str]:
    settings = soak.settings
    short = settings.minutes < DEFAULT_MINUTES
    lines: list[str] = []
    if not soak.finished:
        lines.append("**This run did not finish**: partial results, no verdict.")
    elif found is None:
        lines.append("**No verdict**: too few samples after the warm-up.")
    else:
        word = "FAIL: a leak (growth over 5 % after the warm-up is a bug)" if found.leak else "PASS"
        lines.append(
            f"**Verdict: {word}.** RSS of the gateway's processes went from "
            f"{_mib(found.start_kib)} MiB to {_mib(found.end_kib)} MiB over the "
            f"{settings.minutes:g}-minute soak after a {settings.warmup_minutes:g}-minute "
            f"warm-up: {found.growth_pct:+.2f} % (threshold +{THRESHOLD_PCT:g} %)."
        )
        failed = errors(soak, "soak")
        if failed:
            plural = "s" if failed != 1 else ""
            lines += ["", f"**{failed} request error{plural} during the soak**: see Load."]
    if short:
        lines += [""]
        lines.append(
            f"This was a **short run** ({settings.minutes:g} minutes, `--soak-minutes "
            f"{settings.minutes:g}`): it shows the soak works, and bounds fast growth only. "
            f"The soak proper is {DEFAULT_MINUTES:g} minutes (`bench/run --soak`)."
        )
    return lines


def memory_lines(soak: Soak, found: Figures | None) -> list[str]:
    if found is None:
        return ["No figures: the soak took fewer than 2 samples."]
    window = f"{found.window_s:.0f} s"
    rows = [
        ["idle, after start-up, before any request", _mib(soak.idle_before_kib)],
        [f"**start of the soak** (median of its first {window})", f"**{_mib(found.start_kib)}**"],
        [f"**end of the soak** (median of its last {window})", f"**{_mib(found.end_kib)}**"],
        ["**growth**, end vs start", f"**{found.growth_pct:+.2f} %**"],
        ["first / last sample of the soak", f"{_mib(found.first_kib)} / {_mib(found.last_kib)}"],
        ["min / max during the soak", f"{_mib(found.min_kib)} / {_mib(found.max_kib)}"],
        ["trend (least squares over the soak's samples)", f"{found.slope_kib_per_min:+,.0f} KiB/min"],
        ["idle, 5 s after the load stopped", _mib(soak.idle_after_kib)],
    ]  # fmt: skip
    lines = _table(["RSS, all processes of the gateway", "MiB"], rows)
    lines += ["", f"{found.samples} samples during the soak, one every "
              f"{soak.settings.sample_seconds:g} s; all samples (warm-up included) are in "
              "`bench/out/soak-samples.csv` (not committed)."]  # fmt: skip
    soak_samples = [s for s in soak.samples if s.phase == "soak"]
    first, last = soak_samples[0], soak_samples[-1]
    rows = [
        [str(pid), soak.roles.get(pid, "?"), _mib(first.each_kib.get(pid)),
         _mib(last.each_kib.get(pid))]
        for pid in sorted(set(first.each_kib) | set(last.each_kib))
    ]  # fmt: skip
    lines += ["", "Per process (first and last sample of the soak):", ""]
    return lines + _table(["pid", "process", "start MiB", "end MiB"], rows)


def timeline_lines(soak: Soak) -> list[str]:
    """One row every 30 s (or every sample, if they are sparser)."""
    step = max(30.0, soak.settings.sample_seconds)
    rows, mark = [], -step
    for s in soak.samples:
        if s.seconds - mark >= step - 0.5 or s is soak.samples[-1]:
            rows.append([f"{s.seconds:.0f}", s.phase, _mib(s.rss_kib)])
            mark = s.seconds
    return _table(["s since the warm-up began", "phase", "RSS MiB"], rows)


def load_lines(soak: Soak) -> list[str]:
    rows = []
    for phase in ("warm-up", "soak"):
        for part in MIX:
            tally = soak.tallies.get((phase, part.key))
            if tally is None:
                continue
            ok = tally.requests - tally.errors
            rps = ok / tally.seconds if tally.seconds else 0.0
            rows.append([phase, f"{part.title} (`{part.path}`, `{part.body['model']}`)",
                         str(part.concurrency), tally.driver or "-", f"{tally.requests:,}",
                         str(tally.errors), f"{rps:,.0f}"])  # fmt: skip
    lines = _table(["phase", "part", "c", "driver", "requests", "errors", "RPS"], rows)
    served = sum(t.requests - t.errors for (phase, _), t in soak.tallies.items() if phase == "soak")
    lines += [
        "",
        f"**Requests served during the soak: {served:,}; errors: {errors(soak, 'soak')}.**",
    ]
    samples = [
        f"{phase} {key}: {why}"
        for (phase, key), tally in soak.tallies.items()
        for why in tally.error_samples
    ]
    if samples:
        lines += ["", "Error samples:", ""] + [f"- `{s}`" for s in samples[:10]]
    return lines


def render(soak: Soak) -> str:
    found = figures(soak)
    settings = soak.settings
    lines = ["# Soak results", ""]
    lines += ['Generated by `bench/run --soak` (see bench/README.md, "Soak"). Not part of CI.', ""]
    lines += verdict_lines(soak, found)
    lines += ["", "## Machine and run", ""]
    run = {
        **soak.machine,
        "pinning": f"servegate on CPU {settings.gateway_cpus}; load generators, fake upstream, "
        f"Redis and this script on CPU {settings.load_cpus}"
        if settings.gateway_cpus
        else "none (fewer than 2 CPUs)",
        "phases": f"{settings.warmup_minutes:g} min warm-up, then {settings.minutes:g} min soak; "
        f"load in chunks of {settings.chunk_seconds:g} s (new connections each chunk); "
        f"RSS sampled every {settings.sample_seconds:g} s",
        "startup s (start → ready)": "-" if soak.startup_s is None else f"{soak.startup_s:.3f}",
        **soak.details,
    }
    lines += [f"- **{k}**: {v}" for k, v in run.items()]
    if soak.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in soak.notes]
    lines += ["", "## Memory", "", *memory_lines(soak, found)]
    lines += ["", "## Load", "", *load_lines(soak)]
    lines += ["", "## RSS over time", "", *timeline_lines(soak)]
    return "\n".join(lines).rstrip() + "\n"


def write_samples(soak: Soak, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["seconds,phase,rss_kib,per_process_kib"]
    for s in soak.samples:
        each = " ".join(f"{pid}:{kib}" for pid, kib in sorted(s.each_kib.items()))
        lines.append(f"{s.seconds:.1f},{s.phase},{s.rss_kib},{each}")
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------- main


def run_soak(soak: Soak, tmp: Path, stack: ExitStack) -> None:
    settings = soak.settings
    suite_settings = Settings.one_gateway(
        duration=settings.chunk_seconds,
        output=settings.output,
        gateway_cpus=settings.gateway_cpus,
        load_cpus=settings.load_cpus,
        servegate_ref=settings.servegate_ref,
        use_wrk=settings.use_wrk,
    )
    run = Run(machine={}, settings={})
    env = start_services(suite_settings, tmp, stack, run)
    soak.notes += run.notes
    soak.details["servegate"] = run.machine["servegate"]
    soak.details["event loop"] = run.settings["event loop"].replace(" and for the bare proxy", "")
    workers = settings.workers if env.workers_flag else 1
    if workers != settings.workers:
        soak.notes.append("`servegate serve` has no `--workers` option: one process.")
    spec = GatewaySpec(f"servegate-{workers}w", "servegate", workers, settings.gateway_cpus)
    facts = GatewayFacts(spec)
    proc, base = Bench(suite_settings, env, run, stack).start(spec, facts)
    assert proc is not None
    soak.startup_s, soak.idle_before_kib = facts.startup_s, facts.idle_rss_kib
    soak.details["servegate command"] = run.settings["servegate command"]
    soak.details["load mix"] = "; ".join(
        f"{p.title} at c={p.concurrency} ({'loadgen.py' if p.stream or not env.wrk else 'wrk'})"
        for p in MIX
    )
    for part in MIX:
        why = smoke(base + part.path, body_bytes(part), part.stream)
        if why:
            raise ProcessFailed(f"{part.key}: the first request failed: {why}")
    soaker = Soaker(soak, env, proc, base)
    if settings.warmup_minutes > 0:
        soaker.phase("warm-up", settings.warmup_minutes)
    soaker.phase("soak", settings.minutes)
    time.sleep(5.0)
    proc.check_alive()
    soak.idle_after_kib = rss_kib(proc.pid)[0]
    soak.finished = True


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    enter_main(settings.load_cpus)
    soak = Soak(settings=settings, machine=machine.describe())
    if not settings.gateway_cpus:
        soak.notes.append("fewer than 2 CPUs available: nothing was pinned.")
    try:
        with tempfile.TemporaryDirectory(prefix="servegate-soak-") as tmp, ExitStack() as stack:
            run_soak(soak, Path(tmp), stack)
    except (ProcessFailed, snapshot.SnapshotFailed, OSError):
        traceback.print_exc()
    finally:
        target = settings.output if soak.finished else HERE / "out" / "SOAK.partial.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(soak))
        write_samples(soak, HERE / "out" / "soak-samples.csv")
        print(f"bench: wrote {target}", flush=True)
        found = figures(soak)
        if found is not None:
            print(
                f"bench: soak RSS {_mib(found.start_kib)} -> {_mib(found.end_kib)} MiB "
                f"({found.growth_pct:+.2f} %, threshold +{THRESHOLD_PCT:g} %), "
                f"{errors(soak, 'soak')} errors",
                flush=True,
            )
    return 0 if passed(soak) else 1


if __name__ == "__main__":
    sys.exit(main())
