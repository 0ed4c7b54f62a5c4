"""RESULTS.md: the machine, one table per scenario, the ratios that are the targets, memory
and startup, and the profile summary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from drivers import LoadResult
from scenarios import SCENARIOS, GatewaySpec, Scenario

FLOOR, DIRECT, ONE, TWO = "bare-proxy", "direct", "servegate-1w", "servegate-2w"
TARGET_THROUGHPUT = 0.9  # of the floor's
TARGET_ADDED_P50, TARGET_ADDED_P99 = 0.4, 2.0  # ms at c=1, vs direct
TARGET_IDLE_MIB = 80


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
    error: str | None = None  # why there is no result


@dataclass
class GatewayFacts:
    spec: GatewaySpec
    startup_s: float | None = None
    idle_rss_kib: int | None = None
    peak_rss_kib: int | None = None
    idle_rss_each_kib: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass
class Run:
    machine: dict[str, str]
    settings: dict[str, str]
    gateways: list[GatewayFacts] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str = ""

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
    return lines


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
    for facts in run.gateways:
        mine = run.result(facts.spec.name, "chat-c1")
        if mine is None or direct is None or facts.spec.kind == "direct":
            continue
        p50 = None if mine.p50_ms is None or direct.p50_ms is None else mine.p50_ms - direct.p50_ms
        p99 = None if mine.p99_ms is None or direct.p99_ms is None else mine.p99_ms - direct.p99_ms
        servegate = facts.spec.kind == "servegate"
        ok50 = None if p50 is None or not servegate else p50 <= TARGET_ADDED_P50
        ok99 = None if p99 is None or not servegate else p99 <= TARGET_ADDED_P99
        rows.append([facts.spec.name, _f(p50, 3) + _mark(ok50), _f(p99, 3) + _mark(ok99)])
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
        pairs = [(s.key, s.baseline, name) for s in SCENARIOS if s.baseline]
        if facts.spec.kind == "servegate":
            pairs.append(("chat-c64", "chat-c64", FLOOR))
        for key, base_key, base_gateway in pairs:
            assert base_key is not None
            mine, base = run.row(name, key), run.row(base_gateway, base_key)
            if not (mine and base and mine.result and base.result):
                continue
            what = f"{key} vs {base_key}" if base_gateway == name else f"{key} vs {base_gateway}"
            rps = _ratio(mine.result.rps, base.result.rps)
            rows.append([name, what, _f(rps), _f(_cpu_delta(mine, base), 3)])
    return _table(["gateway", "comparison", "RPS ratio", "added CPU-ms/req"], rows)


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
                     facts.error or _each(facts.idle_rss_each_kib)])  # fmt: skip
    header = ["gateway", "startup s (start → ready)", f"idle RSS MiB (target < {TARGET_IDLE_MIB})"]
    return _table([*header, "peak RSS MiB", "note"], rows)


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
    if run.profile:
        lines += ["## Profile", "", run.profile]
    return "\n".join(lines).rstrip() + "\n"
