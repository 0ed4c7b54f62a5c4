"""Several operator replicas: real ``servegate operator`` processes peering through the
emulated API. The one with the highest priority works, the others stand by; a clean stop
hands over at once, a crash after the peering lifetime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port
from tests.k8s.emulator import EmulatedCluster
from tests.operator.test_operator import endpoint, secret, status_of, wait_for

PEERING = "kopf.dev/v1/clusterkopfpeerings"
LIFETIME = 10
"""The shortest ``--peering-lifetime``: a crashed leader is replaced within it."""


class OperatorProcess:
    """One ``servegate operator`` process writing its JSON log to ``<directory>/<name>.log``."""

    def __init__(self, directory: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = directory / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "servegate", *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def records(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def said(self, text: str) -> bool:
        return any(text in str(r.get("message", "")) for r in self.records())

    def reconciled(self, name: str) -> bool:
        """It logged about this endpoint: it handled it (a paused replica says nothing)."""
        return any(r.get("k8s", {}).get("name") == name for r in self.records())

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


class Replica(OperatorProcess):
    """One pod of the operator's Deployment, as its container runs ``servegate operator``
    (``POD_ID`` is kopf's identity in the peering object)."""

    def __init__(
        self, cluster: EmulatedCluster, directory: Path, name: str, priority: int | None
    ) -> None:
        args = [
            "operator",
            "--all-namespaces",
            "--peering=servegate",
            f"--peering-lifetime={LIFETIME}",
            f"--liveness=http://127.0.0.1:{free_port()}/healthz",
        ]
        if priority is not None:
            args.append(f"--priority={priority}")
        env = {**os.environ, **cluster.env, "POD_ID": name, "SERVEGATE_RECONCILE_INTERVAL": "1"}
        super().__init__(directory, name, args, env)


@pytest.fixture
def replicas(cluster: EmulatedCluster, tmp_path: Path) -> Iterator[list[Replica]]:
    """The replicas a test starts, killed at its end."""
    started: list[Replica] = []
    # No peering object: the first replica applies it.
    cluster.create(secret("openai", {"api_key": "sk-x"}))
    yield started
    for replica in started:
        replica.stop(signal.SIGKILL)


def peers(cluster: EmulatedCluster) -> dict[str, Any]:
    """The live entries of the peering object: pod → {priority, lastseen, lifetime}."""
    body = cluster.get(PEERING, None, "servegate") or {}
    return {pod: info for pod, info in (body.get("status") or {}).items() if info}


def leader_and_standby(
    cluster: EmulatedCluster, tmp_path: Path, replicas: list[Replica]
) -> tuple[Replica, Replica]:
    """operator-a (priority 200), then operator-b (100), each once it is in the peering."""
    started = []
    for name, priority in (("operator-a", 200), ("operator-b", 100)):
        replica = Replica(cluster, tmp_path, name, priority=priority)
        replicas.append(replica)
        wait_for(f"{name} in the peering", lambda name=name: name in peers(cluster), timeout=30)
        started.append(replica)
    leader, standby = started
    return leader, standby


def test_the_highest_priority_works_and_a_clean_stop_hands_over_at_once(
    cluster: EmulatedCluster, tmp_path: Path, replicas: list[Replica]
) -> None:
    leader, standby = leader_and_standby(cluster, tmp_path, replicas)
    assert {pod: info["priority"] for pod, info in peers(cluster).items()} == {
        "operator-a": 200,
        "operator-b": 100,
    }

    cluster.create(endpoint("one", "embeddings"))
    wait_for("the leader reconciles", lambda: status_of(cluster, "one").get("state"), timeout=30)
    assert leader.reconciled("one")
    # kopf starts every operator paused until it has seen the peering: the standby never
    # resumes, and never touches the endpoint.
    assert not standby.reconciled("one")
    assert not standby.said("Resuming operations")

    # A rollout or a drain: the leader gets SIGTERM, leaves the peering, and exits 0.
    stopped = time.monotonic()
    assert leader.stop() == 0, leader.log.read_text()
    assert "operator-a" not in peers(cluster)
    wait_for("the standby resumes", lambda: standby.said("Resuming operations"), timeout=10)
    assert time.monotonic() - stopped < LIFETIME  # no wait for the lifetime to pass
    cluster.create(endpoint("two", "embeddings"))
    wait_for("the standby took over", lambda: status_of(cluster, "two").get("state"), timeout=30)
    assert standby.reconciled("two")


def test_a_crashed_leader_is_replaced_after_the_peering_lifetime(
    cluster: EmulatedCluster, tmp_path: Path, replicas: list[Replica]
) -> None:
    leader, standby = leader_and_standby(cluster, tmp_path, replicas)

    leader.stop(signal.SIGKILL)  # an OOM kill, a lost node: no goodbye in the peering
    killed = time.monotonic()
    assert "operator-a" in peers(cluster)
    cluster.create(endpoint("after", "embeddings"))
    wait_for("the standby took over", lambda: status_of(cluster, "after").get("state"), timeout=30)
    waited = time.monotonic() - killed
    assert standby.said("Resuming operations")
    assert waited < LIFETIME + 10  # the lifetime, then one reconcile


def test_replicas_without_a_priority_never_tie(
    cluster: EmulatedCluster, tmp_path: Path, replicas: list[Replica]
) -> None:
    """As the chart runs them: no ``--priority``, each draws its own; exactly one works."""
    pods = [Replica(cluster, tmp_path, f"operator-{n}", priority=None) for n in range(2)]
    replicas.extend(pods)
    wait_for("both in the peering", lambda: len(peers(cluster)) == 2, timeout=30)
    priorities = {pod: info["priority"] for pod, info in peers(cluster).items()}
    assert len(set(priorities.values())) == 2
    assert all(p >= 1 for p in priorities.values())
    leader_name = max(priorities, key=lambda pod: priorities[pod])
    leader = next(p for p in pods if p.name == leader_name)
    standby = next(p for p in pods if p.name != leader_name)
    cluster.create(endpoint("one", "embeddings"))
    wait_for("reconciled", lambda: status_of(cluster, "one").get("state"), timeout=30)
    assert leader.reconciled("one") and not standby.reconciled("one")
    # Started together, the standby may resume before the leader's first keep-alive, but
    # pauses when it sees it. Until then both act; reconciles are idempotent applies.
    if standby.said("Resuming operations"):
        assert standby.said("Pausing operations in favour of")
    assert not any(p.said("Possibly conflicting operators") for p in pods)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--priority=-1", "argument --priority: must be 0 or more"),
        ("--priority=high", "argument --priority: 'high' is not a whole number"),
        ("--peering-lifetime=5", "argument --peering-lifetime: must be 10 seconds or more"),
    ],
)
def test_bad_peering_flags_are_refused_with_the_reason(flag: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "servegate", "operator", flag],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
