"""Gemini's ``generateContent`` format: OpenAI chat/completions ↔ ``contents`` and
``candidates``, and its SSE stream. The Vertex AI provider (``vertex.py``) uses it for every
Gemini model; the PaLM-era ``:predict`` formats stay there.

Roles user/assistant become user/model; system messages become ``systemInstruction``; tool
calls and results become ``functionCall``/``functionResponse`` parts; sampling parameters
go to ``generationConfig``. Finish reasons: STOP → stop, MAX_TOKENS → length, the safety
family → content_filter. Usage comes from ``usageMetadata`` (thinking tokens count as
output, as Google bills them).
"""

from __future__ import annotations

import contextlib
import mimetypes
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.responses import (
    ChunkEmitter,
    chat_message,
    chat_response,
    completion_response,
)
from servegate.canonical.usage import Usage
from servegate.ingress.errors import (
    BadRequest,
    UpstreamError,
    UpstreamUnavailable,
)
from servegate.providers.base import Provider, StreamTranslator, Translated, reads_upstream
from servegate.spec.endpoint import Task
from servegate.streaming.sse import SSEDecoder

NAME = "google-cloud-vertex-ai"
GEMINI_PARAMS = {
    "max_tokens": "maxOutputTokens", "max_completion_tokens": "maxOutputTokens",
    "temperature": "temperature", "top_p": "topP", "top_k": "topK", "n": "candidateCount",
    "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty", "seed": "seed",
}  # fmt: skip
FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
FINISH = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(FILTERED, "content_filter")
#: google.rpc.Code names → HTTP status, for errors that arrive inside a stream.
GOOGLE_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}  # fmt: skip
TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

Choices = list[tuple[Any, str | None]]


def refuse(what: str) -> BadRequest:
    return BadRequest(f"{what} is not supported by provider '{NAME}'.")


def gemini_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if "messages" in payload:
        body["contents"], system = gemini_contents(payload["messages"])
        if system:
            body["systemInstruction"] = {"parts": system}
    else:
        body["contents"] = [{"role": "user", "parts": [{"text": one_prompt(payload["prompt"])}]}]
    native = payload.get("generationConfig")
    config = {
        **(native if isinstance(native, dict) else {}),
        **generation_config(payload, GEMINI_PARAMS),
    }
    fmt = payload.get("response_format") or {}
    if not isinstance(fmt, dict):
        raise refuse("A response_format that is not an object")
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if fmt.get("type") == "json_schema":
        config["responseSchema"] = (fmt.get("json_schema") or {}).get("schema") or {}
    elif fmt and fmt.get("type") not in ("text", "json_object"):
        raise refuse(f"response_format type {fmt.get('type')!r}")
    if config:
        body["generationConfig"] = config
    if payload.get("tools"):
        body["tools"] = [
            {"functionDeclarations": [function_declaration(t) for t in payload["tools"]]}
        ]
    if payload.get("tool_choice") is not None:
        body["toolConfig"] = {
            "functionCallingConfig": function_calling_config(payload["tool_choice"])
        }
    for key in ("safetySettings", "labels", "cachedContent", "toolConfig"):
        if payload.get(key) is not None and key not in body:
            body[key] = payload[key]
    return body


def generation_config(payload: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    config = {field: payload[p] for p, field in names.items() if payload.get(p) is not None}
    stop = payload.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return config


def one_prompt(prompt: object) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise refuse("prompt: anything but one non-empty prompt per request")
    return prompt


def gemini_contents(messages: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """OpenAI messages → (Gemini contents, systemInstruction parts). Turns of one role are
    merged, so parallel tool results become one user turn, as Gemini expects."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for functionResponse
    for message in messages:
        role, content = message["role"], message.get("content")
        if role in ("system", "developer"):
            system += content_parts(content, media=False)
            continue
        if role == "user":
            turn, parts = "user", content_parts(content, media=True)
        elif role == "assistant":
            turn, parts = "model", content_parts(content, media=False)
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise refuse("A tool call without a function")
                names[str(call.get("id"))] = str(function.get("name"))
                args = call_arguments(function.get("arguments"))
                parts.append({"functionCall": {"name": function.get("name"), "args": args}})
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")))
            if name is None:
                raise refuse("A 'tool' message whose tool_call_id matches no tool call")
            text = "".join(p["text"] for p in content_parts(content, media=False))
            result = {"name": name, "response": {"content": text}}
            turn, parts = "user", [{"functionResponse": result}]
        else:
            raise refuse(f"Message role '{role}'")
        if parts and contents and contents[-1]["role"] == turn:
            contents[-1]["parts"] += parts
        elif parts:
            contents.append({"role": turn, "parts": parts})
    return contents, system


def content_parts(content: object, *, media: bool) -> list[dict[str, Any]]:
    """Text parts (empty ones dropped: Gemini rejects them) and, in user turns, media."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": str(part["text"])})
        elif part.get("type") == "image_url" and media:
            image = part.get("image_url")  # {"url": ...}, or the bare URL some clients send
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(media_part(url if isinstance(url, str) else ""))
        elif part.get("type") != "text":
            raise refuse(f"Content part type {part.get('type')!r} in this message")
    return parts


def media_part(url: str) -> dict[str, Any]:
    """A data: URL goes inline; a gs:// or http(s) URL by reference, typed by its extension."""
    if url.startswith("data:") and ";base64," in url:
        inline, _, data = url[5:].partition(";base64,")
        return {"inlineData": {"mimeType": inline, "data": data}}
    mime = mimetypes.guess_type(url)[0]
    if not url.startswith(("gs://", "https://", "http://")) or mime is None:
        raise refuse("image_url other than a base64 data: URL or a URL with a file extension")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def call_arguments(arguments: object) -> dict[str, Any]:
    if arguments in ("", None):  # some clients send no arguments for parameterless functions
        return {}
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        if isinstance(value, dict):
            return value
    raise refuse("tool_calls arguments that are not a JSON object")


