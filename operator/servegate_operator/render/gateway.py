"""A namespace's endpoints → its one shared gateway: Deployment, Service, PDB and HPA, and
with Kubernetes auth its ServiceAccount and the ClusterRoleBinding for its reviews (plus,
with the Kubernetes control plane, the RoleBinding its REST API writes with).

The pod's shape depends only on *which* endpoints and secret keys exist, never on their
content: config and secret content changes reach the running gateway through its file
watcher (kubelet refreshes projected volumes), while a new endpoint or a new referenced
Secret key changes the volume sources and so rolls the Deployment out, one pod at a time
(``maxUnavailable: 0``; readiness gates traffic; on SIGTERM the gateway itself fails
readiness, waits ``--drain-delay`` (5 s in a pod) for endpoints to drain, then lets
requests in flight finish within its grace period, inside the pod's 40 s).

Secret sources are ``optional``: a missing Secret must not stop the pod (and every other
endpoint in the namespace) from starting; the gateway marks just the endpoint that needs
it NOT_READY, and recovers by itself when the Secret appears.

The one exception is the TLS Secret (``tls_secret``, chart value ``gateway.tls.secretName``):
it is not optional, because a gateway without it would have to serve plain HTTP where
clients expect HTTPS. While it is missing, kubelet does not start the pod (``FailedMount``
events on the pod): a rollout stops at its first new pod, with the old pods serving; a new
namespace's gateway never becomes available (``GatewayAvailable=False``) until the Secret
exists. With it, the gateway serves HTTPS on its container port (still named ``http``,
which the NetworkPolicy and the probes name; the probes say ``scheme: HTTPS``, and kubelet
does not verify the certificate) and reloads the certificate when kubelet refreshes the
mounted files; the Service exposes port 443 named ``https`` instead of port 80 ``http``.

The records database's DSN (``records_dsn_secret``, chart value ``gateway.records.dsnSecret``)
and the CA bundle (``ca_bundle``, ``gateway.caBundle``) are not optional either, for the same
reason: without the DSN the gateway would write usage rows, and inference tables' request
and response bodies, to its log instead; without the bundle it could not start its provider
client at all. The DSN reaches the container as SERVEGATE_RECORDS_DSN through a
``secretKeyRef``, so its password is in no object the operator writes; kubelet reads it
when the container starts, so a changed DSN takes a restart
(``kubectl rollout restart deployment/servegate-gateway``). The bundle's one key is mounted
read-only at ``CA_BUNDLE_PATH`` and named by SERVEGATE_CA_BUNDLE; the gateway reads it at
start. ``env`` (``gateway.env``: an egress proxy's HTTPS_PROXY, NO_PROXY, ...) comes last,
plain values only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from servegate.spec.secrets import SecretRef
from servegate_operator.naming import (
    AUTH_MOUNT,
    CONTROL_PLANE_BINDING_NAME,
    ENDPOINTS_MOUNT,
    GATEWAY_NAME,
    GATEWAY_PORT,
    SECRETS_MOUNT,
    review_binding_name,
    secret_name_for_scope,
)
from servegate_operator.render.config import RenderedEndpoint
from servegate_operator.render.labels import gateway_selector, labels
from servegate_operator.settings import CaBundle, GatewayDefaults

GATEWAY_NAMESPACE_LABEL = "servegate.io/gateway-namespace"
"""On the review ClusterRoleBinding: the namespace whose gateway it serves."""
TLS_MOUNT = "/etc/servegate/tls"
"""Where the gateway's TLS Secret is mounted (``tls.crt`` and ``tls.key``)."""
TLS_KEYS = ("tls.crt", "tls.key")
"""The keys of a ``kubernetes.io/tls`` Secret (cert-manager writes ``ca.crt`` beside them)."""
CA_BUNDLE_MOUNT = "/etc/servegate/ca"
CA_BUNDLE_FILE = "ca-bundle.pem"
CA_BUNDLE_PATH = f"{CA_BUNDLE_MOUNT}/{CA_BUNDLE_FILE}"
"""The CA bundle's key, whatever its name, is this file (SERVEGATE_CA_BUNDLE)."""


def _metadata(namespace: str, component: str = "gateway") -> dict[str, Any]:
    return {"name": GATEWAY_NAME, "namespace": namespace, "labels": labels(component)}


