"""Look inside a translated stream: collect its text, and let output guardrails rewrite it.

Most streams pass through the relay untouched, frame bytes in, frame bytes out. An endpoint
that tracks usage, logs payloads or guards its output needs more: the answer's text (for
character counts and the inference table's aggregated response) and, with PII masking, a
chance to change that text before the client sees it. The tap parses each OpenAI chunk for
that, only on such endpoints.

Rewriting text across chunks needs a look-behind: a filter may hold back the tail of what
it was fed (the start of what could be an e-mail address) and release it with the next
delta, or at :meth:`StreamTap.finish`. The tap re-frames what each filter releases in the
chunk that carried the delta, and before the chunk that carries the choice's
``finish_reason``, so the client sees every character once and in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from servegate.canonical.responses import chat_message, chat_response, completion_response
from servegate.canonical.usage import Usage
from servegate.spec.endpoint import Task
from servegate.streaming.sse import encode_data


class TextFilter(Protocol):
    """Rewrites one choice's text as it streams (output guardrails). May raise GatewayError
    to stop the stream (a BLOCK)."""

    def feed(self, text: str) -> str: ...

    def flush(self) -> str: ...


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    filter: TextFilter | None = None


class StreamTap:
    """One stream's view: fed the frames the translator produced, returns what to send.

    The text it collects is what the client received (masked, when a filter masks)."""

    def __init__(self, task: Task, new_filter: Callable[[], TextFilter] | None = None) -> None:
        self.task = task
        self._new_filter = new_filter
        self._choices: dict[int, _Choice] = {}
        self._id = ""
        self._model = ""
        self._created = 0
        self.usage: Usage | None = None
        self.before_end: Callable[[], Awaitable[None]] | None = None
        """Runs when the answer has ended, before its last frames leave; may raise
        GatewayError to end the stream with an error event instead (output safety)."""

    def frames(self, frames: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for frame in frames:
            chunk = _parse(frame)
            if chunk is None:
                out.append(frame)
                continue
            out += self._chunk(frame, chunk)
        return out

    def finish(self) -> list[bytes]:
        """What the filters still hold, for a stream that ended without finish chunks."""
        return [f for index in sorted(self._choices) for f in self._release(index)]

    # ------------------------------------------------------------------ the answer so far

    @property
    def output_characters(self) -> int:
        return sum(len(part) for c in self._choices.values() for part in c.text)

    def text(self, index: int = 0) -> str:
        choice = self._choices.get(index)
        return "".join(choice.text) if choice else ""

    def response(self) -> dict[str, Any]:
        """The stream as one response, as the inference table stores it."""
        indexes = sorted(self._choices) or [0]
        if self.task == Task.CHAT:
            messages = []
            for i in indexes:
                choice = self._choices.get(i, _Choice())
                calls = [choice.tool_calls[k] for k in sorted(choice.tool_calls)] or None
                messages.append((chat_message(self.text(i), calls), choice.finish_reason))
            body = chat_response(model=self._model, choices=messages, usage=self.usage)
        else:
            texts = [(self.text(i), self._choices.get(i, _Choice()).finish_reason) for i in indexes]
            body = completion_response(model=self._model, choices=texts, usage=self.usage)
        return body | ({"id": self._id, "created": self._created} if self._id else {})

    # ------------------------------------------------------------------ internals

    def _chunk(self, frame: bytes, chunk: dict[str, Any]) -> list[bytes]:
        if not self._id:
            self._id = str(chunk.get("id") or "")
            self._model = str(chunk.get("model") or "")
            created = chunk.get("created")
            self._created = created if isinstance(created, int) else 0
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return [frame]
        before: list[bytes] = []
        changed = False
        for entry in choices:
            if not isinstance(entry, dict):
                continue
            index = entry.get("index", 0)
            index = index if isinstance(index, int) else 0
            choice = self._choice(index)
            reason = entry.get("finish_reason")
            holder, key = self._text_slot(entry)
            if holder is not None:
                delta = holder[key]
                released = delta
                if choice.filter is not None:
                    released = choice.filter.feed(delta)
                    if reason is not None:  # this chunk ends the choice: nothing may stay held
                        released += choice.filter.flush()
                    if released != delta:
                        holder[key], changed = released, True
                choice.text.append(released)
            elif reason is not None:
                before += self._release(index)
            if self.task == Task.CHAT:
                self._collect_tool_calls(choice, entry)
            if reason is not None:
                choice.finish_reason = str(reason)
        if not choices and self.usage is not None:  # the usage-only chunk ends the choices
            before += self.finish()
        if changed:
            frame = encode_data(orjson.dumps(chunk))
        return [*before, frame]

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice(
                filter=self._new_filter() if self._new_filter else None
            )
        return choice

    def _text_slot(self, entry: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        if self.task == Task.CHAT:
            delta = entry.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                return delta, "content"
            return None, ""
        return (entry, "text") if isinstance(entry.get("text"), str) else (None, "")

    def _collect_tool_calls(self, choice: _Choice, entry: dict[str, Any]) -> None:
        delta = entry.get("delta")
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            position = call.get("index", 0)
            held = choice.tool_calls.setdefault(
                position if isinstance(position, int) else 0,
                {"id": None, "type": "function", "function": {"name": None, "arguments": ""}},
            )
            held["id"] = call.get("id") or held["id"]
            function = call.get("function")
            if isinstance(function, dict):
                held["function"]["name"] = function.get("name") or held["function"]["name"]
                if isinstance(function.get("arguments"), str):
                    held["function"]["arguments"] += function["arguments"]

    def _release(self, index: int) -> list[bytes]:
        """A chunk with what choice ``index``'s filter still holds (nothing if it holds none)."""
        choice = self._choices.get(index)
        if choice is None or choice.filter is None:
            return []
        rest = choice.filter.flush()
        if not rest:
            return []
        choice.text.append(rest)
        if self.task == Task.CHAT:
            entry: dict[str, Any] = {"index": index, "delta": {"content": rest}}
        else:
            entry = {"index": index, "text": rest}
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk" if self.task == Task.CHAT else "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [entry | {"finish_reason": None, "logprobs": None}],
        }
        return [encode_data(orjson.dumps(chunk))]


def _parse(frame: bytes) -> dict[str, Any] | None:
    """The chunk inside one ``data: {...}\\n\\n`` frame; None for anything else."""
    if not frame.startswith(b"data: {"):
        return None
    try:
        chunk = orjson.loads(frame[6:])
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None
