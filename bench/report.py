"""RESULTS.md: the machine, one table per scenario, the ratios that are the targets, memory
and startup, the slow streams, and the profile summary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from drivers import LoadResult
from scenarios import SCENARIOS, GatewaySpec, Scenario

FLOOR, DIRECT, ONE, TWO = "bare-proxy", "direct", "servegate-1w", "servegate-2w"
KUBE_ONE = "servegate-1w-kube"  # servegate-1w with --auth kubernetes (bench/fake_kube.py)
TARGET_THROUGHPUT = 0.9  # of the floor's
TARGET_ADDED_P50, TARGET_ADDED_P99 = 0.4, 2.0  # ms at c=1, vs direct
TARGET_IDLE_MIB = 80
TARGET_SLOW_STREAMS, TARGET_SLOW_MIB = 1000, 250  # streams held open, under this RSS
SLOW_TITLE = "## Slow streams"


@dataclass
class Row:
    gateway: str
    scenario: str
    result: LoadResult | None = None
    cpu_ms_per_req: float | None = None
    upstream_conns: int | None = None
    upstream_requests: int | None = None
    ttfb: LoadResult | None = None
    redis_commands_per_req: float | None = None
    kube_reviews: tuple[int, int] | None = None  # (TokenReviews, SubjectAccessReviews) answered
    kube_reviews_all: tuple[int, int] | None = None  # ... with the checked request and warm-up
    error: str | None = None  # why there is no result


@dataclass
class GatewayFacts:
    spec: GatewaySpec
    startup_s: float | None = None
    idle_rss_kib: int | None = None
    peak_rss_kib: int | None = None
    idle_rss_each_kib: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class SlowTick:
    """One sample of the slow-streams run."""

    seconds: float  # since the first connect
    rss_kib: int  # the gateway's
    relaying: int  # streams that have their head and first bytes
    written: int  # bytes the upstream has written, all streams
    read: int  # bytes the clients have read, all streams
    blocked: int  # upstream streams blocked in a write


@dataclass
class SlowStreams:
    """What bench/slow_streams.py measured: many streams held open by slow readers."""

    streams: int  # asked for
    details: dict[str, str] = field(default_factory=dict)  # how it ran, for the bullets
    opened: int = 0  # connections that sent their request
    streaming: int = 0  # answered 200 and still relaying at the end of the hold
    open_s: float | None = None  # from the first connect until every stream was relaying
    held_s: float | None = None  # how long all of them were then held open
    in_flight: float | None = None  # servegate_requests_in_flight at the end of the hold
    gateway_conns: int | None = None  # established connections on the gateway's port
    upstream_conns: int | None = None  # established connections from the gateway upstream
    upstream_open: int | None = None  # streams the upstream was writing
    upstream_done: int | None = None  # written to the end before the clients closed
    upstream_blocked: int | None = None  # open upstream streams blocked in a write
    unblocked_bytes: int | None = None  # per stream, what its pace allows without backpressure
    response_bytes: int = 0  # one whole response, as the upstream writes it
    written: tuple[int, int] | None = None  # per stream, median and max, by the upstream
    read: tuple[int, int] | None = None  # per stream, median and max, by the client
    kernel_bytes: int | None = None  # in the socket queues of both hops, all streams
    kernel_queues: dict[str, int] = field(default_factory=dict)  # the same, by socket
    gateway_bytes: int | None = None  # estimate: written - read - kernel, all streams
    idle_kib: int | None = None
    peak_kib: int | None = None  # VmHWM, summed over the gateway's processes
    end_kib: int | None = None  # at the end of the hold
    closed_kib: int | None = None  # after every stream was closed and in-flight was 0
    closed_s: float | None = None  # from closing until in-flight and the upstream were at 0
    healthy: str | None = None  # after closing: None when healthy, else why not
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why it did not finish
    timeline: list[SlowTick] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return self.streaming >= self.streams

    @property
    def under_target(self) -> bool | None:
        return None if self.peak_kib is None else self.peak_kib / 1024 < TARGET_SLOW_MIB

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.held
            and bool(self.under_target)
            and self.errors == 0
            and self.upstream_done == 0
            and self.healthy is None
        )


@dataclass
class Run:
    machine: dict[str, str]
    settings: dict[str, str]
    gateways: list[GatewayFacts] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str = ""
    gap: str = ""
    """The per-request comparison of servegate's profile with the floor's (chat-c64)."""
    slow: SlowStreams | None = None

    def row(self, gateway: str, scenario: str) -> Row | None:
        return next((r for r in self.rows if r.gateway == gateway and r.scenario == scenario), None)

    def result(self, gateway: str, scenario: str) -> LoadResult | None:
        row = self.row(gateway, scenario)
        return row.result if row else None


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def scenario_table(run: Run, scenario: Scenario) -> list[str]:
    header = ["gateway", "RPS", "p50 ms", "p90 ms", "p99 ms", "errors", "CPU-ms/req"]
    header += ["upstream conns opened"]
    if scenario.stream:
        header += ["TTFB p50 / p90 / p99 ms"]
    rows = []
    for facts in run.gateways:
        row = run.row(facts.spec.name, scenario.key)
        if row is None:
            if not facts.spec.runs(scenario) and facts.spec.only is None:
                why = "n/a: cannot translate" if "anthropic" in scenario.key else "n/a: no limits"
                if scenario.kube_auth:
                    why = "n/a: no Kubernetes auth"
                rows.append([facts.spec.name, why, *[""] * (len(header) - 2)])
            continue
        r = row.result
        if r is None:
            rows.append([facts.spec.name, f"not measured: {row.error}", *[""] * (len(header) - 2)])
            continue
        cells = [facts.spec.name, _f(r.rps, 0), _f(r.p50_ms), _f(r.p90_ms), _f(r.p99_ms)]
        cells += [f"{r.errors} / {r.requests}", _f(row.cpu_ms_per_req, 3)]
        cells += ["-" if row.upstream_conns is None else str(row.upstream_conns)]
        if scenario.stream:
            t = row.ttfb
            cells.append(
                "-"
                if t is None
                else f"{_f(t.ttfb_p50_ms)} / {_f(t.ttfb_p90_ms)} / {_f(t.ttfb_p99_ms)}"
            )
        rows.append(cells)
    lines = _table(header, rows)
    redis = [r for r in run.rows if r.scenario == scenario.key and r.redis_commands_per_req]
    if redis:
        counts = ", ".join(f"{r.gateway} {r.redis_commands_per_req:.2f}" for r in redis)
        lines += [
            "",
            f"Redis round trips per request (commands clients sent, from INFO commandstats; "
            f"what the admission script runs inside Redis is not counted): {counts}.",
        ]
    reviews = [r for r in run.rows if r.scenario == scenario.key and r.kube_reviews]
    if reviews:
        lines += ["", "Reviews the fake Kubernetes API server answered (TokenReviews + "
                  "SubjectAccessReviews): " + "; ".join(_reviews(r) for r in reviews) + "."]  # fmt: skip
    return lines


def _reviews(row: Row) -> str:
    """``row``'s reviews: during the measurement, and in all for its scenario."""
    assert row.kube_reviews is not None
    token, access = row.kube_reviews
    done = row.result.requests if row.result else 0
    per = f"{(token + access) / done:.3f} reviews a request" if done else "-"
    text = f"{row.gateway} {token:,} + {access:,} during the measurement ({done:,} requests, {per})"
    if row.kube_reviews_all is not None:
        token, access = row.kube_reviews_all
        text += (
            f", {token:,} + {access:,} in all for this scenario (its checked request, warm-up "
            "and measurement)"
        )
    return text


