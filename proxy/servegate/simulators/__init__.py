"""Offline simulators of the upstream LLM providers the gateway talks to.

Each simulator is a small aiohttp application speaking one provider's real wire
protocol (paths, auth headers, JSON shapes, SSE framing, error bodies) with
deterministic answers, plus a ``/_sim`` control API to inject faults and inspect the
requests received. They let the gateway's tests, and users' CI, run without network
access or provider accounts. See :mod:`.faults` for the control API and
:func:`run_simulators` to serve them.
"""

from .azure_openai import DEFAULT_AZURE_API_VERSIONS, create_azure_openai_app
from .custom import create_custom_app, custom_auth
from .entra import create_entra_app
from .faults import Fault, FaultSpecError, RecordedRequest, SimulatorControl, control_of
from .openai import Authenticator, bearer_key_auth, create_openai_app
from .server import (
    AzureSimConfig,
    CustomSimConfig,
    EntraSimConfig,
    OpenAISimConfig,
    RunningSimulator,
    RunningSimulators,
    SimulatorConfig,
    run_simulators,
    serve_forever,
)
from .tls import server_ssl_context
from .tokens import COGNITIVE_SERVICES_AUDIENCE, IssuedToken, TokenRegistry

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
    "create_openai_app",
    "custom_auth",
    "run_simulators",
    "serve_forever",
    "server_ssl_context",
]
