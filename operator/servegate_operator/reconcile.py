"""One level-based reconcile of a namespace's endpoints, driven by one of them.

It looks at the desired state (every ServingEndpoint in the namespace) and applies it
whole: the endpoint's own ConfigMap and plaintext Secret, then the namespace's shared
gateway (whose owners are all the namespace's endpoints). Running it again changes
nothing; running it after someone deleted or edited an owned object by hand puts it back.

With ``--auth kubernetes`` the gateway also gets its ServiceAccount (owned like the rest)
and a ClusterRoleBinding to the reviewer ClusterRole. A cluster-scoped object cannot be
owned by namespaced ones, so the operator removes that binding itself: whenever a
reconcile of the namespace finds no endpoint left, and at start-up for bindings whose
namespace has none (or when the gateways no longer use Kubernetes auth). With
``--control-plane kubernetes`` it also gets a RoleBinding to the control-plane ClusterRole:
namespaced, so owned like the rest and garbage-collected with the last endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from servegate.spec import ServingEndpointManifest, ServingEndpointSpec, validation_errors
from servegate.spec.secrets import SecretRef
from servegate_operator import kube
from servegate_operator.kube import Kube
from servegate_operator.naming import (
    CONTROL_PLANE_BINDING_NAME,
    GATEWAY_NAME,
    config_map_name,
    endpoint_url,
    plaintext_secret_name,
    review_binding_name,
    secret_name_for_scope,
)
from servegate_operator.render.config import RenderedEndpoint, render_endpoint
from servegate_operator.render.gateway import (
    GATEWAY_NAMESPACE_LABEL,
    render_control_plane_binding,
    render_deployment,
    render_hpa,
    render_pdb,
    render_review_binding,
    render_service,
    render_service_account,
)
from servegate_operator.render.labels import MANAGED_BY
from servegate_operator.settings import OperatorSettings
from servegate_operator.status import Condition, Observed, render_status, transitions

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type Normal|Warning, reason, message) to post on the endpoint."""


def owner_reference(endpoint: dict[str, Any]) -> dict[str, Any]:
    meta = endpoint["metadata"]
    return {
        "apiVersion": endpoint.get("apiVersion", "servegate.io/v1alpha1"),
        "kind": "ServingEndpoint",
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": True,
    }


def _owned(
    obj: dict[str, Any], owners: list[dict[str, Any]], *, controller: bool
) -> dict[str, Any]:
    refs = [owner_reference(o) for o in sorted(owners, key=lambda o: o["metadata"]["name"])]
    if controller and len(refs) == 1:
        refs[0]["controller"] = True
    obj["metadata"]["ownerReferences"] = refs
    return obj


def _render(endpoint: dict[str, Any], namespace: str) -> RenderedEndpoint:
    """Raises ValidationError or ValueError (e.g. a scope that maps to no Secret name)."""
    spec = ServingEndpointSpec.model_validate(endpoint.get("spec") or {})
    rendered = render_endpoint(endpoint["metadata"]["name"], namespace, spec)
    for ref in rendered.refs:
        secret_name_for_scope(ref.scope)
    return rendered


def _last_good(k: Kube, endpoint: dict[str, Any], namespace: str) -> RenderedEndpoint | None:
    """An invalid endpoint keeps serving the config it last rendered, if any."""
    name = endpoint["metadata"]["name"]
    config_map = k.get(kube.CONFIG_MAPS, namespace, config_map_name(name))
    if config_map is None:
        return None
    document = yaml.safe_load((config_map.get("data") or {}).get(f"{name}.yaml", "") or "{}")
    try:
        spec = ServingEndpointManifest.model_validate(document).spec
    except ValidationError:
        return None
    refs = tuple(cred.ref for _, cred in spec.credentials() if cred.ref is not None)
    return RenderedEndpoint(name, config_map, None, refs)


def _check_secrets(k: Kube, namespace: str, rendered: RenderedEndpoint) -> Condition:
    missing = []
    own = plaintext_secret_name(rendered.name)
    for ref in rendered.refs:
        if ref.scope == own:
            continue
        secret = k.get(kube.SECRETS, namespace, secret_name_for_scope(ref.scope))
        if secret is None or ref.key not in (secret.get("data") or {}):
            missing.append(_describe_missing(ref, namespace, secret is None))
    if missing:
        return Condition("SecretsResolved", False, "SecretNotFound", "; ".join(missing))
    return Condition(
        "SecretsResolved", True, "AllSecretsFound", f"{len(rendered.refs)} secret keys found"
    )


def _describe_missing(ref: SecretRef, namespace: str, whole_secret: bool) -> str:
    secret = secret_name_for_scope(ref.scope)
    if whole_secret:
        return f"secret scope '{ref.scope}' key '{ref.key}': Secret '{secret}' not found in namespace '{namespace}'"
    return f"secret scope '{ref.scope}' key '{ref.key}': Secret '{secret}' has no key '{ref.key}'"