def _cpu_delta(a: Row, b: Row) -> float | None:
    if a.cpu_ms_per_req is None or b.cpu_ms_per_req is None:
        return None
    return a.cpu_ms_per_req - b.cpu_ms_per_req


def throughput_lines(run: Run) -> list[str]:
    rows = []
    for key in ("chat-c64", "stream-c16", "embed-c16"):
        floor, direct = run.result(FLOOR, key), run.result(DIRECT, key)
        for name in (ONE, TWO):
            mine = run.result(name, key)
            if mine is None:
                continue
            vs_floor = _ratio(mine.rps, floor.rps if floor else None)
            ok = None if vs_floor is None else vs_floor >= TARGET_THROUGHPUT
            vs_direct = _ratio(mine.rps, direct.rps if direct else None)
            rows.append([key, name, _f(vs_floor) + _mark(ok), _f(vs_direct)])
        if floor and direct:
            rows.append([key, FLOOR, "1.00", _f(_ratio(floor.rps, direct.rps))])
    header = ["scenario", "gateway", f"RPS / bare (target >= {TARGET_THROUGHPUT})", "RPS / direct"]
    return _table(header, rows)


def latency_lines(run: Run) -> list[str]:
    direct = run.result(DIRECT, "chat-c1")
    rows = []
    for facts, key in [(f, s.key) for f in run.gateways for s in SCENARIOS if s.latency_run]:
        mine = run.result(facts.spec.name, key)
        if mine is None or direct is None or facts.spec.kind == "direct":
            continue
        name = facts.spec.name if key == "chat-c1" else f"{facts.spec.name} (`{key}`)"
        p50 = None if mine.p50_ms is None or direct.p50_ms is None else mine.p50_ms - direct.p50_ms
        p99 = None if mine.p99_ms is None or direct.p99_ms is None else mine.p99_ms - direct.p99_ms
        servegate = facts.spec.kind == "servegate"
        ok50 = None if p50 is None or not servegate else p50 <= TARGET_ADDED_P50
        ok99 = None if p99 is None or not servegate else p99 <= TARGET_ADDED_P99
        rows.append([name, _f(p50, 3) + _mark(ok50), _f(p99, 3) + _mark(ok99)])
    header = ["gateway", f"added p50 ms (target <= {TARGET_ADDED_P50})"]
    return _table([*header, f"added p99 ms (target <= {TARGET_ADDED_P99})"], rows)


