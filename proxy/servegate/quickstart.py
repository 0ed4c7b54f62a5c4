"""The offline quick start and `servegate simulate`: the provider simulators, wired to the
examples. Kept out of cli.py so that `servegate serve` never loads the simulators."""

from __future__ import annotations

import argparse
from pathlib import Path

from servegate.app import GatewaySettings
from servegate.server import run_gateway
from servegate.simulators.ports import EXAMPLE_PORTS
from servegate.simulators.server import (
    PROVIDER_SIMULATORS,
    AzureSimConfig,
    CustomSimConfig,
    EntraSimConfig,
    OpenAISimConfig,
    ProviderSimConfig,
    RunningSimulators,
    SimulatorConfig,
    run_simulators,
    serve_forever,
)

# The credentials examples/secrets/ holds, accepted by the quickstart's simulators.
QUICKSTART_OPENAI_KEY = "sk-servegate-simulator"
QUICKSTART_CUSTOM_TOKEN = "local-llm-token"


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(EXAMPLE_PORTS)
    if unknown:
        raise SystemExit(f"servegate: unknown simulators: {', '.join(sorted(unknown))}")
    keys = tuple(args.openai_key or [QUICKSTART_OPENAI_KEY])
    ports = {name: getattr(args, f"{name}_port") for name in EXAMPLE_PORTS}
    return SimulatorConfig(
        host=args.host,
        openai=OpenAISimConfig(port=ports["openai"], api_keys=keys) if "openai" in only else None,
        azure=AzureSimConfig(port=ports["azure"], api_keys=keys) if "azure" in only else None,
        custom=CustomSimConfig(port=ports["custom"], bearer_token=args.custom_token)
        if "custom" in only
        else None,
        entra=EntraSimConfig(port=ports["entra"], tls_cert=args.tls_cert, tls_key=args.tls_key)
        if "entra" in only
        else None,
        providers={
            name: ProviderSimConfig(port=ports[name])
            for name in only
            if name in PROVIDER_SIMULATORS
        },
    )


def _print_simulators(running: RunningSimulators) -> None:
    for sim in running.all():
        print(f"servegate: simulator {sim.name} listening on {sim.root_url}", flush=True)


QUICKSTART_TRY = """
Try it (in another terminal):

  curl -s http://127.0.0.1:{port}/serving-endpoints/chat/invocations \\
    -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl -sN http://127.0.0.1:{port}/serving-endpoints/chat/invocations \\
    -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Stream a story"}}], "stream": true}}'

  curl -s http://127.0.0.1:{port}/serving-endpoints/embeddings/invocations \\
    -H 'Content-Type: application/json' -d '{{"input": ["servegate"]}}'

  python3 -c 'from openai import OpenAI; c = OpenAI(base_url="http://127.0.0.1:{port}/serving-endpoints", api_key="unused"); print(c.chat.completions.create(model="chat", messages=[{{"role": "user", "content": "Hi"}}]).choices[0].message.content)'

  curl -s http://127.0.0.1:{port}/api/2.0/serving-endpoints    # every endpoint and its state

The chat endpoint splits 80/20 between gpt-4o-mini and local-llama: see the served-model-name header.
Press Ctrl-C to stop.
"""


async def run_quickstart(examples: Path, port: int) -> None:
    config = SimulatorConfig(
        openai=OpenAISimConfig(port=EXAMPLE_PORTS["openai"], api_keys=(QUICKSTART_OPENAI_KEY,)),
        custom=CustomSimConfig(port=EXAMPLE_PORTS["custom"], bearer_token=QUICKSTART_CUSTOM_TOKEN),
        azure=None,
        entra=None,
        providers={
            name: ProviderSimConfig(port=EXAMPLE_PORTS[name]) for name in PROVIDER_SIMULATORS
        },
    )
    async with run_simulators(config) as running:
        _print_simulators(running)
        settings = GatewaySettings(
            paths=(examples,), secrets_dir=examples / "secrets", access_log=True
        )
        await run_gateway(settings, "127.0.0.1", port, banner=QUICKSTART_TRY.format(port=port))


async def run_simulate(args: argparse.Namespace) -> None:
    await serve_forever(simulator_config(args), on_ready=_print_simulators)
