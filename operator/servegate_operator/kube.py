"""The only module that talks to the Kubernetes API: get, list, server-side apply, delete.

Writes are server-side apply (``fieldManager=servegate-operator``, ``force``): the same
desired object sent twice gives the same cluster, so reconcile can run any number of
times and from any state. Reads return plain dicts. ``calls`` records every
(group, resource, verb) used, which the RBAC test compares with the ClusterRole.
Cluster-scoped resources (``namespaced=False``) take ``None`` for a namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "servegate-operator"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """``namespace`` for a namespaced resource, ``None`` for a cluster-scoped one."""
        if self.namespaced != (namespace is not None):
            scope = "namespaced" if self.namespaced else "cluster-scoped"
            raise ValueError(f"{self.plural} is {scope}: namespace {namespace!r}")
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            prefix = f"{prefix}/namespaces/{namespace}"
        path = f"{prefix}/{self.plural}"
        return f"{path}/{name}" if name else path


SERVING_ENDPOINTS = Resource("servegate.io", "v1alpha1", "servingendpoints")
CONFIG_MAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
SERVICES = Resource("", "v1", "services")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", namespaced=False
)
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
CLUSTER_KOPF_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)
KOPF_PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")

BY_KIND = {
    "ConfigMap": CONFIG_MAPS,
    "Secret": SECRETS,
    "Service": SERVICES,
    "Deployment": DEPLOYMENTS,
    "PodDisruptionBudget": PDBS,
    "HorizontalPodAutoscaler": HPAS,
    "ServiceAccount": SERVICE_ACCOUNTS,
    "ClusterRoleBinding": CLUSTER_ROLE_BINDINGS,
    "RoleBinding": ROLE_BINDINGS,
    "ClusterKopfPeering": CLUSTER_KOPF_PEERINGS,
    "KopfPeering": KOPF_PEERINGS,
}


class Kube:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = api_client
        self.calls: set[tuple[str, str, str]] = set()

    def _call(self, verb: str, resource: Resource, method: str, path: str, **kw: Any) -> Any:
        self.calls.add((resource.group, resource.plural, verb))
        data, _status, _headers = self._api.call_api(
            path,
            method,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=False,
            _preload_content=True,
            **kw,
        )
        return data

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call(
                "get", resource, "GET", resource.path(namespace, name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call("list", resource, "GET", resource.path(namespace), query_params=query)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply. Kubernetes authorizes an apply that creates the object as
        ``create`` as well as ``patch``, so both are recorded."""
        resource = BY_KIND[obj["kind"]]
        meta = obj["metadata"]
        self.calls.add((resource.group, resource.plural, "create"))
        result: dict[str, Any] = self._call(
            "patch",
            resource,
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"]),
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={
                "Content-Type": "application/apply-patch+yaml",
                "Accept": "application/json",
            },
            body=obj,
        )
        return result

    def delete(self, resource: Resource, namespace: str | None, name: str) -> None:
        try:
            self._call("delete", resource, "DELETE", resource.path(namespace, name))
        except ApiException as exc:
            if exc.status != 404:
                raise