def scaling_lines(run: Run) -> list[str]:
    rows = []
    for facts in run.gateways:
        if facts.spec.kind != "servegate" or facts.spec.name == ONE:
            continue
        for scenario in SCENARIOS:
            mine, base = run.row(facts.spec.name, scenario.key), run.row(ONE, scenario.key)
            if scenario.latency_run or not (mine and base and mine.result and base.result):
                continue
            rps = _ratio(mine.result.rps, base.result.rps)
            cpu = _ratio(mine.cpu_ms_per_req, base.cpu_ms_per_req)
            rows.append(
                [f"{facts.spec.name} (CPUs {facts.spec.cpus})", scenario.key, _f(rps), _f(cpu)]
            )
    header = ["gateway", "scenario", "RPS / 1 worker", "CPU-ms per req / 1 worker"]
    return _table(header, rows)


def feature_lines(run: Run) -> list[str]:
    rows = []
    for facts in run.gateways:
        name = facts.spec.name
        baselines = facts.spec.baseline_gateway or name
        pairs = [(s.key, s.baseline, baselines) for s in SCENARIOS if s.baseline]
        if facts.spec.kind == "servegate":
            pairs.append(("chat-c64", "chat-c64", FLOOR))
        for key, base_key, base_gateway in pairs:
            assert base_key is not None
            mine, base = run.row(name, key), run.row(base_gateway, base_key)
            if not (mine and base and mine.result and base.result):
                continue
            what = f"{key} vs {base_key}" if base_gateway == name else f"{key} vs {base_gateway}"
            if base_gateway != name and base_key != key:
                what = f"{key} vs {base_key} on {base_gateway}"
            rps = _ratio(mine.result.rps, base.result.rps)
            rows.append([name, what, _f(rps), _f(_cpu_delta(mine, base), 3)])
    lines = _table(["gateway", "comparison", "RPS ratio", "added CPU-ms/req"], rows)
    lines += [
        "",
        "Metrics are always on, so no scenario shows their cost; it is the "
        '`prometheus_client` row of "Where the time goes" below (interpreter time per request).',
    ]
    reviewed = [r for r in run.rows if r.kube_reviews]
    if reviewed:
        lines += [
            "",
            f"`{KUBE_ONE}` is `{ONE}` started with `--auth kubernetes`, its callers "
            "checked by the fake Kubernetes API server (`bench/fake_kube.py`), whose CPU "
            "is not counted. Reviews it answered (TokenReviews + SubjectAccessReviews):",
            "",
        ]
        lines += [f"- `{r.scenario}`: {_reviews(r)}" for r in reviewed]  # fmt: skip
    return lines


