"""An endpoint's ``ai_gateway.guardrails``, applied: input before the provider sees the
request, output before the client sees the answer.

Checks run cheapest first and the first that fires decides: invalid keywords (BLOCK),
then PII (BLOCK, or MASK and go on), then the judge's safety and topic verdicts (BLOCK).
A block is the platform's 400 ``BAD_REQUEST`` whose message is the guardrail JSON
(judge.py, ``verdict_message``), with ``finishReason`` ``input_guardrail_triggered`` or
``output_guardrail_triggered``.

Which text is checked: chat message contents (strings and text parts), the completions
prompt, the embeddings input (token arrays are not text and pass); on output, each
choice's message content or text. Tool-call arguments are not checked.

Streams (output): keywords and PII are checked as the text flows (a keyword is looked
for across chunk boundaries; PII masking holds back at most one word, stream.py), and a
block ends the stream with the guardrail error event. Safety and topics need the whole
answer, so on a stream the judge runs when the answer has ended, before its last chunk:
a flagged answer ends with the error event instead of its ``finish_reason``. Text
already streamed cannot be recalled; a client that must never show an unsafe answer
should not stream, or rely on input safety.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from servegate.canonical.requests import QueryRequest
from servegate.ingress.errors import GatewayError, UpstreamUnavailable
from servegate.spec.endpoint import Task
from servegate.spec.gateway import AiGatewayGuardrails, GuardrailParameters, PiiBehavior

from .judge import Judge, JudgeError, SafetyVerdict, Side, Turn, verdict_message
from .keywords import KeywordMatcher
from .pii import DEFAULT, PiiDetector
from .stream import StreamMasker

Check = Literal["keyword", "pii", "safety", "topic"]
Action = Literal["block", "mask"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """A guardrail that fired: recorded in usage rows, payload rows and metrics."""

    side: Side
    check: Check
    action: Action


class GuardrailBlocked(GatewayError):
    status = 400
    error_code = "BAD_REQUEST"

    def __init__(self, message: str, trigger: Trigger) -> None:
        super().__init__(message)
        self.trigger = trigger


@dataclass(frozen=True, slots=True)
class SideRules:
    """One side's guardrails, compiled at config load."""

    side: Side
    pii: PiiBehavior = PiiBehavior.NONE
    keywords: KeywordMatcher | None = None
    safety: bool = False
    topics: tuple[str, ...] = ()

    @classmethod
    def of(cls, side: Side, params: GuardrailParameters | None) -> SideRules | None:
        if params is None:
            return None
        rules = cls(
            side=side,
            pii=(params.pii.behavior if params.pii else None) or PiiBehavior.NONE,
            keywords=KeywordMatcher(params.invalid_keywords) if params.invalid_keywords else None,
            safety=bool(params.safety),
            topics=tuple(params.valid_topics or ()),
        )
        return rules if rules.active else None

    @property
    def active(self) -> bool:
        return bool(self.pii != PiiBehavior.NONE or self.keywords or self.safety or self.topics)

    @property
    def needs_judge(self) -> bool:
        return self.safety or bool(self.topics)


@dataclass(frozen=True, slots=True)
class Guardrails:
    input: SideRules | None
    output: SideRules | None

    @classmethod
    def of(cls, spec: AiGatewayGuardrails | None) -> Guardrails | None:
        if spec is None:
            return None
        guardrails = cls(SideRules.of("input", spec.input), SideRules.of("output", spec.output))
        return guardrails if guardrails.input or guardrails.output else None

    @property
    def needs_judge(self) -> bool:
        return any(r is not None and r.needs_judge for r in (self.input, self.output))


@dataclass(slots=True)
class Screening:
    """What the guardrails did to one request (both sides)."""

    triggers: list[Trigger] = field(default_factory=list)

    def fired(self, trigger: Trigger) -> None:
        self.triggers.append(trigger)

    @property
    def summary(self) -> str | None:
        """For the usage row: e.g. ``input_guardrail_triggered`` or ``output_pii_masked``."""
        blocks = [t for t in self.triggers if t.action == "block"]
        if blocks:
            return f"{blocks[0].side}_guardrail_triggered"
        if self.triggers:
            return ",".join(sorted({f"{t.side}_{t.check}_masked" for t in self.triggers}))
        return None


# ------------------------------------------------------------------ requests (input)


