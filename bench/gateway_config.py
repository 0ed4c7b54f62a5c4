"""The servegate configuration the benchmark serves: manifests and secrets in a temp dir.

Four endpoints, all pointing at the fake upstream:

- ``bench-chat``: OpenAI chat (passthrough);
- ``bench-embed``: OpenAI embeddings;
- ``bench-claude``: chat translated to Anthropic's Messages API;
- ``bench-chat-limited``: OpenAI chat with endpoint and per-user call limits so high they
  never trip, so the cost of checking them (on Redis) is all that is measured.
- ``bench-chat-governed``: OpenAI chat with usage tracking (rows as JSON log lines, the
  default sink) and PII masking on input and output, so every request and answer is
  scanned and recorded.
- ``bench-chat-usage`` and ``bench-chat-pii``: each half of that alone (usage tracking;
  PII masking on input and output), so each feature's cost can be read separately.
- ``bench-slow-<i>`` (only when ``write_config`` is given ``slow_upstreams``): OpenAI chat
  (passthrough), one endpoint per upstream port, for ``bench/slow_streams.py``.

Manifests are written as JSON, which is YAML too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAT = "bench-chat"
EMBED = "bench-embed"
CLAUDE = "bench-claude"
LIMITED = "bench-chat-limited"
GOVERNED = "bench-chat-governed"
USAGE = "bench-chat-usage"
PII = "bench-chat-pii"
SLOW = "bench-slow-{}"  # .format(i): the slow-stream endpoint on the i-th slow upstream

OPENAI_KEY = "sk-bench"
ANTHROPIC_KEY = "sk-ant-bench"
NEVER_TRIPS = 100_000_000


@dataclass(frozen=True)
class GatewayConfig:
    manifests: Path
    secrets: Path


def _manifest(name: str, entity: dict[str, Any], ai_gateway: dict[str, Any] | None) -> str:
    config: dict[str, Any] = {"served_entities": [entity]}
    spec: dict[str, Any] = {"config": config}
    if ai_gateway:
        spec["ai_gateway"] = ai_gateway
    doc = {
        "apiVersion": "servegate.io/v1alpha1",
        "kind": "ServingEndpoint",
        "metadata": {"name": name},
        "spec": spec,
    }
    return json.dumps(doc, indent=2) + "\n"


def _openai(model: str, task: str, base: str) -> dict[str, Any]:
    return {
        "name": "fake-" + model,
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": task,
            "openai_config": {
                "openai_api_key": "{{secrets/bench/openai_api_key}}",
                "openai_api_base": base + "/v1",
            },
        },
    }


def write_config(root: Path, upstream: str, slow_upstreams: Sequence[str] = ()) -> GatewayConfig:
    """Write manifests and secrets under ``root`` for an upstream at ``upstream`` (no slash),
    and one ``bench-slow-<i>`` endpoint for each of ``slow_upstreams``."""
    manifests, secrets = root / "manifests", root / "secrets"
    (secrets / "bench").mkdir(parents=True, exist_ok=True)
    manifests.mkdir(parents=True, exist_ok=True)
    (secrets / "bench" / "openai_api_key").write_text(OPENAI_KEY)
    (secrets / "bench" / "anthropic_api_key").write_text(ANTHROPIC_KEY)
    claude = {
        "name": "fake-claude",
        "external_model": {
            "name": "claude-sonnet-4-5",
            "provider": "anthropic",
            "task": "llm/v1/chat",
            "anthropic_config": {
                "anthropic_api_key": "{{secrets/bench/anthropic_api_key}}",
                "anthropic_api_base": upstream,
            },
        },
    }
    limits = {
        "rate_limits": [
            {"key": "endpoint", "calls": NEVER_TRIPS, "renewal_period": "minute"},
            {"key": "user", "calls": NEVER_TRIPS, "renewal_period": "minute"},
        ]
    }
    governed = {
        "usage_tracking_config": {"enabled": True},
        "guardrails": {
            "input": {"pii": {"behavior": "MASK"}},
            "output": {"pii": {"behavior": "MASK"}},
        },
    }
    docs = {
        CHAT: _manifest(CHAT, _openai("gpt-4o-mini", "llm/v1/chat", upstream), None),
        EMBED: _manifest(
            EMBED, _openai("text-embedding-3-small", "llm/v1/embeddings", upstream), None
        ),
        CLAUDE: _manifest(CLAUDE, claude, None),
        LIMITED: _manifest(LIMITED, _openai("gpt-4o-mini", "llm/v1/chat", upstream), limits),
        GOVERNED: _manifest(GOVERNED, _openai("gpt-4o-mini", "llm/v1/chat", upstream), governed),
        USAGE: _manifest(
            USAGE,
            _openai("gpt-4o-mini", "llm/v1/chat", upstream),
            {"usage_tracking_config": governed["usage_tracking_config"]},
        ),
        PII: _manifest(
            PII,
            _openai("gpt-4o-mini", "llm/v1/chat", upstream),
            {"guardrails": governed["guardrails"]},
        ),
    }
    for i, base in enumerate(slow_upstreams):
        name = SLOW.format(i)
        docs[name] = _manifest(name, _openai("gpt-4o-mini", "llm/v1/chat", base), None)
    for name, text in docs.items():
        (manifests / f"{name}.yaml").write_text(text)
    return GatewayConfig(manifests=manifests, secrets=secrets)
