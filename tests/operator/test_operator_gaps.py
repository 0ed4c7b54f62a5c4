"""Gaps of the operator issue, shown against the in-memory Kubernetes API with kopf's real
machinery: the served entities' state in status (and ``config_update``), a namespace-scoped
operator leaving other namespaces alone, and a transient API failure retried to convergence
without crashing the operator."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from kopf.testing import KopfRunner

from servegate_operator.kube import Kube
from servegate_operator.runtime import RUNTIME
from servegate_operator.settings import GatewayDefaults, OperatorSettings
from tests.k8s.emulator import EmulatedCluster, api_error
from tests.operator.test_operator import (
    NS,
    SEP,
    condition,
    delete,
    endpoint,
    operator,  # noqa: F401  (the fixture: kopf over all namespaces)
    roll_out,
    secret,
    status_of,
    wait_for,
)

OTHER_NS = "team-b"


def in_ns(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    obj["metadata"]["namespace"] = namespace
    return obj


def entity_states(k8s: EmulatedCluster, name: str) -> dict[str, dict[str, Any]]:
    entities = status_of(k8s, name).get("served_entities") or []
    return {e["name"]: e["state"] for e in entities}


@pytest.mark.usefixtures("operator")
def test_served_entities_state_follows_secrets_and_rollout(cluster: EmulatedCluster) -> None:
    k8s = cluster
    k8s.create(secret("openai", {"api_key": "sk-x"}))
    k8s.create(secret("local-llm", {"token": "t"}))
    k8s.create(endpoint("chat"))

    # Reconciled, gateway not rolled out yet: entities deployed, config update in progress.
    wait_for("status", lambda: condition(k8s, "chat", "ConfigValid").get("status") == "True")
    status = status_of(k8s, "chat")
    assert status["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert condition(k8s, "chat", "GatewayAvailable")["reason"] == "RollingOut"
    ready = {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}
    assert entity_states(k8s, "chat") == {"gpt-4o-mini": ready, "local-llama": ready}
    by_name = {e["name"]: e for e in status["served_entities"]}
    assert by_name["gpt-4o-mini"]["external_model"] == {
        "provider": "openai",
        "name": "gpt-4o-mini",
        "task": "llm/v1/chat",
    }
    assert by_name["local-llama"]["external_model"]["provider"] == "custom"

    # Rolled out: READY, and the config update is over.
    roll_out(k8s)
    wait_for("READY", lambda: status_of(k8s, "chat").get("state", {}).get("ready") == "READY")
    assert status_of(k8s, "chat")["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert entity_states(k8s, "chat") == {"gpt-4o-mini": ready, "local-llama": ready}

    # A referenced Secret deleted: every entity's state says DEPLOYMENT_FAILED, with why.
    delete(k8s, "v1/secrets", "openai")
    failed = wait_for(
        "DEPLOYMENT_FAILED",
        lambda: {
            name: state
            for name, state in entity_states(k8s, "chat").items()
            if state["deployment"] == "DEPLOYMENT_FAILED"
        },
    )
    assert set(failed) == {"gpt-4o-mini", "local-llama"}
    for state in failed.values():
        assert "scope 'openai' key 'api_key'" in state["deployment_state_message"]
    status = status_of(k8s, "chat")
    assert status["state"] == {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}

    # Restored: DEPLOYMENT_READY again.
    k8s.create(secret("openai", {"api_key": "sk-y"}))
    wait_for(
        "DEPLOYMENT_READY again",
        lambda: entity_states(k8s, "chat") == {"gpt-4o-mini": ready, "local-llama": ready},
    )
    assert status_of(k8s, "chat")["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}


@pytest.fixture
def team_a_operator(cluster: EmulatedCluster) -> Iterator[Kube]:
    """kopf over team-a only, as ``servegate operator --namespace team-a`` runs it."""
    kube = Kube(cluster.api_client())
    RUNTIME.use(kube, OperatorSettings(gateway=GatewayDefaults(replicas=2), reconcile_interval_s=1))
    namespaces_before = RUNTIME.namespaces
    RUNTIME.namespaces = (NS,)  # what main() sets from --namespace
    args = ["run", "--standalone", "--namespace", NS, "-m", "servegate_operator.handlers"]
    try:
        with KopfRunner(args, timeout=60) as runner:
            yield kube
    finally:
        RUNTIME.namespaces = namespaces_before
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def test_namespaced_operator_leaves_other_namespaces_alone(
    cluster: EmulatedCluster, team_a_operator: Kube
) -> None:
    k8s = cluster
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}})
    for namespace in (NS, OTHER_NS):
        k8s.create(in_ns(secret("openai", {"api_key": "sk-x"}), namespace))
        k8s.create(in_ns(secret("local-llm", {"token": "t"}), namespace))
    k8s.create(in_ns(endpoint("chat"), OTHER_NS))
    k8s.create(endpoint("chat"))
    before = k8s.request_count()

    wait_for("team-a's ConfigMap", lambda: k8s.get("v1/configmaps", NS, "servegate-ep-chat"))
    wait_for("team-a's status", lambda: status_of(k8s, "chat").get("observedGeneration"))
    # Several more reconcile rounds (the timer runs every second) to give team-b its chance.
    reconciles = RUNTIME.reconciles
    wait_for("three more reconciles", lambda: RUNTIME.reconciles >= reconciles + 3, timeout=15)

    other = k8s.get(SEP, OTHER_NS, "chat")
    assert other is not None
    assert not other.get("status")
    assert k8s.get("v1/configmaps", OTHER_NS, "servegate-ep-chat") is None
    assert k8s.get("apps/v1/deployments", OTHER_NS, "servegate-gateway") is None
    # Not touched at all: no finalizer, no kopf annotations, no request into team-b.
    assert not other["metadata"].get("finalizers")
    assert not any(k.startswith("servegate.io/") for k in other["metadata"].get("annotations", {}))

    def team_b_paths() -> list[str]:
        requests = list(k8s.emulator._requests)[before:]
        return [str(r.url.path) for r in requests if f"/namespaces/{OTHER_NS}/" in r.url.path]

    assert k8s.call(team_b_paths) == []


@pytest.mark.usefixtures("operator")
def test_transient_api_errors_are_retried(cluster: EmulatedCluster) -> None:
    """A failed reconcile is retried after the operator's backoff (5 s, not kopf's 60) and
    by the next timer run, so two injected 500s delay the endpoint by seconds."""
    k8s = cluster
    failures = {"left": 2, "served": 0}

    def fail_twice() -> Any:
        if failures["left"] == 0:
            return StopIteration  # depleted: kmock passes the request on to the emulation
        failures["left"] -= 1
        failures["served"] += 1
        return api_error(500, "InternalError", "injected: etcd is having a moment")

    config_map_path = f"/api/v1/namespaces/{NS}/configmaps/servegate-ep-chat"

    def is_config_map_patch(request: kmock.Request) -> bool:
        return request.method == kmock.method.PATCH and request.url.path == config_map_path

    k8s.call(lambda: k8s.emulator[is_config_map_patch] << fail_twice)

    k8s.create(secret("openai", {"api_key": "sk-x"}))
    k8s.create(secret("local-llm", {"token": "t"}))
    k8s.create(endpoint("chat"))

    config_map = wait_for(
        "the ConfigMap despite the failures",
        lambda: k8s.get("v1/configmaps", NS, "servegate-ep-chat"),
    )
    assert failures == {"left": 0, "served": 2}
    assert "{{secrets/openai/api_key}}" in config_map["data"]["chat.yaml"]

    def config_map_patches() -> list[int]:
        requests = list(k8s.emulator._requests)
        return [r.id for r in requests if is_config_map_patch(r)]

    assert len(k8s.call(config_map_patches)) >= 3  # two failed, then one applied

    wait_for("the Deployment", lambda: k8s.get("apps/v1/deployments", NS, "servegate-gateway"))
    roll_out(k8s)
    wait_for("READY", lambda: status_of(k8s, "chat").get("state", {}).get("ready") == "READY")
    assert condition(k8s, "chat", "Ready")["status"] == "True"

    # Still alive and reconciling after the failures (the fixture checks a clean exit).
    reconciles = RUNTIME.reconciles
    wait_for("more reconciles", lambda: RUNTIME.reconciles > reconciles, timeout=10)


@pytest.fixture
def slow_operator(cluster: EmulatedCluster) -> Iterator[Kube]:
    """kopf with the deployed default: a periodic reconcile every 60 s, so anything quicker
    comes from the rollout follow-up."""
    kube = Kube(cluster.api_client())
    RUNTIME.use(kube, OperatorSettings(gateway=GatewayDefaults(replicas=2)))
    assert RUNTIME.settings.reconcile_interval_s == 60
    args = ["run", "--standalone", "-A", "-m", "servegate_operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield kube
    assert runner.exit_code == 0, runner.output


def test_ready_follows_the_rollout_within_seconds(
    cluster: EmulatedCluster, slow_operator: Kube
) -> None:
    """While the gateway rolls out, the endpoint is looked at every 2 s, not every 60 s."""
    k8s = cluster
    k8s.create(secret("openai", {"api_key": "sk-x"}))
    k8s.create(secret("local-llm", {"token": "t"}))
    k8s.create(endpoint("chat"))
    wait_for("rolling out", lambda: condition(k8s, "chat", "GatewayAvailable").get("reason"))
    assert condition(k8s, "chat", "GatewayAvailable")["reason"] == "RollingOut"
    # Four more reconciles, 2 s apart: past the periodic timer's first run (5 s after the
    # start), so the next periodic one is a minute away.
    start = RUNTIME.reconciles
    wait_for("follow-ups", lambda: RUNTIME.reconciles >= start + 4, timeout=15)
    roll_out(k8s)
    wait_for(
        "READY",
        lambda: status_of(k8s, "chat").get("state", {}).get("ready") == "READY",
        timeout=10,
    )
    assert condition(k8s, "chat", "GatewayAvailable")["status"] == "True", (
        condition(k8s, "chat", "GatewayAvailable"),
        k8s.get("apps/v1/deployments", NS, "servegate-gateway"),
    )


def gateway_condition(status: str, since: str | None) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "GatewayAvailable", "status": status}
    if since is not None:
        condition["lastTransitionTime"] = since
    return {"conditions": [{"type": "ConfigValid", "status": "True"}, condition]}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, False),  # not reconciled yet: the create handler comes first
        (gateway_condition("True", "2026-11-22T10:00:00Z"), False),
        (gateway_condition("False", "2026-11-22T10:00:00Z"), True),  # just turned False
        (gateway_condition("False", "2026-11-22T09:51:00Z"), True),  # 9 minutes
        (gateway_condition("False", "2026-11-22T09:50:00Z"), False),  # 10: left to the 60 s timer
        (gateway_condition("False", None), True),
        (gateway_condition("False", "yesterday"), True),
    ],
)
def test_the_rollout_is_followed_for_ten_minutes(status: dict[str, Any], expected: bool) -> None:
    from servegate_operator.handlers import following_rollout

    now = datetime.datetime(2026, 11, 22, 10, 0, 0)
    assert following_rollout(status, now=now) is expected
