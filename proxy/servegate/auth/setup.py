"""The gateway's auth from its settings: one call for ``create_app``.

``--auth file`` (the default): the auth file's static tokens, or anonymous callers without
one. ``--auth kubernetes``: Kubernetes identities (TokenReview + SubjectAccessReview),
with the auth file's static tokens beside them when one is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from servegate.auth.callers import (
    AllowAnonymous,
    AuthFileError,
    AuthHolder,
    BearerTokenAuthenticator,
)
from servegate.auth.kube import DEFAULT_AUDIENCE, KubernetesAuthenticator
from servegate.auth.kubeapi import KubeConfigError, KubernetesApi, find_api_server

AuthMode = Literal["file", "kubernetes"]


class AuthConfigError(AuthFileError):
    """Kubernetes auth cannot start (no API server configuration). An ``AuthFileError``,
    so the CLI reports it the same way: one line, exit status 2."""


def build_auth(
    mode: AuthMode = "file",
    auth_file: Path | None = None,
    *,
    audience: str = DEFAULT_AUDIENCE,
    namespace: str | None = None,
    kubeconfig: Path | None = None,
    manage_group: str | None = None,
) -> AuthHolder:
    """The live auth for a gateway process. Reads the files now, so a bad auth file or a
    missing kubeconfig fails at start, not on the first request.

    The SubjectAccessReview namespace is ``namespace`` if given, else the pod's (or the
    kubeconfig context's) namespace, else ``default``.
    """
    static = (
        BearerTokenAuthenticator.from_file(auth_file, manage_group=manage_group)
        if auth_file is not None
        else None
    )
    if mode == "file":
        if static is None:
            return AuthHolder(AllowAnonymous())
        return AuthHolder(static, auth_file, manage_group=manage_group)
    try:
        server = find_api_server(kubeconfig)
    except KubeConfigError as exc:
        raise AuthConfigError(f"--auth kubernetes: {exc}") from None
    authenticator = KubernetesAuthenticator(
        KubernetesApi(server),
        audience=audience,
        namespace=namespace or server.namespace or "default",
        static=static,
    )
    return AuthHolder(authenticator, auth_file, rebuild=authenticator.with_static)  # SARs decide
