"""``servegate serve --auth kubernetes`` from argv to a query and a GET: the CLI flags,
the settings, ``create_app`` and the routes' authorization hooks, together.

The flags, the settings and the hooks in the pipeline and the GET route are outside the
auth package; until they are in, this module is skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from servegate import keys
from servegate.app import GatewaySettings, create_app
from servegate.auth.kube import KubernetesAuthenticator
from servegate.cli import build_parser, check_exposure, settings_from_args
from tests.conftest import Workspace, endpoint_doc, openai_entity, write_yaml
from tests.k8s.emulator import EmulatedCluster
from tests.k8s.reviews import ReviewAuthority, service_account
from tests.proxy.auth.conftest import AUDIENCE, NS, QUERY

Client = TestClient[Any, Any]

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(
        "auth" not in {f.name for f in dataclasses.fields(GatewaySettings)},
        reason="needs --auth kubernetes in cli.py and app.py (and the authorize hooks in "
        "pipeline.py and ingress/databricks.py)",
    ),
]


async def test_serve_with_kubernetes_auth(
    workspace: Workspace,
    openai_sim: str,
    cluster: EmulatedCluster,
    authority: ReviewAuthority,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
        endpoint_doc("other", [openai_entity("gpt-4o", openai_sim + "/v1")]),
    )
    args = build_parser().parse_args(
        [
            "serve",
            str(workspace.manifests),
            "--secrets-dir",
            str(workspace.secrets),
            "--no-watch",
            "--host",
            "0.0.0.0",
            "--auth",
            "kubernetes",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--auth-namespace",
            NS,
        ]
    )
    assert check_exposure(args) is None, "Kubernetes identities are authentication"
    app = create_app(settings_from_args(args))
    auth = app[keys.auth_holder].current
    assert isinstance(auth, KubernetesAuthenticator)
    assert (auth.audience, auth.namespace) == (AUDIENCE, NS)
    client = await aiohttp_client(app)

    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    authority.grant(
        "app",
        [{"kind": "ServiceAccount", "name": "app", "namespace": NS}],
        verbs=["query"],
        resource_names=["chat"],
        namespace=NS,
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        await client.post("/serving-endpoints/chat/invocations", json=QUERY, headers=headers)
    ).status == 200
    denied = await client.post("/serving-endpoints/other/invocations", json=QUERY, headers=headers)
    assert denied.status == 403
    openai_denied = await client.post(
        "/serving-endpoints/chat/completions", json={**QUERY, "model": "other"}, headers=headers
    )
    assert openai_denied.status == 403

    for name, level in (("chat", "CAN_QUERY"), ("other", "CAN_VIEW")):
        got = await client.get(f"/api/2.0/serving-endpoints/{name}", headers=headers)
        assert got.status == 200
        assert (await got.json())["permission_level"] == level
