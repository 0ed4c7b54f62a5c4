"""Fixtures for the operator tests: an emulated cluster with the team-a namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.emulator import EmulatedCluster, running_kubernetes

NS = "team-a"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedCluster]:
    with running_kubernetes(tmp_path / "k8s") as k8s:
        monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
        k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield k8s