def function_declaration(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") if tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise refuse("tools: a tool other than a named function")
    if function.get("strict"):
        raise refuse("tools: 'strict' function calling")
    return {k: function[k] for k in ("name", "description", "parameters") if function.get(k)}


def function_calling_config(choice: object) -> dict[str, Any]:
    if isinstance(choice, str) and choice in TOOL_CHOICE:
        return {"mode": TOOL_CHOICE[choice]}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    raise refuse(f"tool_choice {choice!r}")


def usage_from_metadata(metadata: object) -> Usage | None:
    """Thinking tokens are billed as output, so they count as completion tokens."""
    if not isinstance(metadata, dict):
        return None
    completion = metadata.get("candidatesTokenCount", 0) + metadata.get("thoughtsTokenCount", 0)
    return Usage(int(metadata.get("promptTokenCount", 0)), int(completion))


def finish_reason_of(value: object, has_calls: bool) -> str:
    reason = FINISH.get(str(value), "stop")
    return "tool_calls" if has_calls and reason == "stop" else reason


def response_identity(data: Mapping[str, Any], model: str, task: Task) -> dict[str, Any]:
    """id, created and model from the upstream response, so they are stable and truthful."""
    ident: dict[str, Any] = {"model": str(data.get("modelVersion") or model)}
    if data.get("responseId"):
        ident["id"] = f"{'chatcmpl' if task == Task.CHAT else 'cmpl'}-{data['responseId']}"
    with contextlib.suppress(KeyError, ValueError):
        ident["created"] = int(datetime.fromisoformat(str(data["createTime"])).timestamp())
    return ident


def candidates_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    candidates = [c for c in data.get("candidates") or [] if isinstance(c, dict)]
    if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
        return [{"finishReason": "SAFETY"}]  # the prompt itself was refused
    return sorted(candidates, key=lambda c: int(c.get("index", 0)))


def read_candidate(candidate: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """(text, OpenAI tool_calls); thought parts are the model's reasoning, not its answer."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "text" in part and not part.get("thought"):
            texts.append(str(part["text"]))
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            arguments = orjson.dumps(call.get("args") or {}).decode()
            function = {"name": call.get("name"), "arguments": arguments}
            call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
            calls.append({"id": call_id, "type": "function", "function": function})
    return ("".join(texts) if texts else None), calls


def gemini_response(query: QueryRequest, data: Mapping[str, Any], model: str) -> Translated:
    usage = usage_from_metadata(data.get("usageMetadata"))
    ident = response_identity(data, model, query.task)
    choices: Choices = []
    for candidate in candidates_of(data):
        text, calls = read_candidate(candidate)
        reason = finish_reason_of(candidate.get("finishReason"), bool(calls))
        answer = chat_message(text, calls) if query.task == Task.CHAT else text or ""
        choices.append((answer, reason))
    build = chat_response if query.task == Task.CHAT else completion_response
    return Translated(build(choices=choices, usage=usage, **ident), usage)


class GeminiStream(StreamTranslator):
    """``streamGenerateContent?alt=sse``: one GenerateContentResponse per ``data:`` event and
    no terminator (the body just ends). Events carry the running usage; finish reasons are
    held until the body ends, so the last chunk can carry the final usage."""

    def __init__(self, provider: Provider, query: QueryRequest) -> None:
        self._provider, self._query = provider, query
        self._decoder = SSEDecoder()
        self._emitter: ChunkEmitter | None = None
        self._finish: dict[int, str] = {}
        self._calls: dict[int, int] = {}  # candidate index → tool calls so far

    @reads_upstream
    def feed(self, chunk: bytes) -> list[bytes]:
        return self._frames(self._decoder.decode(chunk))

    @reads_upstream
    def finish(self) -> list[bytes]:
        frames = self._frames(self._decoder.flush())
        if not self._finish or self._emitter is None:
            raise UpstreamUnavailable(f"Provider '{NAME}' ended the stream before it was complete.")
        last = max(self._finish)
        for index in sorted(self._finish):
            usage = self.usage if index == last else None
            frames += self._emitter.finish(self._finish[index], usage, index)
        return frames

    def _frames(self, events: Iterable[Any]) -> list[bytes]:
        frames: list[bytes] = []
        for event in events:
            data = self._parse(event.data)
            self.usage = usage_from_metadata(data.get("usageMetadata")) or self.usage
            if self._emitter is None:
                task, include = self._query.task, self._query.include_usage_requested
                ident = response_identity(data, self._provider.model.name, task)
                self._emitter = ChunkEmitter(task, include_usage=include, **ident)
            for candidate in candidates_of(data):
                index = int(candidate.get("index", 0))
                text, calls = read_candidate(candidate)
                if text:
                    frames += self._emitter.text(text, index)
                for call in calls:
                    position = self._calls[index] = self._calls.get(index, -1) + 1
                    fn = call["function"]
                    frames += self._emitter.tool_call(
                        position=position,
                        call_id=call["id"],
                        name=fn["name"],
                        arguments=fn["arguments"],
                        index=index,
                    )
                if candidate.get("finishReason"):
                    self._finish[index] = finish_reason_of(
                        candidate["finishReason"], index in self._calls
                    )
        return frames

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error = data["error"]
            code = error.get("code") if isinstance(error.get("code"), int) else None
            status = code or GOOGLE_STATUS.get(str(error.get("status")), 500)
            raise UpstreamError(NAME, status, self._provider.decode_error_body(raw))
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"Provider '{NAME}' sent a stream event that is not JSON.")
        return data
