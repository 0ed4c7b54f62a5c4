"""A fake Kubernetes API server for the benchmark: TokenReviews and SubjectAccessReviews only.

``servegate serve --auth kubernetes`` checks each caller's bearer token with a TokenReview
and each query with a SubjectAccessReview, and caches the answers
(``servegate.auth.cache``). This server answers both reviews as kube-apiserver shapes them
(``POST /apis/authentication.k8s.io/v1/tokenreviews`` and
``POST /apis/authorization.k8s.io/v1/subjectaccessreviews``, 201 with the review and its
``status``), after ``--latency-ms`` (1 ms by default: an API server nearby), and counts
what it answered: ``GET /_counts`` → ``{"tokenreviews": n, "subjectaccessreviews": m, ...}``.

- **The gateway** must send the kubeconfig's token (:data:`GATEWAY_TOKEN`), else 401.
- **Tokens**: :data:`TOKEN` is a projected token of the ServiceAccount
  :data:`SERVICE_ACCOUNT` for the audience :data:`AUDIENCE`. So is every token
  ``TOKEN + "." + anything`` (:data:`FRESH_PREFIX`), each a credential of its own (the
  ``authentication.kubernetes.io/credential-id`` extra differs, as kube-apiserver 1.30+
  reports a token's JTI), so a client sending a new one per request makes every review a
  cache miss. Any other token is not authenticated, and an allowed token reviewed for
  another audience is refused as kube-apiserver does (no common audience).
- **Access**: the ServiceAccount may ``query`` the ``servingendpoints.servegate.io`` named
  by ``--endpoint`` (``bench-chat`` by default) in :data:`NAMESPACE`; anything else is
  denied (``allowed: false``), as RBAC without a matching RoleBinding answers.

Plain HTTP: the gateway's client takes the kubeconfig's ``server`` URL as it is, and TLS
would only add the same handshake once per pooled connection.

    python bench/fake_kube.py --port 9300 [--latency-ms 1] [--kubeconfig /tmp/kubeconfig]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

TOKEN: Final = "bench-sa-token-4f1c2e"
FRESH_PREFIX: Final = TOKEN + "."
GATEWAY_TOKEN: Final = "bench-gateway-token-9d0b7a"
NAMESPACE: Final = "bench"
AUDIENCE: Final = "servegate"
SERVICE_ACCOUNT: Final = f"system:serviceaccount:{NAMESPACE}:bench-client"
SERVICE_ACCOUNT_UID: Final = "6c1f5b0e-3d1a-4a8e-9b7e-0b2a1c4d5e6f"
CREDENTIAL_ID: Final = "authentication.kubernetes.io/credential-id"
TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
DEFAULT_ENDPOINTS: Final = ("bench-chat",)


@dataclass
class Counts:
    tokenreviews: int = 0  # TokenReviews answered (201)
    authenticated: int = 0  # ... of which authenticated the token
    subjectaccessreviews: int = 0  # SubjectAccessReviews answered (201)
    allowed: int = 0  # ... of which allowed the query
    refused: int = 0  # requests refused: not the gateway's credential (401) or malformed (400)


@dataclass(frozen=True)
class Options:
    latency_s: float = 0.001
    endpoints: frozenset[str] = frozenset(DEFAULT_ENDPOINTS)


COUNTS = web.AppKey("counts", Counts)
OPTIONS = web.AppKey("options", Options)


def _status_error(code: int, reason: str, message: str) -> web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    body |= {"message": message, "reason": reason, "code": code}
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


async def _review(request: web.Request, kind: str) -> dict[str, Any] | web.Response:
    """The posted review, after the API server's latency; or the error to answer."""
    counts = request.app[COUNTS]
    if request.headers.get("Authorization") != f"Bearer {GATEWAY_TOKEN}":
        counts.refused += 1
        return _status_error(401, "Unauthorized", "Unauthorized")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or body.get("kind") != kind:
        counts.refused += 1
        return _status_error(400, "BadRequest", f"the request body is not a {kind}")
    latency = request.app[OPTIONS].latency_s
    if latency > 0:
        await asyncio.sleep(latency)
    return body


def _answer(body: dict[str, Any], status: dict[str, Any]) -> web.Response:
    # kube-apiserver echoes the spec (a TokenReview's token included) with the status.
    answer = {
        "kind": body["kind"],
        "apiVersion": body.get("apiVersion"),
        "metadata": {"creationTimestamp": None},
        "spec": body.get("spec") or {},
        "status": status,
    }
    return web.Response(status=201, body=orjson.dumps(answer), content_type="application/json")