def ratio_lines(run: Run) -> list[str]:
    out = ["### Throughput against the floor and the physical limit", "", *throughput_lines(run)]
    out += ["", "### Added latency at concurrency 1 (unary chat, vs direct)", ""]
    out += latency_lines(run)
    out += ["", "### Scaling with worker processes", "", *scaling_lines(run)]
    out += ["", "### What each feature costs (CPU-ms per request on the gateway)", ""]
    return out + feature_lines(run)


def _each(kib: list[int]) -> str:
    if len(kib) < 2:
        return ""
    return f"{len(kib)} processes, idle: " + " + ".join(f"{k / 1024:.0f}" for k in kib) + " MiB"


def memory_lines(run: Run) -> list[str]:
    rows = []
    for facts in run.gateways:
        if facts.spec.kind == "direct":
            continue
        idle = None if facts.idle_rss_kib is None else facts.idle_rss_kib / 1024
        peak = None if facts.peak_rss_kib is None else facts.peak_rss_kib / 1024
        ok = None
        if facts.spec.name == ONE and idle is not None:
            ok = idle < TARGET_IDLE_MIB
        rows.append([f"{facts.spec.name} (CPUs {facts.spec.cpus})",
                     _f(facts.startup_s, 3), _f(idle, 1) + _mark(ok), _f(peak, 1),
                     facts.error or _each(facts.idle_rss_each_kib) or facts.spec.note])  # fmt: skip
    header = ["gateway", "startup s (start → ready)", f"idle RSS MiB (target < {TARGET_IDLE_MIB})"]
    return _table([*header, "peak RSS MiB", "note"], rows)


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f} KiB"


def _pair(values: tuple[int, int] | None) -> str:
    return "-" if values is None else f"{_kib(values[0])} / {_kib(values[1])}"


def slow_lines(slow: SlowStreams) -> list[str]:
    """The "Slow streams" section's body (bench/slow_streams.py)."""
    lines = [f"- **{k}**: {v}" for k, v in slow.details.items()]
    if slow.error:
        lines += ["", f"**This run did not finish**: {slow.error}"]
    n = max(slow.streams, 1)

    def per_stream(total: int | None) -> str:
        return "-" if total is None else f"{total / 1048576:,.1f} MiB, {_kib(total / n)} per stream"

    def mib(kib: int | None) -> str:
        return _f(None if kib is None else kib / 1024, 1)

    held = f"{slow.streaming:,} of {slow.streams:,}" + _mark(slow.held)
    gauge = "-" if slow.in_flight is None else f"{slow.in_flight:,.0f}"
    conns = f"{gauge} / {slow.gateway_conns or 0:,} / {slow.upstream_conns or 0:,}"
    per = None
    if slow.end_kib is not None and slow.idle_kib is not None:
        per = (slow.end_kib - slow.idle_kib) * 1024 / n
    done = "-" if slow.upstream_done is None else str(slow.upstream_done)
    rows = [
        [f"**streams held open** (200, relaying, at the end of the hold; target {TARGET_SLOW_STREAMS:,})",
         f"**{held}**"],
        ["gateway in-flight gauge / its client connections / its upstream connections", conns],
        ["time to open them all (first connect → every stream relaying)", _f(slow.open_s, 1) + " s"],
        ["held open, all of them, for", _f(slow.held_s, 1) + " s"],
        ["RSS idle, before (MiB)", mib(slow.idle_kib)],
        [f"**peak RSS** (VmHWM, MiB; target < {TARGET_SLOW_MIB})",
         f"**{mib(slow.peak_kib)}**" + _mark(slow.under_target)],
        ["RSS at the end of the hold (MiB)", mib(slow.end_kib)],
        ["RSS per stream: (end of hold - idle) / streams", _kib(per)],
        ["RSS after closing them all, in-flight back to 0 (MiB)", mib(slow.closed_kib)],
        ["one whole response (the upstream's frames)", _kib(slow.response_bytes)],
        ["written by the upstream per stream, median / max", _pair(slow.written)],
        ["... which, never held back, it would have written by then (its pace x the time)",
         _kib(slow.unblocked_bytes)],
        ["**upstream streams blocked in a write** (backpressure reached the upstream)",
         f"**{'-' if slow.upstream_blocked is None else f'{slow.upstream_blocked:,}'}**"],
        ["read by the client per stream, median / max", _pair(slow.read)],
        ["in the kernel's socket queues, both hops", per_stream(slow.kernel_bytes)],
        *[[f"- of which in the {name} queues", per_stream(size)]
          for name, size in slow.kernel_queues.items()],
        ["**buffered by the gateway** (estimate: written - read - kernel)",
         f"**{per_stream(slow.gateway_bytes)}**"],
        ["responses the upstream wrote to the end during the hold (must be 0)", done],
        ["errors (non-200, resets, streams that ended early)", str(slow.errors)],
        ["after closing: in-flight and upstream streams at 0 within",
         _f(slow.closed_s, 1) + " s"],
        ["after closing: `/readyz` and one whole stream through the gateway",
         "ok" if slow.healthy is None else slow.healthy],
    ]  # fmt: skip
    lines += ["", *_table(["figure", "value"], rows)]
    if slow.timeline:
        lines += ["", "Over time (from the first connect; the hold ends at the last row):", ""]
        lines += _table(
            ["s", "relaying", "RSS MiB", "upstream wrote MiB", "clients read MiB",
             "upstream blocked"],
            [[f"{t.seconds:.0f}", f"{t.relaying:,}", mib(t.rss_kib),
              _f(t.written / 1048576, 1), _f(t.read / 1048576, 2), f"{t.blocked:,}"]
             for t in _spread(slow.timeline, 3.0)],
        )  # fmt: skip
    if slow.error_samples:
        lines += ["", "Error samples:", ""] + [f"- `{e}`" for e in slow.error_samples[:10]]
    if slow.notes:
        lines += ["", *slow.notes]
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def _spread(ticks: list[SlowTick], step: float) -> list[SlowTick]:
    """Ticks at least ``step`` seconds apart, and the last."""
    kept: list[SlowTick] = []
    for tick in ticks:
        if not kept or tick.seconds - kept[-1].seconds >= step - 0.5 or tick is ticks[-1]:
            kept.append(tick)
    return kept


