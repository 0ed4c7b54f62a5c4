"""``--auth kubernetes`` through the whole gateway: projected ServiceAccount tokens checked
with TokenReviews, queries authorized with SubjectAccessReviews against RBAC, both cached,
static tokens beside them, and the API server failing."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack
from pathlib import Path

import kmock
import pytest
import yaml

from servegate import keys
from servegate.auth.cache import CachePolicy
from servegate.auth.kube import ReviewPolicy
from tests.conftest import Workspace, write_auth_file
from tests.k8s.emulator import EmulatedCluster, api_error
from tests.k8s.reviews import (
    ACCESS_REVIEWS,
    RETIRE,
    TOKEN_REVIEWS,
    ReviewAuthority,
    service_account,
)
from tests.proxy.auth.conftest import AUDIENCE, NS, FakeClock, MakeGateway

pytestmark = pytest.mark.timeout(30)


def sa(name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": NS}


def may_query(authority: ReviewAuthority, subject: dict[str, str], *endpoints: str) -> None:
    """What a team writes: a Role allowing ``query`` on the named endpoints, bound."""
    authority.grant(
        f"query-{subject['name']}-{'-'.join(endpoints)}",
        [subject],
        verbs=["query"],
        resource_names=endpoints,
        namespace=NS,
    )


def reviews(authority: ReviewAuthority) -> tuple[int, int]:
    return authority.review_count(TOKEN_REVIEWS), authority.review_count(ACCESS_REVIEWS)


async def test_a_service_account_with_a_role_queries_its_endpoint_only(
    make_gateway: MakeGateway, authority: ReviewAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await make_gateway()
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")

    status, body, headers = await gateway.ask("chat", token)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]
    assert headers["served-model-name"] == "gpt-4o-mini"

    status, body, _ = await gateway.ask("other", token)
    assert status == 403
    assert body["error_code"] == "PERMISSION_DENIED"
    message = body["message"]
    assert "system:serviceaccount:team-a:app" in message and "'other'" in message
    assert "Role in namespace 'team-a'" in message and "verb 'query'" in message
    assert token not in caplog.text


async def test_a_service_account_without_a_grant_is_denied(
    make_gateway: MakeGateway, authority: ReviewAuthority
) -> None:
    gateway = await make_gateway()
    may_query(authority, sa("app"), "chat")
    stranger = authority.issue(service_account(NS, "stranger", audiences=[AUDIENCE]))
    # Another namespace's ServiceAccount of the same name is someone else.
    lookalike = authority.issue(service_account("team-b", "app", audiences=[AUDIENCE]))
    for token in (stranger, lookalike):
        status, body, _ = await gateway.ask("chat", token)
        assert status == 403, body
        assert body["error_code"] == "PERMISSION_DENIED"


async def test_groups_and_cluster_roles_grant_access_too(
    make_gateway: MakeGateway, authority: ReviewAuthority
) -> None:
    gateway = await make_gateway()
    token = authority.issue(service_account(NS, "batch", audiences=[AUDIENCE]))
    # Every ServiceAccount of the namespace, through its group, on every endpoint.
    authority.grant(
        "all-endpoints",
        [{"kind": "Group", "name": f"system:serviceaccounts:{NS}"}],
        verbs=["query"],
        namespace=None,
    )
    for endpoint in ("chat", "other"):
        status, body, _ = await gateway.ask(endpoint, token)
        assert status == 200, body


async def test_a_bad_token_is_401_and_no_token_makes_no_review(
    make_gateway: MakeGateway, authority: ReviewAuthority
) -> None:
    gateway = await make_gateway()
    status, body, _ = await gateway.ask("chat", None)
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    assert "Missing bearer token" in body["message"]
    assert reviews(authority) == (0, 0)

    status, body, _ = await gateway.ask("chat", "not-a-token-the-cluster-issued")
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    assert body["message"] == "Invalid access token."
    assert reviews(authority) == (1, 0)


@pytest.mark.parametrize(
    "audiences",
    [
        pytest.param(["https://kubernetes.default.svc.cluster.local"], id="api-server-token"),
        pytest.param(["vault"], id="another-service"),
    ],
)
async def test_a_token_for_another_audience_is_401(
    make_gateway: MakeGateway, authority: ReviewAuthority, audiences: list[str]
) -> None:
    gateway = await make_gateway()
    may_query(authority, sa("app"), "chat")
    token = authority.issue(service_account(NS, "app", audiences=audiences))
    status, body, _ = await gateway.ask("chat", token)
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    assert reviews(authority) == (1, 0)


async def test_answers_are_cached_for_their_ttl(
    make_gateway: MakeGateway, authority: ReviewAuthority, clock: FakeClock
) -> None:
    policy = ReviewPolicy(
        tokens=CachePolicy(positive_ttl=60, negative_ttl=10),
        access=CachePolicy(positive_ttl=30, negative_ttl=5),
    )
    gateway = await make_gateway(policy=policy)
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")

    assert (await gateway.ask("chat", token))[0] == 200
    assert reviews(authority) == (1, 1)
    clock.advance(29)
    assert (await gateway.ask("chat", token))[0] == 200
    assert reviews(authority) == (1, 1), "within both TTLs: answered from memory"
    clock.advance(2)  # 31 s: the access answer expired, the token's has not
    assert (await gateway.ask("chat", token))[0] == 200
    assert reviews(authority) == (1, 2)
    clock.advance(29.5)  # 60.5 s: the token's answer expired too (the access one is 29.5 s old)
    assert (await gateway.ask("chat", token))[0] == 200
    assert reviews(authority) == (2, 2)


async def test_negative_answers_are_cached_briefly(
    make_gateway: MakeGateway, authority: ReviewAuthority, clock: FakeClock
) -> None:
    policy = ReviewPolicy(
        tokens=CachePolicy(positive_ttl=60, negative_ttl=10),
        access=CachePolicy(positive_ttl=60, negative_ttl=5),
    )
    gateway = await make_gateway(policy=policy)

    for _ in range(3):
        assert (await gateway.ask("chat", "bogus"))[0] == 401
    assert reviews(authority) == (1, 0)
    clock.advance(11)
    assert (await gateway.ask("chat", "bogus"))[0] == 401
    assert reviews(authority) == (2, 0)

    # A denial is remembered for its (short) TTL: a grant made meanwhile is seen after it.
    token = authority.issue(service_account(NS, "late", audiences=[AUDIENCE]))
    assert (await gateway.ask("chat", token))[0] == 403
    may_query(authority, sa("late"), "chat")
    assert (await gateway.ask("chat", token))[0] == 403
    assert reviews(authority) == (3, 1)
    clock.advance(6)
    assert (await gateway.ask("chat", token))[0] == 200
    assert reviews(authority) == (3, 2)


async def test_a_revoked_token_works_until_its_answer_expires(
    make_gateway: MakeGateway, authority: ReviewAuthority, clock: FakeClock
) -> None:
    gateway = await make_gateway(policy=ReviewPolicy(tokens=CachePolicy(positive_ttl=60)))
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")
    assert (await gateway.ask("chat", token))[0] == 200
    authority.revoke(token)  # its pod was deleted
    clock.advance(59)
    assert (await gateway.ask("chat", token))[0] == 200
    clock.advance(2)
    assert (await gateway.ask("chat", token))[0] == 401


async def test_concurrent_first_queries_share_one_review(
    make_gateway: MakeGateway, authority: ReviewAuthority
) -> None:
    gateway = await make_gateway()
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")
    answers = await asyncio.gather(*(gateway.ask("chat", token) for _ in range(8)))
    assert [status for status, _, _ in answers] == [200] * 8
    assert reviews(authority) == (1, 1)


async def test_api_server_down_fails_closed_with_503(
    make_gateway: MakeGateway,
    authority: ReviewAuthority,
    stack: ExitStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await make_gateway()
    known = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    fresh = authority.issue(service_account(NS, "fresh", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat", "other")
    assert (await gateway.ask("chat", known))[0] == 200

    stack.close()  # the emulated API server stops: connections are refused

    status, body, _ = await gateway.ask("chat", known)
    assert status == 200, "answers already known keep serving until they expire"
    for endpoint, token, what in [
        ("chat", fresh, "verify the caller's token"),
        ("other", known, "check the caller's access"),
    ]:
        status, body, headers = await gateway.ask(endpoint, token)
        assert (status, body["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
        assert body["message"] == (
            f"Cannot {what}: the Kubernetes API server is unavailable. Try again shortly."
        )
        assert headers["Retry-After"] == "1"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per request"
    assert "cannot reach the API server" in warnings[0].getMessage()
    assert known not in caplog.text and fresh not in caplog.text


async def test_api_server_errors_fail_closed_and_are_not_cached(
    make_gateway: MakeGateway,
    authority: ReviewAuthority,
    cluster: EmulatedCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await make_gateway()
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")
    failing = True

    def outage(request: kmock.Request) -> kmock.Payload:
        if failing:
            raise api_error(500, "InternalError", "etcdserver: request timed out")
        return RETIRE  # the outage is over: the authority answers again

    emulator = cluster.emulator
    cluster.call(lambda: (emulator[kmock.method.POST, TOKEN_REVIEWS] ** 10) << outage)

    for _ in range(2):
        status, body, _ = await gateway.ask("chat", token)
        assert (status, body["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert "answered 500: etcdserver: request timed out" in caplog.text
    failing = False
    assert (await gateway.ask("chat", token))[0] == 200
    assert "answers reviews again" in caplog.text


async def test_a_hanging_api_server_times_out_into_503(
    make_gateway: MakeGateway, authority: ReviewAuthority, cluster: EmulatedCluster
) -> None:
    gateway = await make_gateway(review_timeout=0.3)
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    release = cluster.call(asyncio.Event)

    async def hang() -> kmock.Payload:
        await release.wait()
        return RETIRE

    emulator = cluster.emulator
    cluster.call(lambda: (emulator[kmock.method.POST, TOKEN_REVIEWS] ** 10) << hang)
    try:
        status, body, _ = await gateway.ask("chat", token)
        assert (status, body["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    finally:
        cluster.call(release.set)


async def test_a_gateway_without_review_rights_says_so(
    make_gateway: MakeGateway,
    authority: ReviewAuthority,
    cluster: EmulatedCluster,
    tmp_path: Path,
) -> None:
    """The gateway's own ServiceAccount needs ``create`` on both review kinds (what the
    ClusterRole ``system:auth-delegator`` grants): without it, 503 that says so."""
    gateway_token = authority.issue(service_account(NS, "servegate-gateway"))
    kubeconfig = cluster.kubeconfig_dict(NS)
    kubeconfig["users"][0]["user"]["token"] = gateway_token
    path = tmp_path / "gateway-kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kubeconfig))
    gateway = await make_gateway(kubeconfig=path)
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")

    status, body, _ = await gateway.ask("chat", token)
    assert (status, body["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert "the gateway is not allowed to create reviews" in body["message"]

    authority.grant(
        "servegate-gateway-reviews",
        [sa("servegate-gateway")],
        api_groups=["authentication.k8s.io", "authorization.k8s.io"],
        resources=["tokenreviews", "subjectaccessreviews"],
        verbs=["create"],
        namespace=None,
    )
    assert (await gateway.ask("chat", token))[0] == 200


async def test_static_tokens_are_authorized_through_subject_access_reviews(
    make_gateway: MakeGateway, authority: ReviewAuthority, workspace: Workspace
) -> None:
    """Callers outside the cluster keep their auth-file tokens: no TokenReview, but the
    same SubjectAccessReview, as the configured user and groups."""
    auth_file = write_auth_file(
        workspace.root / "auth.yaml",
        {"tok-ci": ("ci@example.com", ["ci"]), "tok-ana": ("ana@example.com", [])},
    )
    gateway = await make_gateway(auth_file=auth_file)
    authority.grant(
        "ci-queries-chat",
        [{"kind": "Group", "name": "ci"}],
        verbs=["query"],
        resource_names=["chat"],
        namespace=NS,
    )
    assert (await gateway.ask("chat", "tok-ci"))[0] == 200
    assert (await gateway.ask("other", "tok-ci"))[0] == 403
    assert (await gateway.ask("chat", "tok-ana"))[0] == 403
    assert reviews(authority) == (0, 3)
    may_query(authority, {"kind": "User", "name": "ana@example.com"}, "other")
    assert (await gateway.ask("other", "tok-ana"))[0] == 200


async def test_a_static_tokens_endpoint_list_restricts_it_before_rbac(
    make_gateway: MakeGateway, authority: ReviewAuthority, workspace: Workspace
) -> None:
    auth_file = workspace.root / "auth.yaml"
    write_auth_file(auth_file, {"tok-ci": ("ci@example.com", ["ci"])})
    doc = yaml.safe_load(auth_file.read_text())
    doc["tokens"][0]["endpoints"] = ["other"]
    auth_file.write_text(yaml.safe_dump(doc))
    gateway = await make_gateway(auth_file=auth_file)
    authority.grant(
        "ci-everything", [{"kind": "Group", "name": "ci"}], verbs=["query"], namespace=NS
    )
    status, body, _ = await gateway.ask("chat", "tok-ci")
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    assert "limited to other endpoints" in body["message"]
    assert reviews(authority) == (0, 0), "refused locally, without asking the API server"
    assert (await gateway.ask("other", "tok-ci"))[0] == 200


async def test_reloading_the_auth_file_keeps_kubernetes_identities_and_caches(
    make_gateway: MakeGateway, authority: ReviewAuthority, workspace: Workspace
) -> None:
    auth_file = write_auth_file(workspace.root / "auth.yaml", {"tok-old": ("old@x", ["ci"])})
    gateway = await make_gateway(auth_file=auth_file)
    authority.grant("ci", [{"kind": "Group", "name": "ci"}], verbs=["query"], namespace=NS)
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))
    may_query(authority, sa("app"), "chat")
    assert (await gateway.ask("chat", token))[0] == 200
    assert (await gateway.ask("chat", "tok-old"))[0] == 200

    write_auth_file(auth_file, {"tok-new": ("new@x", ["ci"])})
    holder = gateway.client.app[keys.auth_holder]
    holder.reload()

    assert (await gateway.ask("chat", "tok-old"))[0] == 401
    assert (await gateway.ask("chat", "tok-new"))[0] == 200
    before = reviews(authority)
    assert (await gateway.ask("chat", token))[0] == 200
    assert reviews(authority) == before, "the reload kept the review caches"
