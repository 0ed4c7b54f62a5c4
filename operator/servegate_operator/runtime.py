"""Process-wide operator state: settings from the environment and the API client.

kopf discovers handlers at import time, so the handlers module reads what it needs from
this one object; ``configure_kopf`` applies the settings kopf itself needs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from servegate_operator.kube import Kube
from servegate_operator.settings import OperatorSettings, settings_from_env

FINALIZER = "servegate.io/finalizer"


@dataclass
class Runtime:
    settings: OperatorSettings = field(default_factory=settings_from_env)
    namespaces: tuple[str, ...] = ()
    """The namespaces the operator watches (``--namespace``); empty: all of them."""
    peering: str | None = None
    """The kopf peering object's name (``--peering``); None: standalone."""
    peering_lifetime_s: int = 60
    """How long a silent peer counts as alive (``--peering-lifetime``)."""
    reconciles: int = 0
    _kube: Kube | None = None

    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(_api_client())
        return self._kube

    def use(self, kube: Kube, settings: OperatorSettings | None = None) -> None:
        """Point the handlers at another API client (and settings): tests, embedding."""
        self._kube = kube
        if settings is not None:
            self.settings = settings

    def configure_kopf(self, settings: kopf.OperatorSettings) -> None:
        # Our own finalizer name and kopf's bookkeeping in annotations: status stays ours.
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="servegate.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="servegate.io", key="last-handled-configuration"
        )
        # Watches are re-established regularly, and API calls time out (kopf #698, #204).
        settings.watching.server_timeout = 120
        settings.watching.client_timeout = 150
        settings.networking.request_timeout = 30
        settings.posting.level = logging.INFO
        # A deleted endpoint whose reconcile timer is mid-run keeps its finalizer until the
        # timer has exited; kopf looks again every cancellation_polling seconds, 60 by
        # default, which held a `kubectl delete` for a whole minute.
        settings.background.cancellation_polling = 1.0
        # A failed reconcile (the API server answered 500 or 409, or timed out) is retried
        # after this many seconds, not kopf's default of 60.
        settings.execution.default_backoff = 5
        settings.peering.lifetime = self.peering_lifetime_s


def _api_client() -> k8s.ApiClient:
    """In-cluster config in a pod, else KUBECONFIG / ~/.kube/config (as kopf does).

    KUBECONFIG is read now, not at the client library's import (which caches it).
    """
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    return k8s.ApiClient(configuration)


RUNTIME = Runtime()