def secret_sources(refs: Sequence[SecretRef]) -> list[dict[str, Any]]:
    """One projected source per Secret, holding only the referenced keys at ``<scope>/<key>``."""
    by_secret: dict[str, dict[str, str]] = defaultdict(dict)
    for ref in refs:
        by_secret[secret_name_for_scope(ref.scope)][ref.key] = f"{ref.scope}/{ref.key}"
    return [
        {
            "secret": {
                "name": name,
                "optional": True,
                "items": [{"key": key, "path": path} for key, path in sorted(items.items())],
            }
        }
        for name, items in sorted(by_secret.items())
    ]


def ca_bundle_volume(bundle: CaBundle) -> dict[str, Any]:
    """The bundle's one key as ``ca-bundle.pem``; not optional; public certificates, so
    readable by any user the container may run as."""
    items = [{"key": bundle.key, "path": CA_BUNDLE_FILE}]
    if bundle.source == "configMap":
        source = {"configMap": {"name": bundle.name, "items": items, "defaultMode": 0o444}}
    else:
        source = {"secret": {"secretName": bundle.name, "items": items, "defaultMode": 0o444}}
    return {"name": "ca-bundle", **source}


def container_env(gateway: GatewayDefaults) -> list[dict[str, Any]]:
    """The operator's own variables, the typed settings, then ``gateway.env`` in order."""
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if gateway.redis_url:
        env.append({"name": "SERVEGATE_REDIS_URL", "value": gateway.redis_url})
    if gateway.records_dsn_secret is not None:
        # A reference only (see the module docstring): not optional.
        ref = {"name": gateway.records_dsn_secret.name, "key": gateway.records_dsn_secret.key}
        env.append({"name": "SERVEGATE_RECORDS_DSN", "valueFrom": {"secretKeyRef": ref}})
    if gateway.ca_bundle is not None:
        env.append({"name": "SERVEGATE_CA_BUNDLE", "value": CA_BUNDLE_PATH})
    env += [{"name": name, "value": value} for name, value in gateway.env.items()]
    return env


def render_deployment(
    namespace: str, endpoints: Sequence[RenderedEndpoint], gateway: GatewayDefaults
) -> dict[str, Any]:
    endpoints = sorted(endpoints, key=lambda e: e.name)
    refs = [ref for endpoint in endpoints for ref in endpoint.refs]
    args = [
        "serve",
        ENDPOINTS_MOUNT,
        "--secrets-dir",
        SECRETS_MOUNT,
        "--host",
        "0.0.0.0",
        "--port",
        str(GATEWAY_PORT),
    ]
    if gateway.workers > 1:
        args += ["--workers", str(gateway.workers)]
    mounts: list[dict[str, Any]] = [
        {"name": "endpoints", "mountPath": ENDPOINTS_MOUNT, "readOnly": True},
        {"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "endpoints",
            "projected": {
                "sources": [
                    {"configMap": {"name": e.config_map["metadata"]["name"]}} for e in endpoints
                ]
            },
        },
        {"name": "secrets", "projected": {"sources": secret_sources(refs)}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    kubernetes_auth = gateway.auth_mode == "kubernetes"
    if kubernetes_auth:
        # The SubjectAccessReview namespace is the pod's own (its ServiceAccount's).
        args += ["--auth", "kubernetes", "--auth-audience", gateway.auth_audience]
        if gateway.control_plane is not None:
            # The REST API writes ServingEndpoints in the pod's namespace (its RoleBinding).
            args += ["--control-plane", gateway.control_plane]
    if gateway.auth_secret:
        args += ["--auth-file", f"{AUTH_MOUNT}/auth.yaml"]
        mounts.append({"name": "auth", "mountPath": AUTH_MOUNT, "readOnly": True})
        volumes.append({"name": "auth", "secret": {"secretName": gateway.auth_secret}})
    elif not kubernetes_auth:
        args.append("--insecure-no-auth")
    scheme: dict[str, str] = {}
    if gateway.tls_secret:
        # Not optional (see the module docstring); readable by the pod's fsGroup only.
        args += ["--tls-cert", f"{TLS_MOUNT}/tls.crt", "--tls-key", f"{TLS_MOUNT}/tls.key"]
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "tls",
                "secret": {
                    "secretName": gateway.tls_secret,
                    "items": [{"key": key, "path": key} for key in TLS_KEYS],
                    "defaultMode": 0o440,
                },
            }
        )
        scheme = {"scheme": "HTTPS"}
    if gateway.ca_bundle is not None:
        mounts.append({"name": "ca-bundle", "mountPath": CA_BUNDLE_MOUNT, "readOnly": True})
        volumes.append(ca_bundle_volume(gateway.ca_bundle))
    probe = {"httpGet": {"path": "/readyz", "port": "http", **scheme}, "periodSeconds": 5}
    container = {
        "name": "gateway",
        "image": gateway.image,
        "imagePullPolicy": gateway.image_pull_policy,
        "command": ["servegate"],
        "args": args,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "env": container_env(gateway),
        "readinessProbe": {**probe, "failureThreshold": 2},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http", **scheme},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 30},
        "resources": dict(gateway.resources),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": gateway.run_as_user,
            "runAsGroup": gateway.run_as_user,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
            **gateway.security_context,
        },
    }
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(namespace),
        "spec": {
            "replicas": gateway.replicas,
            "selector": {"matchLabels": gateway_selector()},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels("gateway"),
                    "annotations": dict(gateway.pod_annotations),
                },
                "spec": {
                    # The gateway talks to the API server only for reviews (--auth kubernetes)
                    # and its REST API's writes (--control-plane kubernetes).
                    **(
                        {
                            "serviceAccountName": GATEWAY_NAME,
                            "automountServiceAccountToken": True,
                        }
                        if kubernetes_auth
                        else {"automountServiceAccountToken": False}
                    ),
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": gateway.run_as_user,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        **gateway.pod_security_context,
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    if gateway.hpa_max_replicas > gateway.replicas:
        del deployment["spec"]["replicas"]  # the HPA owns the replica count
    return deployment


def render_service_account(namespace: str, gateway: GatewayDefaults) -> dict[str, Any] | None:
    """The gateway's identity for its reviews (``--auth kubernetes`` only)."""
    if gateway.auth_mode != "kubernetes":
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(namespace),
        "automountServiceAccountToken": False,  # the pod spec asks for it explicitly
    }