async def screen_input(
    rules: SideRules, query: QueryRequest, judge: Judge | None, screening: Screening
) -> QueryRequest:
    """The query to send on (masked if PII MASK found some), or GuardrailBlocked."""
    texts = list(_request_texts(query))
    await _screen(rules, [t for _, t in texts], [(r, t) for r, t in texts], judge, screening)
    if rules.pii != PiiBehavior.MASK:
        return query
    payload, masked = _mask_request(query.task, query.payload)
    if masked:
        screening.fired(Trigger("input", "pii", "mask"))
        return replace(query, payload=payload)
    return query


def request_turns(query: QueryRequest) -> list[Turn]:
    """The request's texts as (role, text): what a judge of the answer reads as context."""
    return list(_request_texts(query))


def _request_texts(query: QueryRequest) -> Iterator[tuple[str, str]]:
    payload = query.payload
    if query.task == Task.CHAT:
        for message in payload.get("messages") or ():
            role = str(message.get("role", "user")) if isinstance(message, dict) else "user"
            content = message.get("content") if isinstance(message, dict) else None
            for text in _content_texts(content):
                yield role, text
    else:
        value = payload.get("prompt" if query.task == Task.COMPLETIONS else "input")
        for text in [value] if isinstance(value, str) else value or ():
            if isinstance(text, str):
                yield "user", text


