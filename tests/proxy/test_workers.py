"""``servegate serve --workers N``: N processes on one port, metrics summed over them, a
clean stop on SIGTERM, and the rest stopped when one worker dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    OPENAI_KEY,
    BackgroundLoop,
    GatewayProcess,
    endpoint_doc,
    openai_entity,
    start_site,
    write_secret,
    write_yaml,
)


@pytest.fixture(scope="module")
def sim_url(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(start_site(create_openai_app(api_keys={OPENAI_KEY})))
    yield url + "/v1"
    background_loop.run(runner.cleanup())


def children(pid: int) -> list[int]:
    """Child process ids, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def workers_of(pid: int) -> list[int]:
    """The gateway's worker processes (multiprocessing's resource tracker left out)."""
    return [
        c
        for c in children(pid)
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(tmp_path: Path, sim_url: str, workers: int) -> GatewayProcess:
    write_secret(tmp_path / "secrets", "openai", "api_key", OPENAI_KEY)
    write_yaml(
        tmp_path / "m" / "chat.yaml", endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim_url)])
    )
    args = [
        "serve",
        str(tmp_path / "m"),
        "--secrets-dir",
        str(tmp_path / "secrets"),
        "--workers",
        str(workers),
    ]
    return GatewayProcess(args, tmp_path / "gw.log")


def test_workers_share_the_port_and_the_metrics(tmp_path: Path, sim_url: str) -> None:
    gateway = start(tmp_path, sim_url, 2)
    try:
        workers = workers_of(gateway.proc.pid)
        assert len(workers) == 2
        for _ in range(20):  # a new connection each time: the kernel spreads them
            answer = requests.post(
                gateway.url + "/serving-endpoints/chat/invocations",
                json={"messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
                headers={"Connection": "close"},
            )
            assert answer.status_code == 200
        metrics = requests.get(gateway.url + "/metrics", timeout=10).text
        line = next(m for m in metrics.splitlines() if m.startswith("servegate_requests_total{"))
        assert line.endswith(" 20.0"), line  # whichever worker answers the scrape sums all
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0
    assert not any(alive(pid) for pid in workers)


def test_a_dead_worker_stops_the_rest(tmp_path: Path, sim_url: str) -> None:
    gateway = start(tmp_path, sim_url, 2)
    try:
        worker_pids = workers_of(gateway.proc.pid)
        os.kill(worker_pids[0], signal.SIGKILL)
        assert gateway.proc.wait(timeout=60) == 1
        assert not any(alive(pid) for pid in worker_pids)
    finally:
        gateway.stop()
    assert "stopping the others" in gateway.logs()