def render_review_binding(namespace: str, gateway: GatewayDefaults) -> dict[str, Any] | None:
    """Lets the namespace's gateway create TokenReviews and SubjectAccessReviews.

    Both are cluster-scoped, so only a ClusterRoleBinding grants them; cluster-scoped
    objects cannot be owned by namespaced ones, so the operator deletes it itself when the
    namespace's gateway goes (label ``servegate.io/gateway-namespace``). The ClusterRole
    is the chart's (``gateway.reviewer_cluster_role``), the only one the operator may bind.
    """
    if gateway.auth_mode != "kubernetes":
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": review_binding_name(namespace),
            "labels": {**labels("gateway"), GATEWAY_NAMESPACE_LABEL: namespace},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": gateway.reviewer_cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": namespace}],
    }


def render_control_plane_binding(namespace: str, gateway: GatewayDefaults) -> dict[str, Any] | None:
    """Lets the namespace's gateway write what its REST API creates (``--control-plane
    kubernetes``): ServingEndpoints and their Secrets, in this namespace only.

    A RoleBinding (namespaced, so owned by the namespace's endpoints like the rest of the
    gateway, and garbage-collected with the last one) to the chart's ClusterRole
    (``gateway.control_plane_cluster_role``), the only other role the operator may bind.
    """
    if gateway.control_plane is None:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": CONTROL_PLANE_BINDING_NAME,
            "namespace": namespace,
            "labels": labels("gateway"),
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": gateway.control_plane_cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": namespace}],
    }


def render_service(namespace: str, gateway: GatewayDefaults) -> dict[str, Any]:
    """Port 80 ``http``; with TLS, port 443 ``https`` instead (no port speaks TLS on 80, so
    ``https://servegate-gateway.<ns>.svc/`` is the URL), to the same container port."""
    metadata = _metadata(namespace)
    if gateway.service_annotations:
        metadata["annotations"] = dict(gateway.service_annotations)
    name, port = ("https", 443) if gateway.tls_secret else ("http", 80)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": gateway.service_type,
            "selector": gateway_selector(),
            "ports": [{"name": name, "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_pdb(namespace: str, gateway: GatewayDefaults) -> dict[str, Any] | None:
    if gateway.replicas < 2 and gateway.hpa_max_replicas < 2:
        return None  # a PDB on a single replica would block node drains forever
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(namespace),
        "spec": {
            "minAvailable": gateway.pdb_min_available,
            "selector": {"matchLabels": gateway_selector()},
        },
    }


def render_hpa(namespace: str, gateway: GatewayDefaults) -> dict[str, Any] | None:
    if gateway.hpa_max_replicas <= gateway.replicas:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY_NAME},
            "minReplicas": gateway.replicas,
            "maxReplicas": gateway.hpa_max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": gateway.hpa_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
