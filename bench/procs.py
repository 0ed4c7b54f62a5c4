"""Processes under test: start pinned to CPUs, wait until ready, read CPU time and RSS, stop.

Every process starts in its own session (process group), so that stopping it stops its
children too (a multi-worker gateway's workers). CPU time and RSS are summed over the
process and all its descendants, read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessFailed(RuntimeError):
    """A process exited or did not get ready in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``root`` and its descendants, reaped children included."""
    user = system = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields:  # utime, stime, cutime, cstime are fields 14-17
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its descendants, reaped children included."""
    return sum(cpu_split(root))


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_each_kib(root: int) -> list[int]:
    """VmRSS of ``root`` and of each descendant, in KiB."""
    return [_status_kib(p, "VmRSS") for p in descendants(root)]


def rss_by_pid_kib(root: int) -> dict[int, int]:
    """VmRSS of ``root`` and of each descendant, in KiB, by pid."""
    return {p: _status_kib(p, "VmRSS") for p in descendants(root)}


def rss_kib(root: int) -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB, summed over ``root`` and its descendants."""
    pids = descendants(root)
    return sum(_status_kib(p, "VmRSS") for p in pids), sum(_status_kib(p, "VmHWM") for p in pids)


class Proc:
    """One started process (and its group), pinned with ``taskset -c cpus`` when given."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        cpus: str | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        command = ["taskset", "-c", cpus, *argv] if cpus else list(argv)
        self.started = time.perf_counter()
        self.stopped = False
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ProcessFailed(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_port(self, port: int, timeout: float = 30.0) -> float:
        """Seconds from start until ``port`` accepts connections."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return time.perf_counter() - self.started
            time.sleep(0.005)
        raise ProcessFailed(f"{self.name}: port {port} not open after {timeout:.0f} s")

    def wait_http(self, url: str, timeout: float = 60.0, settle: int = 0) -> float:
        """Seconds from start until ``url`` answers 200; then ``settle`` more 200s in a row
        (each on a new connection, so every worker sharing the port is likely to have been
        asked)."""
        deadline = time.perf_counter() + timeout
        ready: float | None = None
        streak = 0
        while time.perf_counter() < deadline:
            self.check_alive()
            ok = _get_ok(url)
            if ok and ready is None:
                ready = time.perf_counter() - self.started
            streak = streak + 1 if ok else 0
            if ready is not None and streak > settle:
                return ready
            time.sleep(0.005 if ready is None else 0.02)
        raise ProcessFailed(f"{self.name}: {url} not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout``. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Workers may outlive their parent: whatever is left in the group gets SIGKILL.
        _signal_group(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# Commands the gateway's Lua scripts run inside Redis (policy/windows.py): Redis counts
# them in its statistics, but they cost no round trip.
SCRIPT_INTERNAL = frozenset({"time", "lindex", "hmget", "lpush", "ltrim", "pexpire", "hset"})


def redis_commands(port: int) -> int:
    """Commands clients sent to Redis (INFO commandstats, less what scripts ran inside it):
    each is one round trip. The INFO call that reads them counts too."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while True:  # a bulk string: "$<length>\r\n<body>\r\n"
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            header, found, body = data.partition(b"\r\n")
            if found and len(body) >= int(header[1:]):
                break
    total = 0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            if name not in SCRIPT_INTERNAL:
                total += int(stats.split(",")[0].removeprefix("calls="))
    return total


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def enter_main(load_cpus: str | None) -> None:
    """A bench entry point's first step: SIGTERM unwinds like Ctrl-C (so every ``with``
    stops what it started), and this process runs on the load CPU (its children inherit
    it)."""
    signal.signal(signal.SIGTERM, _exit)
    if load_cpus:
        os.sched_setaffinity(0, {int(load_cpus)})
