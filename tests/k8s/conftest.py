"""Fixtures for the in-memory Kubernetes API (see :mod:`tests.k8s.emulator`).

Elsewhere, use :func:`tests.k8s.emulator.running_kubernetes` in a fixture of your own,
or import these fixtures into your conftest (``from tests.k8s.conftest import k8s``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest

from tests.k8s.emulator import EmulatedCluster, running_kubernetes


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[EmulatedCluster]:
    """A fresh emulated cluster: ``k8s.url``, ``k8s.kubeconfig``, ``k8s.api_client()``..."""
    with running_kubernetes(tmp_path / "k8s") as cluster:
        yield cluster


@pytest.fixture
def k8s_api(k8s: EmulatedCluster) -> kubernetes.client.ApiClient:
    return k8s.api_client()


@pytest.fixture
def core(k8s_api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(k8s_api)


@pytest.fixture
def apps(k8s_api: kubernetes.client.ApiClient) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(k8s_api)


@pytest.fixture
def custom(k8s_api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(k8s_api)
