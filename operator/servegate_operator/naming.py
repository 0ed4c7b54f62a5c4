"""Names of the objects the operator owns, and the scope → Secret name rule.

A secret reference ``{{secrets/<scope>/<key>}}`` names the Secret ``<scope>`` in the
endpoint's namespace. Databricks scopes may hold characters a Secret name cannot
(``my_scope``, ``Team``), so the scope maps to a Secret name by one documented rule:
lowercase, and ``_`` becomes ``-``. The file inside the gateway keeps the scope as written
(``<scope>/<key>``), so ``servegate serve --secrets-dir`` resolves the reference unchanged.
"""

from __future__ import annotations

import hashlib
import re

GATEWAY_NAME = "servegate-gateway"
ENDPOINTS_MOUNT = "/etc/servegate/endpoints"
SECRETS_MOUNT = "/etc/servegate/secrets"
AUTH_MOUNT = "/etc/servegate/auth"
GATEWAY_PORT = 8080
CONTROL_PLANE_BINDING_NAME = "servegate-gateway-control-plane"
"""The RoleBinding of a namespace's gateway to the control-plane ClusterRole (the chart's
namespaced RBAC names it: ``servegate.controlPlaneBindingName``)."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def secret_name_for_scope(scope: str) -> str:
    """``my_Scope`` → ``my-scope``; raises ValueError if the result is not a valid name."""
    name = scope.lower().replace("_", "-")
    if len(name) > 253 or not all(_DNS_LABEL.match(part) for part in name.split(".")):
        raise ValueError(
            f"secret scope '{scope}' does not map to a valid Secret name ('{name}'): "
            "use lowercase letters, digits, '-', '_' and '.'"
        )
    return name


def _bounded(prefix: str, name: str, limit: int = 63) -> str:
    full = f"{prefix}{name}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{full[: limit - 9]}-{digest}"


def config_map_name(endpoint: str) -> str:
    """One ConfigMap per endpoint (see render/config.py for why)."""
    return _bounded("servegate-ep-", endpoint, 253)


def plaintext_secret_name(endpoint: str) -> str:
    return _bounded("servegate-ep-", f"{endpoint}-plaintext", 253)


def endpoint_url(namespace: str, endpoint: str, *, tls: bool = False) -> str:
    """The in-cluster query URL; with the gateway's TLS on, https on the Service's port 443."""
    scheme = "https" if tls else "http"
    return f"{scheme}://{GATEWAY_NAME}.{namespace}.svc/serving-endpoints/{endpoint}/invocations"


def review_binding_name(namespace: str) -> str:
    """The ClusterRoleBinding letting a namespace's gateway create reviews."""
    return _bounded("servegate-gateway-reviews-", namespace, 253)
