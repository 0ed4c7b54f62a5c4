"""The scenarios and the gateways under test.

Every scenario sends the same OpenAI-shaped request to every gateway, on the same path
(servegate's OpenAI-compatible routes take the endpoint name as ``model``; the fake
upstream ignores it), so only the base URL changes between gateways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fake_kube import TOKEN
from gateway_config import CHAT, CLAUDE, EMBED, GOVERNED, LIMITED, PII, USAGE

Kind = Literal["direct", "bare", "servegate"]
Auth = Literal["file", "kubernetes"]

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]


def chat(model: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    body["temperature"] = 0.2
    if stream:
        body["stream"] = True
    return body


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    body: dict[str, Any]
    concurrency: int
    latency_run: bool = False  # c=1: measured with loadgen for exact percentiles
    stream: bool = False  # also measure time to first byte with loadgen
    servegate_only: bool = False  # needs translation or limits: n/a for direct and bare
    needs_redis: bool = False
    baseline: str | None = None  # the scenario it is compared with, on the same gateway
    bearer: str | None = None  # every request sends "Authorization: Bearer <bearer>"
    fresh_tokens: bool = False  # ... "<bearer>.<run>-<n>" instead: a new token per request
    kube_auth: bool = False  # only for a servegate started with --auth kubernetes


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "chat-c1",
        "Unary chat, c=1 (added latency)",
        "/v1/chat/completions",
        chat(CHAT),
        1,
        latency_run=True,
    ),
    Scenario("chat-c64", "Unary chat, c=64 (throughput)", "/v1/chat/completions", chat(CHAT), 64),
    Scenario(
        "limited-c64",
        "Unary chat with call rate limits on Redis (endpoint + user), c=64",
        "/v1/chat/completions",
        chat(LIMITED),
        64,
        servegate_only=True,
        needs_redis=True,
        baseline="chat-c64",
    ),
    Scenario(
        "governed-c64",
        "Unary chat with usage tracking and PII masking (input and output), c=64",
        "/v1/chat/completions",
        chat(GOVERNED),
        64,
        servegate_only=True,
        baseline="chat-c64",
    ),
    Scenario(
        "usage-c64",
        "Unary chat with usage tracking alone, c=64",
        "/v1/chat/completions",
        chat(USAGE),
        64,
        servegate_only=True,
        baseline="chat-c64",
    ),
    Scenario(
        "pii-c64",
        "Unary chat with PII masking alone (input and output), c=64",
        "/v1/chat/completions",
        chat(PII),
        64,
        servegate_only=True,
        baseline="chat-c64",
    ),
    Scenario(
        "stream-c16",
        "Streamed chat, 50 chunks, c=16",
        "/v1/chat/completions",
        chat(CHAT, stream=True),
        16,
        stream=True,
    ),
    Scenario(
        "embed-c16",
        "Embeddings (1 input, 1536 dims), c=16",
        "/v1/embeddings",
        {"model": EMBED, "input": "The quick brown fox jumps over the lazy dog."},
        16,
    ),
    Scenario(
        "anthropic-c64",
        "Chat translated to Anthropic Messages, c=64",
        "/v1/chat/completions",
        chat(CLAUDE),
        64,
        servegate_only=True,
        baseline="chat-c64",
    ),
    # Kubernetes auth (bench/fake_kube.py answers the reviews), in this order on one gateway
    # process: the first request of kube-auth-c64 fills the caches, kube-auth-c1 finds them
    # warm, kube-auth-nocache (a new token every request) misses every time.
    Scenario(
        "kube-auth-c64",
        "Unary chat with Kubernetes auth, reviews cached (one token), c=64",
        "/v1/chat/completions",
        chat(CHAT),
        64,
        servegate_only=True,
        baseline="chat-c64",
        bearer=TOKEN,
        kube_auth=True,
    ),
    Scenario(
        "kube-auth-c1",
        "Unary chat with Kubernetes auth, reviews cached (one token), c=1 (added latency)",
        "/v1/chat/completions",
        chat(CHAT),
        1,
        latency_run=True,
        servegate_only=True,
        baseline="chat-c1",
        bearer=TOKEN,
        kube_auth=True,
    ),
    Scenario(
        "kube-auth-nocache",
        "Unary chat with Kubernetes auth, a new token every request (every review a cache "
        "miss), c=64",
        "/v1/chat/completions",
        chat(CHAT),
        64,
        servegate_only=True,
        baseline="chat-c64",
        bearer=TOKEN,
        fresh_tokens=True,
        kube_auth=True,
    ),
)
KUBE_AUTH = tuple(s.key for s in SCENARIOS if s.kube_auth)


@dataclass(frozen=True)
class GatewaySpec:
    name: str
    kind: Kind
    workers: int = 1
    cpus: str | None = None  # taskset CPU list; None for direct (no process)
    only: tuple[str, ...] | None = None  # scenario keys; None = every applicable one
    note: str = ""
    auth: Auth = "file"  # servegate's --auth
    baseline_gateway: str | None = None  # where its scenarios' baselines ran (None: itself)

    def runs(self, scenario: Scenario) -> bool:
        if self.only is not None and scenario.key not in self.only:
            return False
        if scenario.kube_auth != (self.auth == "kubernetes"):
            return False
        return self.kind == "servegate" or not scenario.servegate_only