def _gateway_condition(deployment: dict[str, Any] | None) -> Condition:
    if deployment is None:
        return Condition(
            "GatewayAvailable", False, "RollingOut", "The gateway Deployment is being created."
        )
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    generation = deployment.get("metadata", {}).get("generation", 0)
    if (
        status.get("observedGeneration", 0) < generation
        or status.get("updatedReplicas", 0) < wanted
    ):
        return Condition(
            "GatewayAvailable", False, "RollingOut", "The gateway is rolling out a new version."
        )
    if status.get("availableReplicas", 0) < 1:
        return Condition(
            "GatewayAvailable", False, "NoReplicaAvailable", "No gateway replica is available yet."
        )
    return Condition(
        "GatewayAvailable",
        True,
        "Available",
        f"{status['availableReplicas']} gateway replicas available",
    )


def reconcile(k: Kube, endpoint: dict[str, Any], settings: OperatorSettings, now: str) -> Outcome:
    meta = endpoint["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    outcome = Outcome(status={})
    entities: list[dict[str, Any]] = []
    task: str | None = None
    spec: ServingEndpointSpec | None = None
    try:
        rendered = _render(endpoint, namespace)
    except ValidationError as exc:
        issues = "; ".join(f"spec.{i.field}: {i.message}" for i in validation_errors(exc))
        config = Condition("ConfigValid", False, "InvalidSpec", issues)
        rendered_or_none = _last_good(k, endpoint, namespace)
    except ValueError as exc:
        config = Condition("ConfigValid", False, "InvalidSpec", str(exc))
        rendered_or_none = _last_good(k, endpoint, namespace)
    else:
        config = Condition("ConfigValid", True, "Valid", "The spec is valid.")
        rendered_or_none = rendered
        spec = ServingEndpointSpec.model_validate(endpoint.get("spec") or {})
        task = str(spec.task)
        if rendered.plaintext_secret is not None:
            k.apply(_owned(rendered.plaintext_secret, [endpoint], controller=True))
            outcome.events.append(
                (
                    "Warning",
                    "PlaintextCredential",
                    f"{len(rendered.moved_plaintext)} plaintext credential(s) moved into Secret "
                    f"'{rendered.plaintext_secret['metadata']['name']}'; use {{{{secrets/<scope>/<key>}}}} references instead.",
                )
            )
        k.apply(_owned(rendered.config_map, [endpoint], controller=True))
    secrets = (
        _check_secrets(k, namespace, rendered_or_none)
        if rendered_or_none is not None
        else Condition(
            "SecretsResolved", False, "NoValidConfig", "No valid config to resolve secrets for."
        )
    )
    if spec is not None:
        entities = _entity_states(spec, secrets)
    deployment = apply_gateway(k, namespace, settings)
    gateway = _gateway_condition(deployment)
    observed = Observed(
        generation=meta.get("generation", 0),
        config_valid=config,
        secrets=secrets,
        gateway=gateway,
        task=task,
        entities=entities,
        url=endpoint_url(namespace, name, tls=settings.gateway.tls_secret is not None),
    )
    outcome.status = render_status(observed, endpoint.get("status") or {}, now)
    for cond_type, status, message in transitions(endpoint.get("status") or {}, outcome.status):
        kind = "Normal" if status == "True" else "Warning"
        outcome.events.append((kind, f"{cond_type}{'' if status == 'True' else 'False'}", message))
    return outcome


def _entity_states(spec: ServingEndpointSpec, secrets: Condition) -> list[dict[str, Any]]:
    return [
        {
            "name": entity.name,
            "external_model": {
                "provider": str(entity.external_model.provider),
                "name": entity.external_model.name,
                "task": str(entity.external_model.task),
            }
            if entity.external_model
            else None,
            "state": {
                "deployment": "DEPLOYMENT_READY" if secrets.ok else "DEPLOYMENT_FAILED",
                "deployment_state_message": "" if secrets.ok else secrets.message,
            },
        }
        for entity in spec.entities
    ]


def _live_endpoints(k: Kube, namespace: str) -> list[dict[str, Any]]:
    return [
        e
        for e in k.list(kube.SERVING_ENDPOINTS, namespace)
        if not e["metadata"].get("deletionTimestamp")
    ]


def _apply_binding(k: Kube, binding: dict[str, Any]) -> None:
    """Apply the review binding; a binding whose ``roleRef`` differs (another release's
    ClusterRole) cannot be changed in place (the field is immutable): replace it."""
    try:
        k.apply(binding)
    except ApiException as exc:
        if exc.status != 422:
            raise
        log.info(
            "replacing ClusterRoleBinding %s (its roleRef changed)", binding["metadata"]["name"]
        )
        k.delete(kube.CLUSTER_ROLE_BINDINGS, None, binding["metadata"]["name"])
        k.apply(binding)


def apply_gateway(k: Kube, namespace: str, settings: OperatorSettings) -> dict[str, Any] | None:
    """Render and apply the namespace's shared gateway from all its endpoints.

    With Kubernetes auth the review binding is applied *before* the endpoints are listed,
    and deleted when the list is empty: whatever the interleaving of concurrent reconciles
    (two endpoints deleted at once, a timer in flight), the last one to list sees every
    endpoint gone and removes it, so no binding outlives the namespace's gateway.
    """
    gateway = settings.gateway
    binding = render_review_binding(namespace, gateway)
    if binding is not None:
        _apply_binding(k, binding)
    endpoints = _live_endpoints(k, namespace)
    if not endpoints:
        if binding is not None:
            k.delete(kube.CLUSTER_ROLE_BINDINGS, None, review_binding_name(namespace))
        return None
    rendered = []
    for endpoint in endpoints:
        try:
            rendered.append(_render(endpoint, namespace))
        except (ValidationError, ValueError):
            last_good = _last_good(k, endpoint, namespace)
            if last_good is not None:
                rendered.append(last_good)
    # The identity first: the Deployment's pods run as the ServiceAccount and write with
    # the RoleBinding's grant.
    objects = [
        obj
        for obj in (
            render_service_account(namespace, gateway),
            render_control_plane_binding(namespace, gateway),
        )
        if obj is not None
    ]
    objects += [render_deployment(namespace, rendered, gateway), render_service(namespace, gateway)]
    for optional, resource in (
        (render_pdb(namespace, gateway), kube.PDBS),
        (render_hpa(namespace, gateway), kube.HPAS),
    ):
        if optional is None:
            k.delete(resource, namespace, GATEWAY_NAME)
        else:
            objects.append(optional)
    applied = {}
    for obj in objects:
        owned = _owned(obj, endpoints, controller=False)
        if obj["kind"] == "RoleBinding":
            _apply_control_plane_binding(k, owned)
        else:
            applied[obj["kind"]] = k.apply(owned)
    return applied["Deployment"]


def _apply_control_plane_binding(k: Kube, binding: dict[str, Any]) -> None:
    """Apply the gateway's control-plane RoleBinding. One whose ``roleRef`` differs
    (another release's ClusterRole) cannot be changed in place, and the operator may not
    delete RoleBindings: say so, and leave the rest of the gateway unblocked."""
    try:
        k.apply(binding)
    except ApiException as exc:
        if exc.status != 422:
            raise
        namespace = binding["metadata"]["namespace"]
        log.error(
            "RoleBinding %s/%s binds another role and its roleRef cannot change: delete it "
            "(kubectl delete rolebinding %s -n %s) and the next reconcile recreates it: %s",
            namespace,
            CONTROL_PLANE_BINDING_NAME,
            CONTROL_PLANE_BINDING_NAME,
            namespace,
            exc.reason,
        )


REVIEW_BINDING_SELECTOR = f"{GATEWAY_NAMESPACE_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}"


def sweep_review_bindings(
    k: Kube, settings: OperatorSettings, namespaces: Collection[str] = ()
) -> list[str]:
    """Delete the review bindings no gateway needs: their namespace has no endpoint left
    (it went while the operator was down), or the gateways no longer use Kubernetes auth.

    ``namespaces``: the ones this operator watches (empty: all); other operators' bindings
    are left alone. Returns the names deleted. Run once at start-up, before any reconcile.
    """
    kubernetes_auth = settings.gateway.auth_mode == "kubernetes"
    deleted = []
    for binding in k.list(kube.CLUSTER_ROLE_BINDINGS, None, label_selector=REVIEW_BINDING_SELECTOR):
        meta = binding["metadata"]
        namespace = (meta.get("labels") or {}).get(GATEWAY_NAMESPACE_LABEL, "")
        if namespaces and namespace not in namespaces:
            continue
        needed = (
            kubernetes_auth
            and meta["name"] == review_binding_name(namespace)
            and _has_endpoints(k, namespace)
        )
        if not needed:
            k.delete(kube.CLUSTER_ROLE_BINDINGS, None, meta["name"])
            deleted.append(meta["name"])
    return deleted


def _has_endpoints(k: Kube, namespace: str) -> bool:
    try:
        return bool(_live_endpoints(k, namespace))
    except ApiException as exc:
        if exc.status == 404:  # the namespace is gone
            return False
        raise


def startup_sweep(k: Kube, settings: OperatorSettings, namespaces: Collection[str] = ()) -> None:
    """:func:`sweep_review_bindings` as the operator runs it at start-up: a clean-up, so a
    refusal never stops the operator. Without Kubernetes auth the chart grants nothing on
    ClusterRoleBindings, so a 403 is expected then: the bindings a switch from kubernetes
    to file leaves behind are an administrator's to delete (helm/servegate/README.md)."""
    try:
        deleted = sweep_review_bindings(k, settings, namespaces)
    except ApiException as exc:
        expected = exc.status == 403 and settings.gateway.auth_mode != "kubernetes"
        log.log(
            logging.DEBUG if expected else logging.WARNING,
            "review ClusterRoleBindings not checked: %s %s",
            exc.status,
            exc.reason,
        )
        return
    for name in deleted:
        log.info("deleted the ClusterRoleBinding %s: no gateway uses it", name)
