"""``servegate operator`` as deployed: a real process against the emulated API, with its
liveness endpoint, JSON logs, a reconciled endpoint, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.conftest import REPO, free_port
from tests.k8s.emulator import EmulatedCluster
from tests.operator.test_operator import endpoint, secret, status_of, wait_for


def test_operator_process_reconciles_and_stops_cleanly(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "SERVEGATE_RECONCILE_INTERVAL": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "servegate",
                "operator",
                "--all-namespaces",
                "--standalone",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            cluster.create(secret("openai", {"api_key": "sk-x"}))
            cluster.create(endpoint("emb", "embeddings"))
            wait_for("status", lambda: status_of(cluster, "emb").get("state"), timeout=30)

            def alive() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
                except requests.ConnectionError:
                    return False

            wait_for("liveness", alive)
            probes = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            assert probes["reconciles"] >= 1
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    reconciled = [r for r in records if r.get("k8s", {}).get("name") == "emb"]
    assert reconciled, "per-object log lines carry the object's reference"
    assert all("message" in r for r in records)
