"""The auth parts on their own: the auth file's ``endpoints``, permission levels, what a
TokenReview's answer becomes, the in-cluster connection (TLS, rotating token), the review
cache, and building the auth from settings."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import kmock
import pytest
import trustme
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from servegate.auth.cache import CachePolicy, ReviewCache
from servegate.auth.callers import (
    ANONYMOUS,
    AllowAnonymous,
    AuthFileError,
    AuthUnavailable,
    BearerTokenAuthenticator,
    Principal,
    bearer_token,
    permission_level,
)
from servegate.auth.kube import KubernetesAuthenticator
from servegate.auth.kubeapi import (
    ApiServer,
    KubeConfigError,
    KubernetesApi,
    _TokenFile,
    in_cluster_api,
    kubeconfig_api,
)
from servegate.auth.setup import AuthConfigError, build_auth
from servegate.ingress.errors import PermissionDenied, Unauthenticated
from tests.conftest import Workspace, endpoint_doc, openai_entity, write_yaml
from tests.k8s.emulator import EmulatedCluster, api_error
from tests.k8s.reviews import (
    ACCESS_REVIEWS,
    POD_NAME_EXTRA,
    TOKEN_REVIEWS,
    Identity,
    ReviewAuthority,
    service_account,
)
from tests.proxy.auth.conftest import AUDIENCE, NS, QUERY, FakeClock

Client = TestClient[Any, Any]
pytestmark = pytest.mark.timeout(30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_file_with(path: Path, entries: list[dict[str, Any]]) -> Path:
    """An auth file of entries whose ``token`` is replaced by its SHA-256."""
    for entry in entries:
        entry["sha256"] = hashlib.sha256(entry.pop("token").encode()).hexdigest()
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


# --------------------------------------------------------------------------- the auth file


async def test_an_auth_file_token_may_be_limited_to_some_endpoints(
    workspace: Workspace,
    openai_sim: str,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
    authorizing_routes: None,
) -> None:
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("chat", [openai_entity("m", openai_sim + "/v1")]),
        endpoint_doc("other", [openai_entity("m", openai_sim + "/v1")]),
    )
    auth = auth_file_with(
        workspace.root / "auth.yaml",
        [
            {"name": "bot", "token": "tok-bot", "endpoints": ["chat"]},
            {"name": "ana", "token": "tok-ana"},
        ],
    )
    client = await aiohttp_client(in_process_app(auth_file=auth))

    async def ask(endpoint: str, token: str) -> tuple[int, Any]:
        resp = await client.post(
            f"/serving-endpoints/{endpoint}/invocations", json=QUERY, headers=bearer(token)
        )
        return resp.status, await resp.json()

    assert (await ask("chat", "tok-bot"))[0] == 200
    status, body = await ask("other", "tok-bot")
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    assert "'bot'" in body["message"] and "'other'" in body["message"]
    # The OpenAI routes name the endpoint in the body: the same rule applies.
    resp = await client.post(
        "/serving-endpoints/chat/completions",
        json={**QUERY, "model": "other"},
        headers=bearer("tok-bot"),
    )
    assert resp.status == 403
    assert (await ask("chat", "tok-ana"))[0] == 200
    assert (await ask("other", "tok-ana"))[0] == 200


def test_an_auth_file_with_a_malformed_endpoints_list_is_refused(tmp_path: Path) -> None:
    path = auth_file_with(
        tmp_path / "auth.yaml", [{"name": "bot", "token": "t", "endpoints": "chat"}]
    )
    with pytest.raises(AuthFileError, match=r"tokens\.0\.endpoints"):
        BearerTokenAuthenticator.from_file(path)


async def test_permission_levels_without_kubernetes(tmp_path: Path) -> None:
    tokens = BearerTokenAuthenticator.from_file(
        auth_file_with(
            tmp_path / "auth.yaml",
            [
                {"name": "bot", "token": "t", "endpoints": ["chat"]},
                {"name": "root", "token": "r", "groups": ["admins"]},
            ],
        ),
        manage_group="admins",
    )
    bot = await tokens.authenticate(bearer("t"))
    assert await permission_level(tokens, bot, "chat") == "CAN_QUERY"
    assert await permission_level(tokens, bot, "other") == "CAN_VIEW"
    root = await tokens.authenticate(bearer("r"))
    assert await permission_level(tokens, root, "chat") == "CAN_MANAGE"
    # no auth file: loopback only, and the machine's own user may do anything
    assert await permission_level(AllowAnonymous(), ANONYMOUS, "chat") == "CAN_MANAGE"


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture
async def kube_auth(
    cluster: EmulatedCluster, clock: FakeClock
) -> AsyncIterator[Callable[..., KubernetesAuthenticator]]:
    made: list[KubernetesAuthenticator] = []

    def make(**kwargs: Any) -> KubernetesAuthenticator:
        auth = KubernetesAuthenticator(
            KubernetesApi(kubeconfig_api(cluster.kubeconfig)),
            audience=AUDIENCE,
            namespace=NS,
            clock=clock,
            **kwargs,
        )
        made.append(auth)
        return auth

    yield make
    for auth in made:
        await auth.close()


async def test_permission_levels_from_subject_access_reviews(
    kube_auth: Callable[..., KubernetesAuthenticator], authority: ReviewAuthority
) -> None:
    auth = kube_auth()
    for user, verbs in [
        ("owner", ["query", "update"]),
        ("user", ["query"]),
        ("editor", ["update"]),  # may change it, not query it: the level promises queries
        ("nobody", []),
    ]:
        if verbs:
            authority.grant(user, [{"kind": "User", "name": user}], verbs=verbs, namespace=NS)
    levels = {
        user: await permission_level(auth, Principal(user), "chat")
        for user in ("owner", "user", "editor", "nobody")
    }
    assert levels == {
        "owner": "CAN_MANAGE",
        "user": "CAN_QUERY",
        "editor": "CAN_VIEW",
        "nobody": "CAN_VIEW",
    }


async def test_token_review_answers_become_principals(
    kube_auth: Callable[..., KubernetesAuthenticator],
    authority: ReviewAuthority,
    cluster: EmulatedCluster,
) -> None:
    auth = kube_auth()
    pod_token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE], pod="app-7d9"))
    person = Identity("jane@corp.example", groups=("oidc:ml",), audiences=(AUDIENCE,))
    person_token = authority.issue(person)

    app = await auth.authenticate(bearer(pod_token))
    assert app.name == "system:serviceaccount:team-a:app"
    assert app.kind == "service_principal"
    assert "system:serviceaccounts:team-a" in app.groups
    assert app.extra == ((POD_NAME_EXTRA, ("app-7d9",)),)
    jane = await auth.authenticate(bearer(person_token))
    assert (jane.name, jane.kind, jane.groups) == (
        "jane@corp.example",
        "user",
        frozenset({"oidc:ml"}),
    )
    assert jane.uid == person.uid

    # The TokenReview asked for the gateway's audience; the SubjectAccessReview carries
    # the whole user (uid and extra too: authorizers besides RBAC may decide on them).
    assert authority.posted(TOKEN_REVIEWS)[0]["spec"]["audiences"] == [AUDIENCE]
    with pytest.raises(PermissionDenied, match="may not query"):
        await auth.authorize(app, "chat", "query")
    spec = authority.posted(ACCESS_REVIEWS)[0]["spec"]
    assert spec["user"] == app.name and spec["uid"] == app.uid
    assert spec["extra"] == {POD_NAME_EXTRA: ["app-7d9"]}
    assert spec["groups"] == sorted(app.groups)
    assert spec["resourceAttributes"] == {
        "namespace": NS,
        "verb": "query",
        "group": "servegate.io",
        "resource": "servingendpoints",
        "name": "chat",
    }


class _AnswersWith(KubernetesApi):
    """An API server that answers every review with the same status."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(ApiServer(url="http://unused.invalid", ssl=False, authorization=str))
        self.status = status

    async def create(
        self, path: str, body: Mapping[str, Any], *, secret: str | None = None
    ) -> dict[str, Any]:
        return {"kind": body["kind"], "status": self.status}


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(
            {"authenticated": True, "user": {"username": "x"}, "audiences": []},
            id="audience-unaware-api-server",
        ),
        pytest.param(
            {"authenticated": True, "user": {"username": "x"}, "audiences": ["other"]},
            id="other-audience",
        ),
        pytest.param({"authenticated": True, "audiences": [AUDIENCE]}, id="no-user"),
        pytest.param({"authenticated": False, "error": "expired"}, id="not-authenticated"),
    ],
)
async def test_token_review_answers_that_do_not_vouch_for_the_gateway_are_refused(
    status: dict[str, Any],
) -> None:
    """An empty ``status.audiences`` means "valid for the API server": not for us."""
    auth = KubernetesAuthenticator(_AnswersWith(status), audience=AUDIENCE, namespace=NS)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(bearer("some-token"))


