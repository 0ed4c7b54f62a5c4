"""A deterministic guardrail judge behind the OpenAI chat-completions wire protocol.

The gateway's ``safety`` and ``valid_topics`` guardrails ask a judge endpoint
(:mod:`servegate.policy.guardrails.judge`); this simulator stands in for it (a Llama
Guard 3 model, or any chat model) so those guardrails can be tested offline. It speaks
``POST /v1/chat/completions`` like the OpenAI simulator (bearer keys, OpenAI's error
bodies, optional streaming, the ``/_sim`` fault and request-log API, ``GET
/_sim/requests`` showing exactly what the judge was asked) and answers by recognising the
prompt:

* a message holding ``<BEGIN CONVERSATION>``: the Llama Guard 3 prompt (style
  ``llama-guard``). It reads the ``User:``/``Agent:`` turns, judges the last turn of the
  role the prompt asks about, and answers ``safe`` or ``unsafe\\nS1,S9``;
* ``<topics>`` in a message: the topic prompt. The allowed topics and the conversation are
  JSON; the last ``user`` message is matched to the topic sharing the most words with it
  (ties: the first listed; plural ``s`` and words under three letters ignored); the answer
  is that topic verbatim, or ``none``;
* ``<conversation>`` in a message: the instruct safety prompt. It judges the last message
  of the conversation and answers one line of JSON, ``{"safe":false,
  "categories":["indiscriminate-weapons"]}``;
* anything else: plain chat turns (style ``llama-guard-chat``): the last message is judged,
  answered like Llama Guard.

A text violates a category when it contains one of the category's trigger words at the
start of a word, ignoring case (``bomb`` matches "Bombs" but not "abomb").
:data:`DEFAULT_TRIGGERS` lists the defaults; ``triggers`` replaces the list of each
category it names (an empty list switches a category off). To make the judge answer
something unparseable, inject a fault whose ``body`` is the chat completion to send.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from servegate.policy.guardrails.judge import (
    CATEGORIES,
    CODE_BY_CATEGORY,
    CONVERSATION_CLOSE,
    CONVERSATION_OPEN,
    TOPICS_CLOSE,
    TOPICS_OPEN,
)

from .errors import ApiError, openai_error, openai_status_error
from .faults import install_control
from .openai import bearer_key_auth, read_json_body
from .openai_bodies import ResponseMeta, chat_body, chat_chunks
from .openai_shapes import Choice, chat_prompt_tokens, validate_request
from .wire import JsonReply, Reply, StreamReply, deliver, json_response

__all__ = ["DEFAULT_JUDGE_KEYS", "DEFAULT_JUDGE_MODEL", "DEFAULT_TRIGGERS", "create_judge_app"]

DEFAULT_JUDGE_KEYS: Final = ("sk-sim-judge",)
DEFAULT_JUDGE_MODEL: Final = "llama-guard-3-8b"

#: Category → words that make a text violate it (platform category names).
DEFAULT_TRIGGERS: Final[Mapping[str, tuple[str, ...]]] = {
    "violent-crimes": ("murder", "assault"),
    "non-violent-crimes": ("steal", "shoplift", "launder"),
    "sex-crimes": ("sextortion",),
    "child-exploitation": ("csam",),
    "specialized-advice": ("dosage", "diagnose"),
    "privacy": ("home address", "social security number"),
    "intellectual-property": ("pirated", "torrent"),
    "indiscriminate-weapons": ("bomb", "nerve agent"),
    "hate": ("subhuman",),
    "self-harm": ("suicide",),
    "sexual-content": ("erotic",),
    "defamation": ("defame",),
    "elections": ("ballot stuffing",),
    "code-interpreter-abuse": ("rm -rf", "/etc/shadow"),
}

_LLAMA_GUARD_OPEN = "<BEGIN CONVERSATION>"
_LLAMA_GUARD_CLOSE = "<END CONVERSATION>"
_LLAMA_GUARD_ROLE = re.compile(r"ONLY THE LAST (User|Agent) message")
_LLAMA_GUARD_TURN = re.compile(r"\n\n(?=(?:User|Agent): )")
_WORD = re.compile(r"[a-z0-9]+")
_IGNORED_WORDS = frozenset({"the", "and", "for", "with", "about", "from", "you", "your"})


@dataclass(frozen=True, slots=True)
class _Question:
    """What the judge was asked, and how to answer it."""

    kind: str  # "llama-guard" | "instruct" | "topic"
    text: str  # the message being judged
    topics: tuple[str, ...] = ()


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _between(text: str, start: str, end: str) -> str | None:
    head = text.find(start)
    tail = text.rfind(end)
    if head < 0 or tail < head:
        return None
    return text[head + len(start) : tail]


def _json_turns(block: str) -> list[tuple[str, str]]:
    decoded = orjson.loads(block)
    if not isinstance(decoded, list):
        raise ValueError("the conversation is not a JSON array")
    return [(str(m.get("role")), str(m.get("content"))) for m in decoded if isinstance(m, dict)]


def _last_of(turns: Sequence[tuple[str, str]], role: str) -> str:
    return next((text for r, text in reversed(turns) if r == role), "")


def _question(messages: Sequence[Mapping[str, Any]]) -> _Question:
    texts = [_content_text(m.get("content")) for m in messages]
    joined = "\n".join(texts)
    guard = _between(joined, _LLAMA_GUARD_OPEN, _LLAMA_GUARD_CLOSE)
    if guard is not None:
        # The question follows the conversation: look for it there, not in a message.
        asked = _LLAMA_GUARD_ROLE.search(joined, joined.rfind(_LLAMA_GUARD_CLOSE))
        role = asked.group(1) if asked else "User"
        turns = []
        for turn in _LLAMA_GUARD_TURN.split(guard.strip()):
            speaker, _, text = turn.partition(": ")
            turns.append((speaker, text.replace("\n  ", "\n")))
        return _Question("llama-guard", _last_of(turns, role))
    conversation = _between(joined, CONVERSATION_OPEN, CONVERSATION_CLOSE)
    topics_block = _between(joined, TOPICS_OPEN, TOPICS_CLOSE)
    if conversation is not None:
        turns = _json_turns(conversation)
        if topics_block is not None:
            topics = orjson.loads(topics_block)
            if not isinstance(topics, list):
                raise ValueError("the topics are not a JSON array")
            return _Question("topic", _last_of(turns, "user"), tuple(str(t) for t in topics))
        return _Question("instruct", turns[-1][1] if turns else "")
    return _Question("llama-guard", texts[-1] if texts else "")


def _compile(triggers: Mapping[str, Collection[str]] | None) -> dict[str, re.Pattern[str] | None]:
    merged: dict[str, Collection[str]] = dict(DEFAULT_TRIGGERS)
    if triggers is not None:
        unknown = sorted(set(triggers) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories in triggers: {', '.join(unknown)}")
        merged.update(triggers)
    compiled: dict[str, re.Pattern[str] | None] = {}
    for category in CATEGORIES:
        words = [w for w in merged[category] if w]
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        compiled[category] = (
            re.compile(rf"(?<![\w-])(?:{alternatives})", re.IGNORECASE) if words else None
        )
    return compiled


def _words(text: str) -> set[str]:
    found = set()
    for word in _WORD.findall(text.lower()):
        if len(word) < 3 or word in _IGNORED_WORDS:
            continue
        found.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return found


def _best_topic(text: str, topics: Sequence[str]) -> str | None:
    said = _words(text)
    best, best_score = None, 0
    for topic in topics:
        score = len(said & _words(topic))
        if score > best_score:
            best, best_score = topic, score
    return best


def _answer(question: _Question, patterns: Mapping[str, re.Pattern[str] | None]) -> str:
    if question.kind == "topic":
        return _best_topic(question.text, question.topics) or "none"
    violated = [
        name for name, pattern in patterns.items() if pattern and pattern.search(question.text)
    ]
    if question.kind == "instruct":
        return orjson.dumps({"safe": not violated, "categories": violated}).decode()
    if not violated:
        return "safe"
    codes = sorted((CODE_BY_CATEGORY[name] for name in violated), key=lambda c: int(c[1:]))
    return "unsafe\n" + ",".join(codes)


def create_judge_app(
    *,
    api_keys: Collection[str] = DEFAULT_JUDGE_KEYS,
    triggers: Mapping[str, Collection[str]] | None = None,
    model: str = DEFAULT_JUDGE_MODEL,
) -> web.Application:
    """The judge simulator under ``/v1`` (plus ``/_sim``).

    ``api_keys``: the accepted ``Authorization: Bearer`` keys. ``triggers``: category →
    trigger words, replacing :data:`DEFAULT_TRIGGERS` for the categories named. ``model``:
    answered when a request names none (any model is accepted, and extra sampling arguments
    too, as vLLM does).
    """
    check = bearer_key_auth(api_keys)
    patterns = _compile(triggers)

    async def completions(request: web.Request) -> web.StreamResponse:
        denied = check(request)
        if denied is not None:
            return denied
        try:
            body = await read_json_body(request)
            validate_request("chat", body, allowed=None, require_model=False)
            question = _question(body["messages"])
        except ApiError as exc:
            return json_response(exc.status, exc.body)
        except ValueError as exc:  # a recognised prompt whose JSON part is broken
            return json_response(400, openai_error(f"Unreadable judge prompt: {exc}"))
        answer = _answer(question, patterns)
        served = str(body.get("model") or model)
        meta = ResponseMeta(f"chatcmpl-judge{uuid.uuid4().hex[:24]}", int(time.time()), served)
        choices = [Choice(0, answer, None, "stop")]
        prompt_tokens = chat_prompt_tokens(body)
        reply: Reply
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            reply = StreamReply(
                chat_chunks(meta, choices, prompt_tokens, include_usage=include_usage)
            )
        else:
            reply = JsonReply(200, chat_body(meta, choices, prompt_tokens))
        return await deliver(request, reply, model=served)

    async def invalid_url(request: web.Request) -> web.StreamResponse:
        return json_response(404, openai_error(f"Invalid URL ({request.method} {request.path})"))

    app = web.Application()
    install_control(app, error_factory=openai_status_error)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_route("*", "/v1/{tail:.*}", invalid_url)
    return app
