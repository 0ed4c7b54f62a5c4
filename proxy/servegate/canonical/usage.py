"""Token usage: read from any OpenAI-shaped ``usage`` object and added up across chunks.

Written once here so that metrics, rate limits and usage records all count the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAX_TOKENS = 2**53 - 1
"""The largest token count taken from a provider: larger (or negative) counts are garbage,
and this bound keeps every sum a JSON-safe integer (orjson refuses past 64 bits)."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        for count in (self.prompt_tokens, self.completion_tokens):
            if not 0 <= count <= MAX_TOKENS:
                raise ValueError(f"token count out of range: {count}")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage | None:
        """Parse ``{"prompt_tokens", "completion_tokens", ...}``; None when absent or malformed."""
        if not isinstance(usage, Mapping):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens", 0)
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        if not (0 <= prompt <= MAX_TOKENS and 0 <= completion <= MAX_TOKENS):
            return None
        return cls(prompt_tokens=prompt, completion_tokens=completion)

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


def estimate_tokens(characters: int) -> int:
    """Tokens for text whose provider has not counted it yet: (characters + 1) / 4, the
    estimate the platform documents for usage tracking."""
    return (characters + 1) // 4


def usage_near_end(body: bytes) -> Usage | None:
    """The ``usage`` object of an OpenAI-shaped JSON body, read without parsing the rest.

    OpenAI writes ``usage`` last; an embeddings response is otherwise thousands of floats,
    and parsing them all only to count tokens would cost more than the rest of the request.
    None when there is no such object (the caller then parses the body).
    """
    at = body.rfind(b'"usage"')
    start = body.find(b"{", at) if at != -1 else -1
    if start == -1 or body[at + 7 : start].strip(b" \t\r\n:"):
        return None
    depth = 0
    for end in range(start, len(body)):
        char = body[end]
        if char == 0x7B:  # {
            depth += 1
        elif char == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    return Usage.from_openai(orjson.loads(body[start : end + 1]))
                except orjson.JSONDecodeError:
                    return None
    return None
