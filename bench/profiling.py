"""A py-spy profile of a gateway under load, summarised as Markdown.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``), one
line per distinct stack. It records with ``--gil``: only the thread holding the GIL is
sampled, so the shares below are shares of the interpreter's Python work. Without it,
threads parked in C calls (the executor's and the log writer's ``SimpleQueue.get``) are
not recognised as idle and swamp the profile. Time in system calls made with the GIL
released (socket reads and writes, epoll) is not in these samples: the suite reports the
user/system CPU split next to them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*)\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    path: str

    @property
    def area(self) -> str:
        return area(self.path)

    @property
    def label(self) -> str:
        return f"`{self.func}` ({short(self.path)})"


def py_spy() -> str | None:
    """py-spy beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start recording ``pid`` and its subprocesses; the caller waits on the result."""
    binary = py_spy()
    assert binary is not None
    argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(rate), "--format", "raw", "--full-filenames", "--nolineno"]
    argv += ["--gil", "--nonblocking", "--subprocesses", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def area(path: str) -> str:
    """A frame's package: ``servegate/<subpackage>``, ``aiohttp``, ``asyncio``, ``logging``…"""
    if "/servegate/" in path:
        parts = path.split("/servegate/", 1)[1].split("/")
        return "servegate/" + (parts[0].removesuffix(".py") if len(parts) > 1 else parts[0])
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in path:
            rest = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            return rest.split("/", 1)[0].removesuffix(".py")
    return path.rsplit("/", 1)[-1] or "?"


def short(path: str) -> str:
    for marker in ("/servegate/", "/site-packages/"):
        if marker in path:
            return ("servegate/" if marker == "/servegate/" else "") + path.split(marker, 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", path)


def parse(text: str) -> list[tuple[list[Frame], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            match = FRAME.match(raw)
            if match:  # "process 123:..." and thread lines have no "(path)"
                frames.append(Frame(match["func"], match["path"]))
        stacks.append((frames, int(count)))
    return stacks


LOOP_FUNCS = frozenset({
    "Handle._run", "BaseEventLoop._run_once", "BaseEventLoop.run_forever",
    "BaseEventLoop.run_until_complete",
})  # fmt: skip


def _is_loop(frame: Frame) -> bool:
    """The event loop's own frames (asyncio's, or uvloop's Python entry points)."""
    return (
        frame.func in LOOP_FUNCS
        or frame.path.endswith("asyncio/runners.py")
        or "/uvloop/" in frame.path
    )


def task_frames(frames: list[Frame]) -> list[Frame]:
    """The frames above the event loop (the callback or task running), or the whole stack
    for threads without an event loop."""
    for index in range(len(frames) - 1, -1, -1):
        if _is_loop(frames[index]):
            return frames[index + 1 :]
    return frames


def summarize(text: str, top: int = 15) -> str:
    stacks = parse(text)
    total = sum(count for _, count in stacks)
    if not total:
        return "py-spy recorded no samples."
    self_time: Counter[Frame] = Counter()
    inclusive: Counter[Frame] = Counter()
    area_self: Counter[str] = Counter()
    area_incl: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        self_time[frames[-1]] += count
        area_self[frames[-1].area] += count
        work = task_frames(frames)
        for frame in set(work):
            inclusive[frame] += count
        for name in {f.area for f in work} | {frames[-1].area}:
            area_incl[name] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%"

    lines = [f"{total:,} samples holding the GIL.", ""]
    lines += [
        "**By package** (self: the leaf frame is in it; inclusive: anywhere on the stack "
        "above the event loop)",
        "",
    ]
    lines += ["| package | self | inclusive |", "|---|---|---|"]
    for name, count in area_self.most_common(top):
        lines.append(f"| {name} | {pct(count)} | {pct(area_incl[name])} |")
    lines += ["", "**Top functions by self time**", "", "| function | self |", "|---|---|"]
    lines += [f"| {f.label} | {pct(n)} |" for f, n in self_time.most_common(top)]
    lines += ["", "**servegate functions by inclusive time**", "", "| function | inclusive |"]
    lines.append("|---|---|")
    ours = [(f, n) for f, n in inclusive.most_common() if f.area.startswith("servegate")]
    lines += [f"| {f.label} | {pct(n)} |" for f, n in ours[: top + 5]]
    return "\n".join(lines)


def per_request(text: str, rps: float, seconds: float, rate: int = 250) -> dict[str, float]:
    """Microseconds of GIL-holding time per request, by package of the leaf frame.

    A sample stands for 1/``rate`` s of one thread holding the GIL; spread over the
    ``rps * seconds`` requests served while recording, it gives the interpreter time each
    request cost in each package (system calls made without the GIL are not in it)."""
    scale = 1e6 / rate / max(rps * seconds, 1.0)
    spent: dict[str, float] = {}
    for frames, count in parse(text):
        if frames:
            area_name = frames[-1].area
            spent[area_name] = spent.get(area_name, 0.0) + count * scale
    return spent


def gap_table(
    ours: dict[str, float], floor: dict[str, float], name: str, top: int = 14
) -> list[str]:
    """``ours`` against ``floor`` (per_request of each), as Markdown rows: where the extra
    time of every request goes."""
    lines = [f"| package | {name} µs/request | bare-proxy µs/request | difference |"]
    lines.append("|---|---|---|---|")
    for area_name, spent in sorted(ours.items(), key=lambda item: -item[1])[:top]:
        if spent < 0.5 and floor.get(area_name, 0.0) < 0.5:
            continue
        there = floor.get(area_name, 0.0)
        lines.append(f"| {area_name} | {spent:.1f} | {there:.1f} | {spent - there:+.1f} |")
    total, total_floor = sum(ours.values()), sum(floor.values())
    lines.append(
        f"| **all** | **{total:.1f}** | **{total_floor:.1f}** | **{total - total_floor:+.1f}** |"
    )
    return lines