def _user(token: str) -> dict[str, Any]:
    jti = hashlib.sha256(token.encode()).hexdigest()[:32]
    return {
        "username": SERVICE_ACCOUNT,
        "uid": SERVICE_ACCOUNT_UID,
        "groups": [
            "system:serviceaccounts",
            f"system:serviceaccounts:{NAMESPACE}",
            "system:authenticated",
        ],
        "extra": {CREDENTIAL_ID: [f"JTI={jti}"]},
    }


async def token_reviews(request: web.Request) -> web.Response:
    body = await _review(request, "TokenReview")
    if isinstance(body, web.Response):
        return body
    counts = request.app[COUNTS]
    counts.tokenreviews += 1
    spec = body.get("spec") or {}
    token = spec.get("token")
    wanted = list(spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"])
    if not isinstance(token, str) or not (token == TOKEN or token.startswith(FRESH_PREFIX)):
        return _answer(body, {"user": {}, "error": "[invalid bearer token, token lookup failed]"})
    if AUDIENCE not in wanted:
        error = f"[invalid bearer token, token audiences [{AUDIENCE}] is invalid for {wanted}]"
        return _answer(body, {"user": {}, "error": error})
    counts.authenticated += 1
    status = {"authenticated": True, "user": _user(token), "audiences": [AUDIENCE]}
    return _answer(body, status)


async def access_reviews(request: web.Request) -> web.Response:
    body = await _review(request, "SubjectAccessReview")
    if isinstance(body, web.Response):
        return body
    counts = request.app[COUNTS]
    counts.subjectaccessreviews += 1
    spec = body.get("spec") or {}
    attributes = spec.get("resourceAttributes") or {}
    allowed = (
        spec.get("user") == SERVICE_ACCOUNT
        and attributes.get("namespace") == NAMESPACE
        and attributes.get("verb") == "query"
        and attributes.get("group") == "servegate.io"
        and attributes.get("resource") == "servingendpoints"
        and attributes.get("name") in request.app[OPTIONS].endpoints
    )
    if not allowed:
        return _answer(body, {"allowed": False})
    counts.allowed += 1
    reason = f'RBAC: allowed by RoleBinding "bench-query/{NAMESPACE}" of Role "bench-query"'
    return _answer(body, {"allowed": True, "reason": reason})


async def counts(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[COUNTS]))


def create_app(options: Options) -> web.Application:
    app = web.Application()
    app[OPTIONS] = options
    app[COUNTS] = Counts()
    app.router.add_post(TOKEN_REVIEWS, token_reviews)
    app.router.add_post(ACCESS_REVIEWS, access_reviews)
    app.router.add_get("/_counts", counts)
    return app


def kubeconfig(url: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A kubeconfig for the gateway: the server at ``url``, :data:`GATEWAY_TOKEN` as its
    credential, ``namespace`` as the context's namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bench", "cluster": {"server": url}}],
        "users": [{"name": "bench-gateway", "user": {"token": GATEWAY_TOKEN}}],
        "contexts": [
            {
                "name": "bench",
                "context": {"cluster": "bench", "user": "bench-gateway", "namespace": namespace},
            }
        ],
        "current-context": "bench",
    }


def write_kubeconfig(path: Path, url: str) -> Path:
    """Write :func:`kubeconfig` to ``path`` (JSON, which is YAML too; mode 600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kubeconfig(url), indent=2) + "\n")
    path.chmod(0o600)
    return path


async def serve(host: str, port: int, options: Options) -> None:
    runner = web.AppRunner(create_app(options), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    print(f"fake Kubernetes API server listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument(
        "--latency-ms", type=float, default=1.0, help="delay before answering a review (1 ms)"
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        help="an endpoint the ServiceAccount may query (repeat; default: bench-chat)",
    )
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for it here")
    args = parser.parse_args()
    options = Options(args.latency_ms / 1000, frozenset(args.endpoint or DEFAULT_ENDPOINTS))
    if args.kubeconfig:
        write_kubeconfig(args.kubeconfig, f"http://{args.host}:{args.port}")
    asyncio.run(serve(args.host, args.port, options))


if __name__ == "__main__":
    main()