async def test_an_explicit_deny_wins_over_allowed() -> None:
    auth = KubernetesAuthenticator(
        _AnswersWith({"allowed": True, "denied": True, "reason": "policy says no"}),
        audience=AUDIENCE,
        namespace=NS,
    )
    with pytest.raises(PermissionDenied, match="policy says no"):
        await auth.authorize(Principal("x"), "chat", "query")


async def test_tokens_echoed_in_api_errors_are_scrubbed(
    kube_auth: Callable[..., KubernetesAuthenticator],
    authority: ReviewAuthority,
    cluster: EmulatedCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = authority.issue(service_account(NS, "app", audiences=[AUDIENCE]))

    def echo(request: kmock.Request) -> kmock.Payload:
        raise api_error(400, "BadRequest", f"cannot decode {request.data['spec']['token']}")

    emulator = cluster.emulator
    cluster.call(lambda: (emulator[kmock.method.POST, TOKEN_REVIEWS] ** 10) << echo)
    with pytest.raises(AuthUnavailable, match="unavailable") as raised:
        await kube_auth().authenticate(bearer(token))
    assert "cannot decode <redacted>" in caplog.text
    assert token not in caplog.text and token not in str(raised.value)


# --------------------------------------------------------------------------- in a pod


@pytest.fixture
def api_server_tls() -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    return ca, server_context


async def test_in_a_pod_the_gateway_trusts_the_cluster_ca_and_sends_its_token(
    tmp_path: Path, api_server_tls: tuple[trustme.CA, ssl.SSLContext]
) -> None:
    ca, server_context = api_server_tls
    seen: list[str] = []

    async def token_reviews(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        review = await request.json()
        return web.json_response(
            {
                **review,
                "status": {
                    "authenticated": True,
                    "user": {"username": "system:serviceaccount:team-a:app"},
                    "audiences": review["spec"]["audiences"],
                },
            },
            status=201,
        )

    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", token_reviews)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("gateway-sa-token\n")
    (account / "namespace").write_text("team-a")
    ca.cert_pem.write_to_path(str(account / "ca.crt"))
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    try:
        server = in_cluster_api(env, account)
        assert (server.url, server.namespace) == (f"https://127.0.0.1:{port}", "team-a")
        auth = KubernetesAuthenticator(KubernetesApi(server), audience=AUDIENCE, namespace=NS)
        try:
            principal = await auth.authenticate(bearer("caller-token"))
        finally:
            await auth.close()
        assert principal.name == "system:serviceaccount:team-a:app"
        assert seen == ["Bearer gateway-sa-token"]

        # A server certificate from another CA is refused: fail closed, not "trust all".
        (account / "ca.crt").write_bytes(trustme.CA().cert_pem.bytes())
        stranger = KubernetesAuthenticator(
            KubernetesApi(in_cluster_api(env, account)), audience=AUDIENCE, namespace=NS
        )
        try:
            with pytest.raises(AuthUnavailable, match="unavailable"):
                await stranger.authenticate(bearer("caller-token"))
        finally:
            await stranger.close()
        assert len(seen) == 1
    finally:
        await runner.cleanup()


def test_the_pods_token_is_reread_as_kubelet_rotates_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first")
    clock = FakeClock()
    header = _TokenFile(path, clock)
    assert header() == "Bearer first"
    path.write_text("second")
    clock.advance(59)
    assert header() == "Bearer first"
    clock.advance(2)
    assert header() == "Bearer second"


def test_outside_a_pod_in_cluster_config_explains_itself(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster_api({}, tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="automountServiceAccountToken"):
        in_cluster_api(env, tmp_path)
    (tmp_path / "token").write_text("t")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
    assert in_cluster_api(env, tmp_path).url == "https://[fd00::1]:443"


# --------------------------------------------------------------------------- the cache


async def test_failed_reviews_reach_every_waiter_and_are_not_cached() -> None:
    cache: ReviewCache[str, str] = ReviewCache(CachePolicy())
    calls = 0
    gate = asyncio.Event()

    async def failing() -> tuple[bool, str]:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("API server down")

    waiters = [asyncio.create_task(cache.get("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(r) for r in results] == ["API server down"] * 3
    assert calls == 1

    async def succeeding() -> tuple[bool, str]:
        return True, "ok"

    assert await cache.get("k", succeeding) == (True, "ok")


async def test_a_caller_that_goes_away_does_not_cancel_the_review_others_wait_for() -> None:
    cache: ReviewCache[str, str] = ReviewCache(CachePolicy())
    gate = asyncio.Event()

    async def slow() -> tuple[bool, str]:
        await gate.wait()
        return False, "denied"

    first = asyncio.create_task(cache.get("k", slow))
    second = asyncio.create_task(cache.get("k", slow))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == (False, "denied")
    assert await cache.get("k", slow) == (False, "denied")  # cached: no new review


async def test_the_cache_is_bounded() -> None:
    cache: ReviewCache[int, int] = ReviewCache(CachePolicy(maxsize=3))
    reviews = 0

    def review_of(n: int) -> Callable[[], Awaitable[tuple[bool, int]]]:
        async def review() -> tuple[bool, int]:
            nonlocal reviews
            reviews += 1
            return True, n

        return review

    for n in range(5):
        await cache.get(n, review_of(n))
    assert reviews == 5
    await cache.get(4, review_of(4))
    assert reviews == 5, "recent entries stay"
    await cache.get(0, review_of(0))
    assert reviews == 6, "the oldest went when the cache was full"


# --------------------------------------------------------------------------- settings


def test_build_auth_per_mode(
    tmp_path: Path, cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert isinstance(build_auth().current, AllowAnonymous)
    auth_file = auth_file_with(tmp_path / "auth.yaml", [{"name": "a", "token": "t"}])
    assert isinstance(build_auth("file", auth_file).current, BearerTokenAuthenticator)

    holder = build_auth("kubernetes", auth_file, kubeconfig=cluster.kubeconfig)
    kube = holder.current
    assert isinstance(kube, KubernetesAuthenticator)
    assert (kube.audience, kube.namespace) == ("servegate", "default")  # kubeconfig context's
    assert kube.static is not None and kube.static.lookup("t") is not None
    assert kube.api.server.url == cluster.url
    auth_file_with(auth_file, [{"name": "b", "token": "u"}])
    holder.reload()
    reloaded = holder.current
    assert isinstance(reloaded, KubernetesAuthenticator) and reloaded.api is kube.api
    assert reloaded.static is not None and reloaded.static.lookup("u") is not None

    explicit = build_auth("kubernetes", kubeconfig=cluster.kubeconfig, namespace="ml", audience="a")
    assert isinstance(explicit.current, KubernetesAuthenticator)
    assert (explicit.current.audience, explicit.current.namespace) == ("a", "ml")

    with pytest.raises(AuthConfigError, match="--auth kubernetes: cannot use the kubeconfig"):
        build_auth("kubernetes", kubeconfig=tmp_path / "missing.yaml")


def test_a_bearer_token_that_is_not_ascii_is_refused_before_hashing() -> None:
    """aiohttp keeps non-UTF-8 header bytes as lone surrogates, which cannot be encoded."""
    with pytest.raises(Unauthenticated, match="Invalid access token"):
        bearer_token({"Authorization": "Bearer \udcff\udcfe"})
