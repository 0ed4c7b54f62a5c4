"""The gateway's own connection to the Kubernetes API server, for TokenReviews and
SubjectAccessReviews.

Why not a Kubernetes client library: the gateway needs two create-only calls (POST a
review, read its ``status``), no watches, no object models. The ``kubernetes`` package is
synchronous (a thread per call), and ``kubernetes_asyncio`` would be one more large
dependency for two POSTs. So this is a small aiohttp client: one pooled session, bounded
timeouts, JSON in and out. The ``kubernetes`` package (already a dependency, for the
operator) is used only to *read a kubeconfig* outside a cluster, where its loader handles
every kubeconfig form (embedded or file certificates, tokens, exec plugins); it is imported
only then.

Where the API server is, and who the gateway is to it:

- in a pod: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, the cluster CA
  and the ServiceAccount token mounted at ``/var/run/secrets/kubernetes.io/serviceaccount``
  (the token is re-read every minute: kubelet rotates projected tokens);
- elsewhere (development, tests): a kubeconfig, as kubectl finds it (``--kubeconfig``,
  else ``$KUBECONFIG``, else ``~/.kube/config``).

Review requests carry callers' tokens: this module never logs a request or a response
body, and removes the token from any message the API server sends back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from servegate import __version__

log = logging.getLogger("servegate.auth")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS: Final = 60.0


class KubeConfigError(ValueError):
    """The API server's location or the gateway's credentials cannot be found."""


class ApiUnavailable(Exception):
    """A review got no answer: the API server is unreachable, failed, or refused the
    gateway itself. ``refused`` tells the last case (a configuration problem, not an
    outage). Messages never contain a token."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class ApiServer:
    """Where the API server is and how the gateway authenticates to it."""

    url: str
    ssl: ssl.SSLContext | bool
    """A context that trusts the cluster CA, or False to skip verification (kubeconfig
    ``insecure-skip-tls-verify``)."""
    authorization: Callable[[], str | None]
    """The gateway's ``Authorization`` header value, or None. It may read a file or run
    an exec plugin, so it is called off the event loop."""
    namespace: str | None = None
    """The namespace this configuration points at (the pod's, or the kubeconfig
    context's), for the gateway's SubjectAccessReviews when none is configured."""
    server_hostname: str | None = None
    """The name to verify the server certificate against, when it differs from the URL's
    host (kubeconfig ``tls-server-name``)."""


class _TokenFile:
    """The pod's ServiceAccount token, re-read when older than a minute (kubelet rewrites
    the projected token before it expires; a long-running gateway must follow)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._header: str | None = None
        self._read_at = -float("inf")

    def __call__(self) -> str | None:
        now = self._clock()
        if self._header is None or now - self._read_at >= TOKEN_REREAD_SECONDS:
            token = self._path.read_text().strip()
            self._header = f"Bearer {token}" if token else None
            self._read_at = now
        return self._header


def in_cluster_api(
    environ: Mapping[str, str] | None = None, directory: Path = SERVICE_ACCOUNT_DIR
) -> ApiServer:
    """The API server as a pod sees it: the service environment variables, the CA and
    the ServiceAccount token and namespace files."""
    environ = os.environ if environ is None else environ
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are not set): "
            "pass --kubeconfig"
        )
    token, ca = directory / "token", directory / "ca.crt"
    for required in (token, ca):
        if not required.is_file():
            raise KubeConfigError(
                f"{required} is missing: mount the gateway's ServiceAccount token "
                "(automountServiceAccountToken: true)"
            )
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 service IPs
    return ApiServer(
        url=f"https://{netloc}",
        ssl=ssl.create_default_context(cafile=str(ca)),
        authorization=_TokenFile(token),
        namespace=namespace or None,
    )


def kubeconfig_api(path: Path | None = None, context: str | None = None) -> ApiServer:
    """The API server of a kubeconfig context (the current one unless ``context``)."""
    # Imported here: ~0.4 s, and only this mode needs it.
    import kubernetes.client
    import kubernetes.config

    config_file = str(path) if path is not None else None
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(
            config_file=config_file,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubeConfigError(f"cannot use the kubeconfig {where}: {exc}") from None
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    namespace = (chosen or {}).get("context", {}).get("namespace")
    tls: ssl.SSLContext | bool = False
    if configuration.verify_ssl:
        verified = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if configuration.cert_file:
            verified.load_cert_chain(configuration.cert_file, configuration.key_file or None)
        tls = verified

    def authorization() -> str | None:
        # Runs the config's refresh hook (re-reads a token file, re-runs an expired exec
        # plugin), then gives the header value (the loader stores "Bearer <token>").
        value = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(value) if value else None

    return ApiServer(
        url=str(configuration.host).rstrip("/"),
        ssl=tls,
        authorization=authorization,
        namespace=namespace,
        server_hostname=getattr(configuration, "tls_server_name", None) or None,
    )


def find_api_server(kubeconfig: Path | None = None) -> ApiServer:
    """``--kubeconfig`` if given; else in-cluster in a pod; else the default kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_api()
    return kubeconfig_api(kubeconfig)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "<redacted>") if secret else text


