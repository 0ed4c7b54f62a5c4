"""Offline simulators of the upstream LLM providers the gateway talks to.

Each simulator is a small aiohttp application speaking one provider's real wire
protocol (paths, auth headers, JSON shapes, SSE framing, error bodies) with
deterministic answers, plus a ``/_sim`` control API to inject faults and inspect the
requests received. They let the gateway's tests, and users' CI, run without network
access or provider accounts. See :mod:`.faults` for the control API and
:func:`run_simulators` to serve them.

Names resolve lazily (PEP 562): importing this package, or its light ``ports`` module, does
not load every simulator and its provider SDK.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Authenticator": "openai",
    "AzureSimConfig": "server",
    "COGNITIVE_SERVICES_AUDIENCE": "tokens",
    "CustomSimConfig": "server",
    "DEFAULT_AZURE_API_VERSIONS": "azure_openai",
    "EntraSimConfig": "server",
    "Fault": "faults",
    "FaultSpecError": "faults",
    "IssuedToken": "tokens",
    "OpenAISimConfig": "server",
    "RecordedRequest": "faults",
    "RunningSimulator": "server",
    "RunningSimulators": "server",
    "SimulatorConfig": "server",
    "SimulatorControl": "faults",
    "TokenRegistry": "tokens",
    "bearer_key_auth": "openai",
    "control_of": "faults",
    "create_azure_openai_app": "azure_openai",
    "create_custom_app": "custom",
    "create_entra_app": "entra",
    "create_judge_app": "judge",
    "create_openai_app": "openai",
    "custom_auth": "custom",
    "run_simulators": "server",
    "serve_forever": "server",
    "server_ssl_context": "tls",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "COGNITIVE_SERVICES_AUDIENCE",
    "DEFAULT_AZURE_API_VERSIONS",
    "Authenticator",
    "AzureSimConfig",
    "CustomSimConfig",
    "EntraSimConfig",
    "Fault",
    "FaultSpecError",
    "IssuedToken",
    "OpenAISimConfig",
    "RecordedRequest",
    "RunningSimulator",
    "RunningSimulators",
    "SimulatorConfig",
    "SimulatorControl",
    "TokenRegistry",
    "bearer_key_auth",
    "control_of",
    "create_azure_openai_app",
    "create_custom_app",
    "create_entra_app",
    "create_judge_app",
    "create_openai_app",
    "custom_auth",
    "run_simulators",
    "serve_forever",
    "server_ssl_context",
]
