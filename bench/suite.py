"""Run every gateway x scenario and write bench/RESULTS.md. Started by ``bench/run``.

Layout on a machine with 2+ CPUs: the gateway under test on CPU 0 (``taskset -c 0``);
this script, the load generators, the fake upstream and Redis on CPU 1. Every process is
started in its own process group and stopped (SIGTERM, then SIGKILL) on the way out, also
on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import drivers
import fake_kube
import machine
import profiling
import snapshot
from drivers import DriverFailed, LoadResult
from gateway_config import GatewayConfig, write_config
from procs import (
    Proc,
    ProcessFailed,
    cpu_seconds,
    cpu_split,
    enter_main,
    free_port,
    redis_commands,
    rss_each_kib,
    rss_kib,
)
from report import KUBE_ONE, ONE, GatewayFacts, Row, Run, render
from scenarios import KUBE_AUTH, SCENARIOS, GatewaySpec, Scenario

HERE = Path(__file__).resolve().parent
CHUNKS = 50
PROFILED = ("chat-c64", "stream-c16", "limited-c64")
KUBE_LATENCY_MS = 1.0  # the fake Kubernetes API server's time to answer a review


@dataclass(frozen=True)
class Settings:
    duration: float
    warmup: float
    profile_seconds: float
    output: Path
    spread: bool
    gateway_cpus: str | None
    load_cpus: str | None
    servegate_ref: str | None
    use_wrk: bool
    slow_hold: float = 0.0  # seconds the 1,000 slow streams are held (slow_streams.py); 0: skip

    @classmethod
    def one_gateway(
        cls,
        *,
        duration: float,
        output: Path,
        gateway_cpus: str | None,
        load_cpus: str | None,
        servegate_ref: str | None,
        use_wrk: bool,
    ) -> Settings:
        """For the long runs outside the suite's scenarios (slow_streams.py, soak.py): one
        gateway, no warm-up, no profile, no spreading over CPUs."""
        return cls(
            duration=duration,
            warmup=0.0,
            profile_seconds=0.0,
            output=output,
            spread=False,
            gateway_cpus=gateway_cpus,
            load_cpus=load_cpus,
            servegate_ref=servegate_ref,
            use_wrk=use_wrk,
        )


@dataclass
class Env:
    """What the scenarios run against: the temp dir, the upstream and Redis."""

    tmp: Path
    upstream: str
    config: GatewayConfig
    redis_url: str | None
    redis_port: int | None
    servegate_env: dict[str, str]
    uvloop: bool  # servegate runs on uvloop, so the bare proxy does too
    workers_flag: bool
    wrk: bool
    kube_url: str = ""  # the fake Kubernetes API server (bench/fake_kube.py), if started
    kubeconfig: Path | None = None  # ... and the gateway's kubeconfig for it


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s each, 0.5 s warm-up")
    parser.add_argument(
        "--profile-seconds", type=float, help="py-spy profile length (default: --duration; 0: off)"
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--servegate-ref",
        help="benchmark this git commit or branch of servegate (default: the working tree)",
    )
    parser.add_argument(
        "--no-wrk",
        action="store_true",
        help="measure throughput with bench/loadgen.py even where wrk is installed",
    )
    parser.add_argument(
        "--no-spread", action="store_true", help="skip the 2-worker run spread over CPUs 0 and 1"
    )
    parser.add_argument(
        "--no-slow-streams",
        action="store_true",
        help="skip the 1,000 slow streams at the end (about 35 s; bench/run --slow-streams "
        "runs them alone)",
    )
    args = parser.parse_args()
    duration, warmup = (2.0, 0.5) if args.quick else (args.duration, args.warmup)
    profile = duration if args.profile_seconds is None else args.profile_seconds
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    return Settings(
        duration=duration,
        warmup=warmup,
        profile_seconds=profile,
        output=args.output,
        spread=two_cpus and not args.no_spread,
        gateway_cpus="0" if two_cpus else None,
        load_cpus="1" if two_cpus else None,
        servegate_ref=args.servegate_ref,
        use_wrk=not args.no_wrk,
        slow_hold=0.0 if args.no_slow_streams else 5.0 if args.quick else 20.0,
    )


def upstream_stats(env: Env) -> dict[str, int]:
    with urllib.request.urlopen(env.upstream + "/stats", timeout=5) as response:
        data: dict[str, int] = json.load(response)
        return data


def kube_reviews(env: Env) -> tuple[int, int]:
    """(TokenReviews, SubjectAccessReviews) the fake Kubernetes API server has answered."""
    with urllib.request.urlopen(env.kube_url + "/_counts", timeout=5) as response:
        data: dict[str, int] = json.load(response)
    return data["tokenreviews"], data["subjectaccessreviews"]


def smoke(url: str, body: bytes, stream: bool, bearer: str | None = None) -> str | None:
    """One request: None if it answered 200 (and a stream ended with [DONE]), else why not."""
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:200]!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if stream and b"[DONE]" not in text[-64:]:
        return f"stream did not end with [DONE]: {text[-120:]!r}"
    return None


class Bench:
    def __init__(self, settings: Settings, env: Env, run: Run, stack: ExitStack) -> None:
        self.settings, self.env, self.run, self.stack = settings, env, run, stack
        self.floor: dict[str, float] | None = None
        """The bare proxy's GIL time per request by package, under GAP_SCENARIO."""

    def body_file(self, scenario: Scenario) -> Path:
        path = self.env.tmp / f"{scenario.key}.json"
        if not path.exists():
            path.write_bytes(json.dumps(scenario.body).encode())
        return path

    def drive(self, scenario: Scenario, url: str, seconds: float) -> LoadResult:
        body = self.body_file(scenario)
        bearer, fresh = scenario.bearer, scenario.fresh_tokens
        if scenario.latency_run or not self.env.wrk:
            expect = "[DONE]" if scenario.stream else ""
            return drivers.run_loadgen(
                url, body, scenario.concurrency, seconds,
                expect=expect, bearer=bearer, fresh_tokens=fresh,
            )  # fmt: skip
        return drivers.run_wrk(
            url, body, scenario.concurrency, seconds, bearer=bearer, fresh_tokens=fresh
        )

    def start(self, spec: GatewaySpec, facts: GatewayFacts) -> tuple[Proc | None, str]:
        if spec.kind == "direct":
            return None, self.env.upstream
        port = free_port()
        log = self.env.tmp / f"{spec.name}.log"
        if spec.kind == "bare":
            argv = [sys.executable, str(HERE / "bare_proxy.py"), "--port", str(port)]
            argv += ["--uvloop"] if self.env.uvloop else []
            proc = Proc(spec.name, [*argv, "--upstream", self.env.upstream], log, spec.cpus)
            self.stack.callback(proc.stop)
            facts.startup_s = proc.wait_port(port)
        else:
            config = self.env.config
            argv = [sys.executable, "-m", "servegate", "serve", str(config.manifests)]
            argv += ["--secrets-dir", str(config.secrets), "--port", str(port)]
            if self.env.workers_flag:
                argv += ["--workers", str(spec.workers)]
            if self.env.redis_url:
                argv += ["--redis-url", self.env.redis_url]
            if spec.auth == "kubernetes":
                if self.env.kubeconfig is None:
                    raise ProcessFailed("no fake Kubernetes API server for --auth kubernetes")
                argv += ["--auth", "kubernetes", "--kubeconfig", str(self.env.kubeconfig)]
                argv += ["--auth-audience", fake_kube.AUDIENCE]
                argv += ["--auth-namespace", fake_kube.NAMESPACE]
            shown = " ".join(argv[1:]).replace(str(self.env.tmp), "$TMP")
            what = "servegate command" + (", Kubernetes auth" if spec.auth == "kubernetes" else "")
            self.run.settings.setdefault(what, f"`python {shown}`")
            proc = Proc(spec.name, argv, log, spec.cpus, env=self.env.servegate_env)
            self.stack.callback(proc.stop)
            url = f"http://127.0.0.1:{port}/readyz"
            facts.startup_s = proc.wait_http(url, settle=10 * (spec.workers - 1))
        time.sleep(1.0)  # let start-up work (imports, first GC) finish before "idle"
        facts.idle_rss_kib = rss_kib(proc.pid)[0]
        facts.idle_rss_each_kib = rss_each_kib(proc.pid)
        return proc, f"http://127.0.0.1:{port}"

    def measure(self, spec: GatewaySpec, proc: Proc | None, base: str, scenario: Scenario) -> Row:
        row = Row(spec.name, scenario.key)
        if scenario.needs_redis and not self.env.redis_url:
            row.error = "redis-server is not installed"
            return row
        url = base + scenario.path
        kube = scenario.kube_auth
        reviews_start = kube_reviews(self.env) if kube else (0, 0)
        bearer = scenario.bearer
        if bearer is not None and scenario.fresh_tokens:
            bearer = drivers.fresh_prefix(bearer) + "0"
        row.error = smoke(url, json.dumps(scenario.body).encode(), scenario.stream, bearer)
        if row.error:
            return row
        print(f"bench: {spec.name} x {scenario.key}", flush=True)
        try:
            self.drive(scenario, url, self.settings.warmup)
            redis = self.env.redis_port if scenario.needs_redis else None
            reviews_before = kube_reviews(self.env) if kube else (0, 0)
            before, cpu_before = upstream_stats(self.env), cpu_seconds(proc.pid) if proc else 0.0
            redis_before = redis_commands(redis) if redis else 0
            row.result = self.drive(scenario, url, self.settings.duration)
            after, cpu_after = upstream_stats(self.env), cpu_seconds(proc.pid) if proc else 0.0
            if kube:
                reviews_after = kube_reviews(self.env)
                row.kube_reviews = _minus(reviews_after, reviews_before)
                row.kube_reviews_all = _minus(reviews_after, reviews_start)
            if redis:
                done = max(row.result.requests, 1)
                row.redis_commands_per_req = (redis_commands(redis) - redis_before - 1) / done
            if proc:
                proc.check_alive()
                done = max(row.result.requests, 1)
                row.cpu_ms_per_req = (cpu_after - cpu_before) * 1000 / done
            # Less the connection of the second /stats request itself.
            row.upstream_conns = after["connections"] - before["connections"] - 1
            row.upstream_requests = after["requests"] - before["requests"]
            if scenario.stream:
                seconds = max(2.0, self.settings.duration / 2)
                row.ttfb = drivers.run_loadgen(
                    url, self.body_file(scenario), scenario.concurrency, seconds,
                    stream=True, expect="[DONE]",
                )  # fmt: skip
        except (DriverFailed, ProcessFailed, subprocess.TimeoutExpired, OSError) as exc:
            row.result, row.error = None, f"{type(exc).__name__}: {str(exc)[:300]}"
        return row

    def profile(self, proc: Proc, base: str, scenario: Scenario) -> str:
        """py-spy on ``proc`` while ``scenario`` runs; its summary as Markdown."""
        seconds = self.settings.profile_seconds
        raw, result, share = self.record(ONE, proc, base, scenario)
        if isinstance(raw, str):
            return raw
        kept = HERE / "out" / f"profile-{ONE}-{scenario.key}.txt"
        kept.parent.mkdir(exist_ok=True)
        shutil.copyfile(raw, kept)
        head = (
            f"### {ONE} under `{scenario.key}` (c={scenario.concurrency})\n\n"
            f"{result.rps:,.0f} RPS while profiled; CPU {share:.0f}% user, {100 - share:.0f}% "
            f"system. Collapsed stacks: `bench/out/{kept.name}` (not committed)."
        )
        text = raw.read_text()
        if scenario.key == GAP_SCENARIO and self.floor is not None:
            ours = profiling.per_request(text, result.rps, seconds)
            self.run.gap = gap_section(ours, self.floor, scenario)
        return head + "\n\n" + profiling.summarize(text)

    def floor_profile(self, proc: Proc, base: str) -> None:
        """The bare proxy under GAP_SCENARIO, recorded like servegate, so the two compare."""
        scenario = next(s for s in SCENARIOS if s.key == GAP_SCENARIO)
        try:
            raw, result, _ = self.record("bare-proxy", proc, base, scenario)
        except (DriverFailed, subprocess.TimeoutExpired, OSError) as exc:
            self.run.notes.append(f"The bare proxy's profile failed: {exc}")
            return
        if isinstance(raw, Path):
            text = raw.read_text()
            self.floor = profiling.per_request(text, result.rps, self.settings.profile_seconds)

    def record(
        self, name: str, proc: Proc, base: str, scenario: Scenario
    ) -> tuple[Path | str, LoadResult, float]:
        """py-spy on ``proc`` while ``scenario`` runs: the collapsed stacks' file (or why
        there is none), the load's result and the user share of the CPU."""
        seconds = self.settings.profile_seconds
        raw = self.env.tmp / f"profile-{name}-{scenario.key}.txt"
        print(f"bench: profiling {name} x {scenario.key} with py-spy ({seconds:.0f} s)", flush=True)
        spy = profiling.record(proc.pid, seconds, raw)
        try:
            time.sleep(0.5)
            user, system = cpu_split(proc.pid)
            result = self.drive(scenario, base + scenario.path, seconds + 1)
            user_after, system_after = cpu_split(proc.pid)
            _, err = spy.communicate(timeout=seconds + 60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait(5)
        used = (user_after - user) + (system_after - system)
        share = 100 * (user_after - user) / used if used else 0.0
        if not raw.exists():
            return f"py-spy failed: {err.decode(errors='replace')[-500:]}", result, share
        return raw, result, share

    def profiling(self) -> bool:
        return self.settings.profile_seconds > 0 and profiling.py_spy() is not None

    def profiles(self, proc: Proc, base: str) -> str:
        if self.settings.profile_seconds <= 0:
            return ""
        if profiling.py_spy() is None:
            self.run.notes.append("py-spy is not installed: no profile (pip install py-spy).")
            return ""
        spy = machine.version([profiling.py_spy() or "py-spy", "--version"])
        parts = [
            f"{spy}, `record --gil --nonblocking --subprocesses`, 250 Hz, "
            f"{self.settings.profile_seconds:.0f} s per scenario, after the measurements. "
            "Shares are of the samples in which a thread held the GIL; shares under about 1 % "
            "are noise (a non-blocking sample can catch a stack while it changes)."
        ]
        for scenario in SCENARIOS:
            if scenario.key in PROFILED:
                try:
                    parts.append(self.profile(proc, base, scenario))
                except (DriverFailed, subprocess.TimeoutExpired, OSError) as exc:
                    parts.append(f"The profile of {scenario.key} failed: {exc}")
        return "\n\n".join(parts)

    def gateway(self, spec: GatewaySpec) -> None:
        facts = GatewayFacts(spec)
        self.run.gateways.append(facts)
        scenarios = [s for s in SCENARIOS if spec.runs(s)]
        try:
            proc, base = self.start(spec, facts)
        except (ProcessFailed, OSError) as exc:
            facts.error = f"did not start: {str(exc)[:300]}"
            self.run.rows += [
                Row(spec.name, s.key, error="gateway did not start") for s in scenarios
            ]
            return
        try:
            for scenario in scenarios:
                self.run.rows.append(self.measure(spec, proc, base, scenario))
            if proc:
                facts.peak_rss_kib = rss_kib(proc.pid)[1]
                if spec.name == ONE:
                    self.run.profile = self.profiles(proc, base)
                if spec.name == "bare-proxy" and self.profiling():
                    self.floor_profile(proc, base)
        finally:
            if proc:
                proc.stop()


GAP_SCENARIO = "chat-c64"

GAP_READING = """\
Interpreter time (GIL held) per request, by the package of the running function, from
py-spy profiles of `servegate-1w` and `bare-proxy` under the same load; the bare proxy's is
recorded the same way, right after its measurements. Time in system calls made without the
GIL (socket reads and writes, epoll) is not in it, and both gateways make the same ones.
The event loop's own time (uvloop, in C) is counted where its Python caller is:
`asyncio` for servegate (`asyncio.Runner`), `aiohttp` for the bare proxy (`web.run_app`),
so read those two rows together. A `servegate/` module's time includes resuming its
coroutines: every `await` on the way down from the middleware to the upstream call is a
frame to switch through each time the request waits.

**Why the 0.9 throughput target is missed.** The floor does no work of its own: it copies
bytes between two aiohttp connections. servegate's aiohttp time per request is close to
the floor's (it makes the same two HTTP exchanges); the difference is servegate's own
work, every line under `servegate/`, plus the libraries it calls for that work
(`prometheus_client`, `pydantic`) and the asyncio timers that bound each request. That is
the price of the features on every request: the request id and the drain count, the
body's limits and validation against the task (pydantic), authorization, the traffic
split, the provider's request and its credentials, the deadline across fallbacks, the
answer's shape and usage, and the metrics (one counter and four histograms). 0.9 of the
floor leaves about a tenth of the floor's own time for all of them: far less than they
take in Python, however lean (the lean-ups so far are in the git log: a frozen startup
heap and fewer collections, one middleware, one timer per request, no duplicate
metrics).

**What would close it**, each measurable with this suite:
- compiling the hot modules (`pipeline`, `ingress`, `canonical`, `providers/openai`,
  `records/metrics`) with mypyc, which the code's strict typing allows: typically 2 to 4
  times less interpreter time in them;
- a `passthrough` fast path for OpenAI-family endpoints with no AI Gateway feature on:
  the body checked for its size, depth and model only (no pydantic model), the answer
  forwarded with its usage read by a byte scan instead of a JSON parse;
- metrics aggregated per request in plain integers and folded into `prometheus_client`
  on scrape, instead of a lock per observation;
- beyond that, the floor itself: aiohttp's own HTTP handling is most of both columns.
  A compiled HTTP layer (for example granian or socketify under the same handlers) would
  move the floor and servegate together.
"""


def gap_section(ours: dict[str, float], floor: dict[str, float], scenario: Scenario) -> str:
    table = profiling.gap_table(ours, floor, ONE)
    return f"Under `{scenario.key}`. " + GAP_READING + "\n" + "\n".join(table)


def _minus(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] - b[0], a[1] - b[1]


def gateways(settings: Settings, workers_flag: bool, run: Run) -> list[GatewaySpec]:
    cpus = settings.gateway_cpus
    specs = [
        GatewaySpec("direct", "direct", note="the load generator talks to the upstream"),
        GatewaySpec("bare-proxy", "bare", cpus=cpus),
        GatewaySpec(ONE, "servegate", 1, cpus),
        GatewaySpec(
            KUBE_ONE,
            "servegate",
            1,
            cpus,
            only=KUBE_AUTH,
            note="servegate-1w with --auth kubernetes: imports the kubernetes package to read "
            "its kubeconfig (a pod's in-cluster configuration does not)",
            auth="kubernetes",
            baseline_gateway=ONE,
        ),
    ]
    if not workers_flag:
        run.notes.append(
            "`servegate serve` has no `--workers` option yet: the 2-worker runs were skipped."
        )
        return specs
    specs.append(GatewaySpec("servegate-2w", "servegate", 2, cpus))
    if settings.spread:
        specs.append(
            GatewaySpec(
                "servegate-2w-spread", "servegate", 2, "0,1", only=("chat-c64", "stream-c16")
            )
        )
        run.notes.append(
            "`servegate-2w-spread` runs its 2 workers on CPUs 0 and 1, sharing CPU 1 with the "
            "load generator and the upstream: on a 2-CPU machine this is the only view of "
            "multi-core scaling, and it understates it. `servegate-2w` (both workers on CPU 0) "
            "shows the cost of the extra process instead."
        )
    return specs


def start_helper(
    script: str, args: list[str], log_dir: Path, cpus: str | None, stack: ExitStack
) -> str:
    """One of bench/'s servers (``python SCRIPT --port P ARGS``) on a free port, on the load
    CPU; its URL once the port is open. ``stack`` stops it."""
    port = free_port()
    name = Path(script).stem.replace("_", "-")
    proc = Proc(
        name,
        [sys.executable, str(HERE / script), "--port", str(port), *args],
        log_dir / f"{name}.log",
        cpus,
    )
    stack.callback(proc.stop)
    proc.wait_port(port)
    return f"http://127.0.0.1:{port}"


def start_services(settings: Settings, env_tmp: Path, stack: ExitStack, run: Run) -> Env:
    servegate_env = snapshot.take(env_tmp / "src", settings.servegate_ref)
    uvloop = snapshot.uses_uvloop(env_tmp / "src", servegate_env)
    run.settings["event loop"] = (
        "uvloop for servegate and for the bare proxy"
        if uvloop
        else "asyncio's own for servegate and for the bare proxy"
    )
    run.machine["servegate"] = snapshot.describe(settings.servegate_ref) + (
        ", copied at the start of the run"
    )
    url = start_helper(
        "fake_upstream.py", ["--chunks", str(CHUNKS)], env_tmp, settings.load_cpus, stack
    )
    kube_url = start_helper(
        "fake_kube.py",
        ["--latency-ms", str(KUBE_LATENCY_MS)],
        env_tmp,
        settings.load_cpus,
        stack,
    )
    run.settings["fake Kubernetes API server"] = (
        f"bench/fake_kube.py, plain HTTP, {KUBE_LATENCY_MS:g} ms per review, on the load CPU; "
        f"`{KUBE_ONE}` checks callers with it"
    )
    redis_url, rport = None, 0
    binary = shutil.which("redis-server")
    if binary:
        rport = free_port()
        argv = [
            binary,
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        redis = Proc("redis", argv, env_tmp / "redis.log", settings.load_cpus)
        stack.callback(redis.stop)
        redis.wait_port(rport)
        redis_url = f"redis://127.0.0.1:{rport}"
    else:
        run.notes.append("redis-server is not installed: the rate-limit scenario was skipped.")
    wrk = settings.use_wrk and drivers.wrk_available()
    if not settings.use_wrk:
        run.notes.append(
            "`--no-wrk`: throughput was measured with the Python load generator, which "
            "saturates earlier than wrk; ratios still hold within the run."
        )
    elif not wrk:
        run.notes.append(
            "wrk is not installed (and apt-get could not install it): throughput was measured "
            "with the Python load generator, which saturates earlier; ratios still hold within "
            "the run, but absolute RPS is lower."
        )
    return Env(
        tmp=env_tmp,
        upstream=url,
        config=write_config(env_tmp, url),
        redis_url=redis_url,
        redis_port=rport if redis_url else None,
        servegate_env=servegate_env,
        uvloop=uvloop,
        workers_flag=machine.servegate_has_workers(servegate_env),
        wrk=wrk,
        kube_url=kube_url,
        kubeconfig=fake_kube.write_kubeconfig(env_tmp / "kubeconfig", kube_url),
    )


def main() -> int:
    settings = parse_args()
    enter_main(settings.load_cpus)
    run = Run(machine=machine.describe(), settings=machine.settings_text(settings.__dict__))
    if not settings.gateway_cpus:
        run.notes.append("fewer than 2 CPUs available: nothing was pinned; the numbers mix.")
    finished = False
    try:
        with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp, ExitStack() as stack:
            env = start_services(settings, Path(tmp), stack, run)
            bench = Bench(settings, env, run, stack)
            for spec in gateways(settings, env.workers_flag, run):
                bench.gateway(spec)
            if settings.slow_hold:
                import slow_streams  # here rather than at the top: it imports this module

                print("bench: 1,000 slow streams", flush=True)
                run.slow = slow_streams.measure(slow_streams.in_suite(settings), env, stack)
        finished = True
    except (ProcessFailed, snapshot.SnapshotFailed, OSError):
        traceback.print_exc()
    finally:
        target = settings.output if finished else HERE / "out" / "RESULTS.partial.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not finished:
            run.notes.insert(0, "**This run did not finish**: partial results.")
        target.write_text(render(run))
        print(f"bench: wrote {target}", flush=True)
    return 0 if finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