class KubernetesApi:
    """POSTs review objects to the API server and returns the answers.

    Timeouts are short (the caller's request waits on them) and bounded; anything but a
    2xx JSON answer raises :class:`ApiUnavailable`, so callers fail closed. The session
    is opened on first use, on the running loop, and never follows proxy variables
    (those are for the providers; the API server is in-cluster).
    """

    def __init__(
        self, server: ApiServer, *, timeout: float = 5.0, connect_timeout: float = 2.0
    ) -> None:
        self.server = server
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._failing = False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.server.ssl, limit=64),
                timeout=self._timeout,
                trust_env=False,
                headers={"User-Agent": f"servegate/{__version__}", "Accept": "application/json"},
            )
        return self._session

    async def create(
        self, path: str, body: Mapping[str, Any], *, secret: str | None = None
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` and return the created object (its ``status``).

        ``secret`` (the caller's token) is scrubbed from every error message.
        """
        what = str(body.get("kind", path))
        try:
            authorization = await asyncio.to_thread(self.server.authorization)
        except Exception as exc:  # an unreadable token file, a failing exec plugin
            raise self._failed(
                f"the gateway's own credentials cannot be read: {exc}", what
            ) from None
        headers = {"Content-Type": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self._client().post(
                self.server.url + path,
                data=orjson.dumps(body),
                headers=headers,
                server_hostname=self.server.server_hostname,
            ) as response:
                payload = await response.read()
                status = response.status
        except TimeoutError:
            raise self._failed("the API server did not answer in time", what) from None
        except aiohttp.ClientError as exc:
            reason = _redact(str(exc) or type(exc).__name__, secret)
            raise self._failed(f"cannot reach the API server: {reason}", what) from None
        try:
            answer = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            answer = None
        if status in (401, 403):
            message = _redact(_status_message(answer), secret)
            raise self._failed(
                f"the API server refused the gateway's {what} ({status}: {message}); the "
                "gateway's ServiceAccount needs 'create' on tokenreviews.authentication.k8s.io "
                "and subjectaccessreviews.authorization.k8s.io (ClusterRole "
                "system:auth-delegator)",
                what,
                refused=True,
            )
        if not 200 <= status < 300 or not isinstance(answer, dict):
            message = _redact(_status_message(answer), secret)
            raise self._failed(f"the API server answered {status}: {message}", what)
        if self._failing:
            log.info("the Kubernetes API server answers reviews again")
            self._failing = False
        return answer

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | list[Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> ApiAnswer:
        """Any call with the gateway's own credentials (the control plane's reads and
        writes of ServingEndpoints and their Secrets), and its answer whatever the status.

        Raises :class:`ApiUnavailable` only when there is no answer (unreachable, timed
        out, credentials unreadable); an HTTP error is the caller's to interpret. Bodies may
        hold Secret values: nothing here logs them or puts them in an exception.
        """
        try:
            authorization = await asyncio.to_thread(self.server.authorization)
        except Exception as exc:
            raise ApiUnavailable(f"the gateway's own credentials cannot be read: {exc}") from None
        headers = {"Content-Type": content_type}
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self._client().request(
                method,
                self.server.url + path,
                data=orjson.dumps(body) if body is not None else None,
                headers=headers,
                server_hostname=self.server.server_hostname,
            ) as response:
                payload = await response.read()
                status = response.status
        except TimeoutError:
            raise ApiUnavailable("the API server did not answer in time") from None
        except aiohttp.ClientError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiUnavailable(f"cannot reach the API server: {reason}") from None
        try:
            answer = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            answer = None
        return ApiAnswer(status, answer if isinstance(answer, dict) else None)

    def _failed(self, reason: str, what: str, *, refused: bool = False) -> ApiUnavailable:
        """Log the first failure of a streak as a warning (not one line per request
        during an outage), later ones at debug level."""
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "%s failed, failing requests closed: %s", what, reason)
        self._failing = True
        return ApiUnavailable(reason, refused=refused)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """An API server's answer: the HTTP status and its JSON object (the object, or a
    ``Status`` on failure), or None when the body was empty or not a JSON object."""

    status: int
    body: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """A failure's ``Status.message``, never anything else of the body."""
        return _status_message(self.body)


def _status_message(answer: Any) -> str:
    """The message of a Kubernetes ``Status`` body, never anything else of the body."""
    if isinstance(answer, dict) and answer.get("kind") == "Status":
        return str(answer.get("message") or answer.get("reason") or "no message")
    return "no Status message"
