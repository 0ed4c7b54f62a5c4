"""Running the simulators as real HTTP servers.

:func:`run_simulators` starts the selected simulators on loopback (port 0 picks a
free port) for the duration of an ``async with`` block, for tests and for
:func:`serve_forever`, which the ``servegate simulate`` CLI subcommand calls. The
Entra simulator shares its :class:`~.tokens.TokenRegistry` with the Azure one, so
tokens it issues are accepted there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

from aiohttp import web

from .ai21 import create_ai21_app
from .anthropic import create_anthropic_app
from .azure_openai import create_azure_openai_app
from .bedrock import create_bedrock_app
from .cohere import create_cohere_app
from .custom import create_custom_app
from .entra import create_entra_app
from .judge import create_judge_app
from .openai import create_openai_app
from .ports import EXAMPLE_PORTS
from .tls import server_ssl_context
from .tokens import TokenRegistry
from .vertex import create_vertex_app

__all__ = [
    "EXAMPLE_PORTS",
    "PROVIDER_SIMULATORS",
    "AzureSimConfig",
    "CustomSimConfig",
    "EntraSimConfig",
    "OpenAISimConfig",
    "ProviderSimConfig",
    "RunningSimulator",
    "RunningSimulators",
    "SimulatorConfig",
    "run_simulators",
    "serve_forever",
]

log = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class OpenAISimConfig:
    port: int = 0
    api_keys: tuple[str, ...] = ("sk-sim-openai",)


@dataclass(frozen=True)
class AzureSimConfig:
    port: int = 0
    api_keys: tuple[str, ...] = ("sim-azure-key",)
    #: deployment -> model; None accepts any deployment (model = deployment name).
    deployments: Mapping[str, str] | None = None


@dataclass(frozen=True)
class EntraSimConfig:
    port: int = 0
    clients: Mapping[str, str] = field(default_factory=lambda: {"sim-client": "sim-secret"})
    token_lifetime_s: int = 3599
    #: PEM certificate chain and key; without them the simulator serves plain http
    #: (which MSAL rejects, but raw OAuth clients can use).
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class CustomSimConfig:
    port: int = 0
    bearer_token: str | None = None
    api_key_header: tuple[str, str] | None = None


@dataclass(frozen=True)
class ProviderSimConfig:
    """One of the provider simulators in ``PROVIDER_SIMULATORS``: its port, and keyword
    arguments for its app factory (none = the simulator's defaults, whose credentials are
    the ones examples/secrets/ holds)."""

    port: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


# Simulators configured by ProviderSimConfig: name → app factory.
PROVIDER_SIMULATORS: dict[str, Callable[..., web.Application]] = {
    "anthropic": create_anthropic_app,
    "cohere": create_cohere_app,
    "bedrock": create_bedrock_app,
    "vertex": create_vertex_app,
    "ai21": create_ai21_app,
    "judge": create_judge_app,
}


@dataclass(frozen=True)
class SimulatorConfig:
    """Which simulators to run and how; a ``None`` section is not started."""

    host: str = "127.0.0.1"
    openai: OpenAISimConfig | None = field(default_factory=OpenAISimConfig)
    azure: AzureSimConfig | None = field(default_factory=AzureSimConfig)
    entra: EntraSimConfig | None = field(default_factory=EntraSimConfig)
    custom: CustomSimConfig | None = field(default_factory=CustomSimConfig)
    providers: Mapping[str, ProviderSimConfig] = field(default_factory=dict)
    """Other provider simulators by name (a key of ``PROVIDER_SIMULATORS``)."""


@dataclass(frozen=True)
class RunningSimulator:
    """One started simulator: its root URL (where ``/_sim`` lives) and app."""

    name: str
    root_url: str
    app: web.Application


@dataclass(frozen=True)
class RunningSimulators:
    tokens: TokenRegistry
    openai: RunningSimulator | None = None
    azure: RunningSimulator | None = None
    entra: RunningSimulator | None = None
    custom: RunningSimulator | None = None
    others: Mapping[str, RunningSimulator] = field(default_factory=dict)

    def root_url(self, name: str) -> str:
        """The root URL of any running simulator, by name."""
        sim = {s.name: s for s in self.all()}.get(name)
        return _started(sim).root_url

    @property
    def openai_url(self) -> str:
        """OpenAI ``base_url``, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{_started(self.openai).root_url}/v1"

    @property
    def azure_url(self) -> str:
        """Azure OpenAI ``azure_endpoint``, e.g. ``http://127.0.0.1:PORT``."""
        return _started(self.azure).root_url

    @property
    def entra_authority_host(self) -> str:
        """Authority host (``https://127.0.0.1:PORT`` with TLS); append ``/<tenant>``."""
        return _started(self.entra).root_url

    @property
    def custom_url(self) -> str:
        """OpenAI-compatible ``base_url``, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{_started(self.custom).root_url}/v1"

    def all(self) -> list[RunningSimulator]:
        fixed = [s for s in (self.openai, self.azure, self.entra, self.custom) if s is not None]
        return fixed + list(self.others.values())


def _started(sim: RunningSimulator | None) -> RunningSimulator:
    if sim is None:
        raise RuntimeError("that simulator is not running (its config section was None)")
    return sim


async def _start(
    stack: AsyncExitStack,
    name: str,
    app: web.Application,
    host: str,
    port: int,
    ssl_context: SSLContext | None = None,
) -> RunningSimulator:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound_port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    url_host = f"[{host}]" if ":" in host else host
    return RunningSimulator(name, f"{scheme}://{url_host}:{bound_port}", app)


@asynccontextmanager
async def run_simulators(config: SimulatorConfig) -> AsyncIterator[RunningSimulators]:
    """Serve the configured simulators until the block exits, then shut them down
    (streams parked on a gate are released so shutdown is prompt)."""
    tokens = TokenRegistry()
    async with AsyncExitStack() as stack:
        started: dict[str, RunningSimulator] = {}
        if config.openai is not None:
            app = create_openai_app(api_keys=config.openai.api_keys)
            started["openai"] = await _start(stack, "openai", app, config.host, config.openai.port)
        if config.azure is not None:
            app = create_azure_openai_app(
                api_keys=config.azure.api_keys,
                entra_tokens=tokens,
                deployments=config.azure.deployments,
            )
            started["azure"] = await _start(stack, "azure", app, config.host, config.azure.port)
        if config.entra is not None:
            entra = config.entra
            if (entra.tls_cert is None) != (entra.tls_key is None):
                raise ValueError("the Entra simulator needs both tls_cert and tls_key, or neither")
            context = (
                server_ssl_context(entra.tls_cert, entra.tls_key)
                if entra.tls_cert is not None and entra.tls_key is not None
                else None
            )
            app = create_entra_app(
                clients=entra.clients, tokens=tokens, token_lifetime_s=entra.token_lifetime_s
            )
            started["entra"] = await _start(stack, "entra", app, config.host, entra.port, context)
        if config.custom is not None:
            app = create_custom_app(
                api_key_header=config.custom.api_key_header,
                bearer_token=config.custom.bearer_token,
            )
            started["custom"] = await _start(stack, "custom", app, config.host, config.custom.port)
        others: dict[str, RunningSimulator] = {}
        for name, section in config.providers.items():
            app = PROVIDER_SIMULATORS[name](**section.options)
            others[name] = await _start(stack, name, app, config.host, section.port)
        yield RunningSimulators(
            tokens=tokens,
            openai=started.get("openai"),
            azure=started.get("azure"),
            entra=started.get("entra"),
            custom=started.get("custom"),
            others=others,
        )


async def serve_forever(
    config: SimulatorConfig,
    *,
    on_ready: Callable[[RunningSimulators], None] | None = None,
) -> None:
    """Run the simulators until SIGINT/SIGTERM (or cancellation).

    Contract for the ``servegate simulate`` CLI: call it under ``asyncio.run``. Once
    every simulator listens, ``on_ready`` receives their URLs (by default they are
    logged at INFO on ``servegate.simulators.server``). SIGINT or SIGTERM returns
    normally after a clean shutdown; cancelling the task shuts down, then re-raises
    :class:`asyncio.CancelledError`. Startup errors (port in use, bad TLS files)
    propagate before ``on_ready`` is called.
    """
    async with run_simulators(config) as running:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available off the main thread or on Windows: cancellation still works.
            with suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            if on_ready is not None:
                on_ready(running)
            else:
                for sim in running.all():
                    log.info("simulator %s listening on %s", sim.name, sim.root_url)
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
