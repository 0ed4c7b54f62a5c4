#!/usr/bin/env python3
"""Write the plain manifests of deploy/ from the Helm chart, so both install the same thing.

``kubectl apply -f deploy/crds/ -f deploy/operator/`` must give what ``helm install
servegate helm/servegate -n servegate-system`` gives with the default values. So this
script renders the chart with the real Helm engine (helm-python-sdk, Helm's Go SDK) and
writes:

- ``deploy/operator/servegate.yaml``: the ``servegate-system`` Namespace, then every
  object of the chart, in Helm's install order, each with its ``# Source:`` line, except
  the kopf peering object: the operator applies it at start
  (operator/servegate_operator/peering.py), so no object in deploy/operator/ is of a kind
  the CRDs of the same ``kubectl apply`` define, which a new cluster may not serve yet;
- ``helm/servegate/crds/servingendpoints.servegate.io.yaml``: a copy of the CRD that
  ``servegate crd`` generates into deploy/crds/ (the one source);
- ``deploy/crds/kopf-peering.yaml``: a copy of the chart's kopf peering CRDs.

``--check`` writes nothing and exits 1 (naming the stale files) when a file differs from
what it would write. tests/helm/test_chart.py runs the same comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "servegate"
RELEASE = "servegate"
NAMESPACE = "servegate-system"
OPERATOR_MANIFEST = REPO / "deploy" / "operator" / "servegate.yaml"
# (source, copy): the copy must equal the source byte for byte.
CRD_COPIES = [
    (
        REPO / "deploy" / "crds" / "servingendpoints.servegate.io.yaml",
        CHART / "crds" / "servingendpoints.servegate.io.yaml",
    ),
    (CHART / "crds" / "kopf-peering.yaml", REPO / "deploy" / "crds" / "kopf-peering.yaml"),
]

# Helm's install order (pkg/release/util/kind_sorter.go); other kinds come last, by name.
INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]

HEADER = f"""\
# Generated from the Helm chart helm/servegate (release "{RELEASE}", namespace
# "{NAMESPACE}", default values) by scripts/render-deploy.py: do not edit. Regenerate with
#   python scripts/render-deploy.py
# after changing the chart; tests/helm/test_chart.py fails while this file is stale.
#
# Install:
#   kubectl apply -f deploy/crds/ -f deploy/operator/
# The chart's kopf peering object is left out: the operator applies it when it starts.
"""

PEERING_KINDS = frozenset({"ClusterKopfPeering", "KopfPeering"})

NAMESPACE_OBJECT = f"""\
# The operator's namespace. Its pods meet the "restricted" Pod Security Standard.
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: servegate
    pod-security.kubernetes.io/enforce: restricted
"""


def documents(source: str, text: str) -> list[tuple[str, str]]:
    """The non-empty YAML documents of one rendered template, as (kind, text)."""
    out = []
    for chunk in text.split("\n---\n"):
        chunk = chunk.strip("\n")
        if chunk.startswith("---\n"):
            chunk = chunk[4:]
        body = yaml.safe_load(chunk)
        if not body:
            continue  # a template that rendered nothing (an optional feature that is off)
        out.append((body["kind"], f"# Source: {source}\n{chunk}\n"))
    return out


def install_order(kind: str) -> tuple[int, str]:
    if kind in INSTALL_ORDER:
        return INSTALL_ORDER.index(kind), ""
    return len(INSTALL_ORDER), kind


def render_chart(
    values: dict[str, object] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[tuple[str, str]]:
    """The chart's objects as (kind, text), in Helm's install order (a stable sort)."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace)
    docs = [
        doc
        for source, text in sorted(rendered.items())
        if not source.endswith("NOTES.txt")
        for doc in documents(source, text)
    ]
    return sorted(docs, key=lambda doc: install_order(doc[0]))


def operator_manifest() -> str:
    objects = [text for kind, text in render_chart() if kind not in PEERING_KINDS]
    parts = [NAMESPACE_OBJECT, *objects]
    return HEADER + "---\n" + "---\n".join(parts)


def expected_files() -> dict[Path, str]:
    files = {OPERATOR_MANIFEST: operator_manifest()}
    for source, copy in CRD_COPIES:
        files[copy] = source.read_text()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        names = ", ".join(str(path) for path in stale)
        print(f"stale: {names}; run: python scripts/render-deploy.py", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