def _content_texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _mask_request(task: Task, payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A copy of ``payload`` with every text masked; the original is never changed."""
    changed = False

    def masked(text: str) -> str:
        nonlocal changed
        out, findings = DEFAULT.mask(text)
        changed = changed or bool(findings)
        return out

    def content(value: object) -> object:
        if isinstance(value, str):
            return masked(value)
        if isinstance(value, list):
            return [
                {**p, "text": masked(p["text"])}
                if isinstance(p, dict) and isinstance(p.get("text"), str)
                else p
                for p in value
            ]
        return value

    if task == Task.CHAT:
        messages = [
            {**m, "content": content(m.get("content"))} if isinstance(m, dict) else m
            for m in payload.get("messages") or ()
        ]
        return {**payload, "messages": messages}, changed
    key = "prompt" if task == Task.COMPLETIONS else "input"
    value = payload.get(key)
    if isinstance(value, str):
        new: object = masked(value)
    elif isinstance(value, list):
        new = [masked(v) if isinstance(v, str) else v for v in value]
    else:
        return payload, False
    return {**payload, key: new}, changed


# ------------------------------------------------------------------ answers (output)


async def screen_output(
    rules: SideRules,
    task: Task,
    body: dict[str, Any],
    judge: Judge | None,
    screening: Screening,
    prompt: list[Turn],
) -> dict[str, Any] | None:
    """A unary answer: None to send it as it is, a masked copy, or GuardrailBlocked."""
    if task == Task.EMBEDDINGS:
        return None
    texts = [text for _, text in _answer_texts(task, body)]
    turns = [*prompt, *(("assistant", t) for t in texts)]
    await _screen(rules, texts, turns, judge, screening)
    if rules.pii != PiiBehavior.MASK:
        return None
    changed = False
    choices = []
    for choice in body.get("choices") or ():
        slot = _answer_slot(task, choice)
        if slot is None:
            choices.append(choice)
            continue
        holder, key = slot
        text, findings = DEFAULT.mask(holder[key])
        if findings:
            changed = True
            holder = {**holder, key: text}
            choice = {**choice, "message": holder} if task == Task.CHAT else holder
        choices.append(choice)
    if not changed:
        return None
    screening.fired(Trigger("output", "pii", "mask"))
    return {**body, "choices": choices}


def _answer_slot(task: Task, choice: object) -> tuple[dict[str, Any], str] | None:
    if not isinstance(choice, dict):
        return None
    holder = choice.get("message") if task == Task.CHAT else choice
    if isinstance(holder, dict) and isinstance(
        holder.get("content" if task == Task.CHAT else "text"), str
    ):
        return holder, "content" if task == Task.CHAT else "text"
    return None


def answer_characters(task: Task, body: dict[str, Any]) -> int:
    """Characters of an answer's text (for usage rows); 0 for embeddings."""
    return sum(len(text) for _, text in _answer_texts(task, body))


def _answer_texts(task: Task, body: dict[str, Any]) -> Iterator[tuple[int, str]]:
    for index, choice in enumerate(body.get("choices") or ()):
        slot = _answer_slot(task, choice)
        if slot is not None:
            yield index, slot[0][slot[1]]


class OutputFilter:
    """Output guardrails on one streamed choice (streaming/tap.py's TextFilter)."""

    _KEYWORD_TAIL = 256

    def __init__(self, rules: SideRules, screening: Screening) -> None:
        self.rules = rules
        self.screening = screening
        self._masker = StreamMasker() if rules.pii != PiiBehavior.NONE else None
        self._tail = ""
        self._masked = False

    def feed(self, text: str) -> str:
        keywords = self.rules.keywords
        if keywords is not None:
            window = self._tail + text
            if keywords.find(window) is not None:
                raise _block(self.rules, "keyword", self.screening)
            self._tail = window[-self._KEYWORD_TAIL :]
        if self._masker is None:
            return text
        return self._checked(self._masker.feed(text))

    def flush(self) -> str:
        return "" if self._masker is None else self._checked(self._masker.flush())

    def _checked(self, released: str) -> str:
        assert self._masker is not None
        if self._masker.findings:
            if self.rules.pii == PiiBehavior.BLOCK:
                raise _block(self.rules, "pii", self.screening, self._masker.findings)
            if not self._masked:
                self._masked = True
                self.screening.fired(Trigger("output", "pii", "mask"))
        return released


def output_filter(rules: SideRules, screening: Screening) -> Callable[[], OutputFilter] | None:
    """The per-choice filter factory for a stream, or None when nothing needs the text."""
    if rules.keywords is None and rules.pii == PiiBehavior.NONE:
        return None
    return lambda: OutputFilter(rules, screening)


async def judge_answer(
    rules: SideRules, text: str, prompt: list[Turn], judge: Judge | None, screening: Screening
) -> None:
    """A finished stream's whole answer, for the checks that need all of it."""
    await _judge(rules, [*prompt, ("assistant", text)], judge, screening)


# ------------------------------------------------------------------ shared


async def _screen(
    rules: SideRules,
    texts: list[str],
    turns: list[Turn],
    judge: Judge | None,
    screening: Screening,
) -> None:
    if rules.keywords is not None and any(rules.keywords.find(t) for t in texts):
        raise _block(rules, "keyword", screening)
    if rules.pii == PiiBehavior.BLOCK:
        for text in texts:
            findings = DEFAULT.detect(text)
            if findings:
                raise _block(rules, "pii", screening, findings)
    await _judge(rules, turns, judge, screening)


async def _judge(
    rules: SideRules, turns: list[Turn], judge: Judge | None, screening: Screening
) -> None:
    if not rules.needs_judge:
        return
    if judge is None:  # config load refuses such endpoints; this is the belt to those braces
        raise UpstreamUnavailable("Guardrails need a judge endpoint and none is configured.")
    try:
        if rules.safety:
            verdict = await judge.safety(turns, rules.side)
            if verdict.flagged:
                raise _block(rules, "safety", screening, verdict=verdict)
        if rules.topics:
            topic = await judge.topic(turns, rules.topics)
            if not topic.on_topic:
                raise _block(rules, "topic", screening)
    except JudgeError as exc:
        raise UpstreamUnavailable(
            f"The guardrail judge could not decide: {exc.message}", status=exc.status
        ) from None


def _block(
    rules: SideRules,
    check: Check,
    screening: Screening,
    findings: list[Any] | None = None,
    *,
    verdict: SafetyVerdict | None = None,
) -> GuardrailBlocked:
    trigger = Trigger(rules.side, check, "block")
    screening.fired(trigger)
    entities = sorted({str(f.type) for f in findings}) if findings else None
    message = verdict_message(
        rules.side, [verdict or SafetyVerdict.rule_block()], {}, pii_entities=entities
    )
    return GuardrailBlocked(message, trigger)


__all__ = [
    "DEFAULT",
    "GuardrailBlocked",
    "Guardrails",
    "Judge",
    "OutputFilter",
    "PiiDetector",
    "Screening",
    "SideRules",
    "Trigger",
    "Turn",
    "answer_characters",
    "judge_answer",
    "output_filter",
    "request_turns",
    "screen_input",
    "screen_output",
]