def splice_slow(text: str, slow: SlowStreams) -> str:
    """``text`` (a RESULTS.md) with its "Slow streams" section replaced by ``slow``'s, or
    the section inserted before "## Scenarios"; every other section is left as it was."""
    section = [SLOW_TITLE, "", *slow_lines(slow), ""]
    lines = text.rstrip("\n").split("\n") if text.strip() else ["# Benchmark results"]
    if SLOW_TITLE in lines:
        start = lines.index(SLOW_TITLE)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
    else:
        start = end = lines.index("## Scenarios") if "## Scenarios" in lines else len(lines)
        if start == len(lines):
            section.insert(0, "")
    return "\n".join([*lines[:start], *section, *lines[end:]]).rstrip() + "\n"


def render(run: Run) -> str:
    lines = ["# Benchmark results", ""]
    lines += ["Generated by `bench/run` (see bench/README.md for what is measured and how to read it).",
              "Absolute numbers vary between runs on a shared machine: **the targets are the ratios "
              "within one run.**", ""]  # fmt: skip
    lines += ["## Machine and run", ""]
    lines += [f"- **{k}**: {v}" for k, v in {**run.machine, **run.settings}.items()]
    if run.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in run.notes]
    lines += ["", "## Ratios (the targets)", "", *ratio_lines(run)]
    lines += ["", "## Startup and memory", "", *memory_lines(run)]
    if run.slow is not None:
        lines += ["", SLOW_TITLE, "", *slow_lines(run.slow)]
    lines += ["", "## Scenarios", ""]
    for scenario in SCENARIOS:
        if not any(r.scenario == scenario.key for r in run.rows):
            continue
        lines += [
            f"### {scenario.title} (`{scenario.key}`)",
            "",
            *scenario_table(run, scenario),
            "",
        ]
    if run.gap:
        lines += ["## Where the time goes: servegate against the floor", "", run.gap, ""]
    if run.profile:
        lines += ["## Profile", "", run.profile]
    return "\n".join(lines).rstrip() + "\n"
