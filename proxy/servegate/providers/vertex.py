"""Google Cloud Vertex AI: Gemini's ``generateContent`` and the PaLM-era ``:predict`` models.

Vertex speaks two dialects under one path prefix
(``/v1/projects/{project}/locations/{region}/publishers/google/models/{model}``):

* Gemini models take ``:generateContent`` / ``:streamGenerateContent?alt=sse`` for chat AND
  completions (a prompt becomes one user turn). The request is rebuilt from the OpenAI body:
  roles user/assistant → user/model, system → ``systemInstruction``, tool calls ↔
  ``functionCall``/``functionResponse`` parts, sampling parameters → ``generationConfig``.
* ``text-bison``/``text-unicorn`` (completions), ``chat-bison``/``codechat-bison`` (chat)
  and every embeddings model take ``:predict`` with ``{"instances", "parameters"}``.
  They do not stream here: a stream request for them is a 400.

Auth is a service-account JSON key: google-auth signs the JWT assertion and exchanges it at
the key's own ``token_uri`` (so a simulator can stand in for Google). The exchange is
blocking I/O, so it runs in a worker thread, one at a time, and the token is reused until
google-auth calls it stale (3 min 45 s before expiry). The token source lives in the
gateway's ``CredentialRegistry`` keyed by the key's digest, so a config reload keeps the
token and a rotated key file gets a new one.

An OpenAI parameter Vertex cannot take is a 400 that names it. A few Vertex-native fields
pass through for callers who need them (``safetySettings``, ``labels``, ``cachedContent``,
``toolConfig``, and a ``generationConfig`` object whose keys the translated parameters
override; ``task_type``, ``title`` and ``autoTruncate`` for embeddings); any other unknown
key is a 400 too, never silently dropped.
"""

from __future__ import annotations

import base64
import contextlib
import mimetypes
import struct
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.responses import (
    ChunkEmitter,
    chat_message,
    chat_response,
    completion_response,
    embeddings_response,
)
from servegate.canonical.usage import Usage
from servegate.ingress.errors import (
    BadRequest,
    GatewayError,
    UpstreamError,
    UpstreamUnavailable,
    parse_retry_after,
)
from servegate.providers.base import Provider, StreamTranslator, Translated, UpstreamRequest
from servegate.spec.endpoint import ExternalModel, Task
from servegate.streaming.sse import SSEDecoder
from servegate.transport.credentials import CredentialRegistry

NAME = "google-cloud-vertex-ai"
_GEMINI_PARAMS = {
    "max_tokens": "maxOutputTokens", "max_completion_tokens": "maxOutputTokens",
    "temperature": "temperature", "top_p": "topP", "top_k": "topK", "n": "candidateCount",
    "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty", "seed": "seed",
}  # fmt: skip
_PALM_PARAMS = {k: v for k, v in _GEMINI_PARAMS.items() if k != "seed"}
_COMMON = {"stream", "stream_options", "stop"}
_GEMINI_NATIVE = {"safetySettings", "labels", "cachedContent", "toolConfig", "generationConfig"}
_GEMINI_CHAT = {"messages", "response_format", "tools", "tool_choice", "parallel_tool_calls"}
_EMBEDDING_ALLOWED = {
    "input",
    "encoding_format",
    "dimensions",
    "task_type",
    "title",
    "autoTruncate",
}
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(_FILTERED, "content_filter")
#: google.rpc.Code names → HTTP status, for errors that arrive inside a stream.
_GOOGLE_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}  # fmt: skip
_TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

Choices = list[tuple[Any, str | None]]


class _Family(Enum):
    GEMINI = "generateContent"
    PALM_TEXT = "predict, text"
    PALM_CHAT = "predict, chat"
    EMBEDDING = "predict, embeddings"


def _family(model: str, task: Task) -> _Family:
    if task == Task.EMBEDDINGS:
        return _Family.EMBEDDING
    if task == Task.COMPLETIONS and model.startswith(("text-bison", "text-unicorn")):
        return _Family.PALM_TEXT
    if task == Task.CHAT and model.startswith(("chat-bison", "codechat-bison")):
        return _Family.PALM_CHAT
    return _Family.GEMINI


def _refuse(what: str) -> BadRequest:
    return BadRequest(f"{what} is not supported by provider '{NAME}'.")


class VertexProvider(Provider):
    name = NAME

    def __init__(
        self,
        model: ExternalModel,
        secrets: Mapping[str, str],
        credentials: CredentialRegistry | None = None,
    ) -> None:
        super().__init__(model, secrets)
        config = model.google_cloud_vertex_ai_config
        if config is None:
            raise ValueError(f"provider '{NAME}' needs google_cloud_vertex_ai_config")
        registry = credentials if credentials is not None else CredentialRegistry()
        self._tokens = registry.google(secrets["private_key"])
        host = "aiplatform.googleapis.com"  # the "global" location has no regional host
        host = host if config.region == "global" else f"{config.region}-{host}"
        base = (config.vertex_api_base or f"https://{host}").rstrip("/")
        project, region = quote(config.project_id, safe=""), quote(config.region, safe="")
        self._prefix = (
            f"{base}/v1/projects/{project}/locations/{region}"
            f"/publishers/google/models/{quote(model.name, safe='@')}"
        )
        self._family = _family(model.name, model.task)
        self._headers = {"Content-Type": "application/json"}

    def check(self, query: QueryRequest) -> None:
        super().check(query)
        family = self._family
        if family is _Family.EMBEDDING:
            allowed = _EMBEDDING_ALLOWED
        elif family is _Family.GEMINI:
            allowed = _COMMON | _GEMINI_NATIVE | set(_GEMINI_PARAMS)
            allowed |= _GEMINI_CHAT if query.task == Task.CHAT else {"prompt", "response_format"}
        else:
            allowed = _COMMON | set(_PALM_PARAMS) | {"messages", "prompt"}
        for key, value in query.payload.items():
            if key not in allowed and value is not None:
                raise BadRequest(
                    f"Parameter '{key}' is not supported by provider '{NAME}' for model "
                    f"'{self.model.name}' ({family.value}); remove it from the request."
                )
        if query.stream and family is not _Family.GEMINI:
            raise BadRequest(
                f"Provider '{NAME}' cannot stream model '{self.model.name}' ({family.value}); "
                "send the request without 'stream'."
            )
        if query.payload.get("parallel_tool_calls") is False:
            raise _refuse("Parameter 'parallel_tool_calls': false (Gemini decides)")

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        payload, family = query.payload, self._family
        method = "predict"
        if family is _Family.GEMINI:
            body = _gemini_body(payload)
            method = "streamGenerateContent?alt=sse" if query.stream else "generateContent"
        elif family is _Family.EMBEDDING:
            body = _embedding_body(payload)
        else:
            instance = (
                {"prompt": _one_prompt(payload["prompt"])}
                if family is _Family.PALM_TEXT
                else _palm_chat_instance(payload["messages"])
            )
            params = _generation(payload, _PALM_PARAMS)
            body = {"instances": [instance]} | ({"parameters": params} if params else {})
        return UpstreamRequest(f"{self._prefix}:{method}", self._headers, orjson.dumps(body))

    async def authorize(self, request: UpstreamRequest) -> UpstreamRequest:
        try:
            token = await self._tokens.token()
        except google.auth.exceptions.RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise UpstreamUnavailable(
                    f"Provider '{NAME}': the OAuth token endpoint {self._tokens.token_uri} "
                    "is unavailable; try again later."
                ) from None
            # A refused grant (bad key, unknown account) is a credentials problem: 401.
            data = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise UpstreamError(NAME, 401, self.decode_error_body(orjson.dumps(data))) from None
        except google.auth.exceptions.TransportError:
            raise UpstreamUnavailable(
                f"Provider '{NAME}' could not reach the OAuth token endpoint "
                f"{self._tokens.token_uri}."
            ) from None
        return request.with_headers({"Authorization": f"Bearer {token}"})

    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        data = self.load_json(body, NAME)
        if self._family is _Family.GEMINI:
            return _gemini_response(query, data, self.model.name)
        predictions = data.get("predictions")
        if not isinstance(predictions, list) or not predictions:
            raise UpstreamUnavailable(f"Provider '{NAME}' answered without predictions.")
        if self._family is _Family.EMBEDDING:
            return _embedding_response(query, predictions, self.model.name)
        tokens = (data.get("metadata") or {}).get("tokenMetadata") or {}
        usage = None
        if "inputTokenCount" in tokens:
            prompt = tokens["inputTokenCount"].get("totalTokens", 0)
            usage = Usage(prompt, (tokens.get("outputTokenCount") or {}).get("totalTokens", 0))
        choices: Choices = []
        if self._family is _Family.PALM_TEXT:  # one prediction per candidate
            for p in predictions:
                choices.append((str(p.get("content", "")), _palm_reason(p.get("safetyAttributes"))))
            completion = completion_response(model=self.model.name, choices=choices, usage=usage)
            return Translated(completion, usage)
        safety = predictions[0].get("safetyAttributes") or []  # one list entry per candidate
        for i, candidate in enumerate(predictions[0].get("candidates") or []):
            reason = _palm_reason(safety[i] if i < len(safety) else None)
            choices.append((chat_message(str(candidate.get("content", ""))), reason))
        return Translated(chat_response(model=self.model.name, choices=choices, usage=usage), usage)

    def stream(self, query: QueryRequest) -> StreamTranslator:
        return _GeminiStream(self, query)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        """A quota error is a 429 whatever the HTTP status says, and Google's own
        ``RetryInfo`` detail stands in when there is no ``Retry-After`` header."""
        decoded = self.decode_error_body(body)
        first = decoded[0] if isinstance(decoded, list) and decoded else decoded  # JSON arrays
        google = first.get("error") if isinstance(first, dict) else None
        if isinstance(google, dict) and google.get("status") == "RESOURCE_EXHAUSTED":
            status = 429
        retry_after = parse_retry_after(headers) or _retry_delay(first)
        if retry_after is None and status in (429, 503):
            retry_after = 1
        return UpstreamError(NAME, status, decoded, retry_after=retry_after)


# ---------------------------------------------------------------------------- requests


def _gemini_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if "messages" in payload:
        body["contents"], system = _contents(payload["messages"])
        if system:
            body["systemInstruction"] = {"parts": system}
    else:
        body["contents"] = [{"role": "user", "parts": [{"text": _one_prompt(payload["prompt"])}]}]
    native = payload.get("generationConfig")
    config = {
        **(native if isinstance(native, dict) else {}),
        **_generation(payload, _GEMINI_PARAMS),
    }
    fmt = payload.get("response_format") or {}
    if not isinstance(fmt, dict):
        raise _refuse("A response_format that is not an object")
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if fmt.get("type") == "json_schema":
        config["responseSchema"] = (fmt.get("json_schema") or {}).get("schema") or {}
    elif fmt and fmt.get("type") not in ("text", "json_object"):
        raise _refuse(f"response_format type {fmt.get('type')!r}")
    if config:
        body["generationConfig"] = config
    if payload.get("tools"):
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in payload["tools"]]}]
    if payload.get("tool_choice") is not None:
        body["toolConfig"] = {"functionCallingConfig": _calling_config(payload["tool_choice"])}
    for key in ("safetySettings", "labels", "cachedContent", "toolConfig"):
        if payload.get(key) is not None and key not in body:
            body[key] = payload[key]
    return body


def _generation(payload: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    config = {field: payload[p] for p, field in names.items() if payload.get(p) is not None}
    stop = payload.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return config


def _one_prompt(prompt: object) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _refuse("prompt: anything but one non-empty prompt per request")
    return prompt


def _contents(messages: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """OpenAI messages → (Gemini contents, systemInstruction parts). Turns of one role are
    merged, so parallel tool results become one user turn, as Gemini expects."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for functionResponse
    for message in messages:
        role, content = message["role"], message.get("content")
        if role in ("system", "developer"):
            system += _parts(content, media=False)
            continue
        if role == "user":
            turn, parts = "user", _parts(content, media=True)
        elif role == "assistant":
            turn, parts = "model", _parts(content, media=False)
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise _refuse("A tool call without a function")
                names[str(call.get("id"))] = str(function.get("name"))
                args = _arguments(function.get("arguments"))
                parts.append({"functionCall": {"name": function.get("name"), "args": args}})
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")))
            if name is None:
                raise _refuse("A 'tool' message whose tool_call_id matches no tool call")
            text = "".join(p["text"] for p in _parts(content, media=False))
            result = {"name": name, "response": {"content": text}}
            turn, parts = "user", [{"functionResponse": result}]
        else:
            raise _refuse(f"Message role '{role}'")
        if parts and contents and contents[-1]["role"] == turn:
            contents[-1]["parts"] += parts
        elif parts:
            contents.append({"role": turn, "parts": parts})
    return contents, system


def _parts(content: object, *, media: bool) -> list[dict[str, Any]]:
    """Text parts (empty ones dropped: Gemini rejects them) and, in user turns, media."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": str(part["text"])})
        elif part.get("type") == "image_url" and media:
            parts.append(_media(str((part.get("image_url") or {}).get("url", ""))))
        elif part.get("type") != "text":
            raise _refuse(f"Content part type {part.get('type')!r} in this message")
    return parts


def _media(url: str) -> dict[str, Any]:
    """A data: URL goes inline; a gs:// or http(s) URL by reference, typed by its extension."""
    if url.startswith("data:") and ";base64," in url:
        inline, _, data = url[5:].partition(";base64,")
        return {"inlineData": {"mimeType": inline, "data": data}}
    mime = mimetypes.guess_type(url)[0]
    if not url.startswith(("gs://", "https://", "http://")) or mime is None:
        raise _refuse("image_url other than a base64 data: URL or a URL with a file extension")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _arguments(arguments: object) -> dict[str, Any]:
    if arguments in ("", None):  # some clients send no arguments for parameterless functions
        return {}
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        if isinstance(value, dict):
            return value
    raise _refuse("tool_calls arguments that are not a JSON object")


def _declaration(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") if tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise _refuse("tools: a tool other than a named function")
    if function.get("strict"):
        raise _refuse("tools: 'strict' function calling")
    return {k: function[k] for k in ("name", "description", "parameters") if function.get(k)}


def _calling_config(choice: object) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        return {"mode": _TOOL_CHOICE[choice]}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    raise _refuse(f"tool_choice {choice!r}")


def _palm_chat_instance(messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """chat-bison: system text → ``context``; turns alternate ``user`` / ``bot`` authors."""
    context: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        role = message["role"]
        if role not in ("system", "developer", "user", "assistant") or message.get("tool_calls"):
            raise _refuse(f"Tool calling (a '{role}' message) with chat-bison models")
        text = "".join(p["text"] for p in _parts(message.get("content"), media=False))
        if role in ("system", "developer"):
            context.append(text)
        else:
            turns.append({"author": "user" if role == "user" else "bot", "content": text})
    return ({"context": "\n".join(context)} if context else {}) | {"messages": turns}


def _embedding_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    inputs = [payload["input"]] if isinstance(payload["input"], str) else payload["input"]
    if not all(isinstance(i, str) for i in inputs):
        raise _refuse("input: token arrays (send text)")
    extra = {k: payload[k] for k in ("task_type", "title") if payload.get(k) is not None}
    names = {"dimensions": "outputDimensionality", "autoTruncate": "autoTruncate"}
    params = {field: payload[p] for p, field in names.items() if payload.get(p) is not None}
    body: dict[str, Any] = {"instances": [{"content": text, **extra} for text in inputs]}
    return body | ({"parameters": params} if params else {})


# --------------------------------------------------------------------------- responses


def _usage(metadata: object) -> Usage | None:
    """Thinking tokens are billed as output, so they count as completion tokens."""
    if not isinstance(metadata, dict):
        return None
    completion = metadata.get("candidatesTokenCount", 0) + metadata.get("thoughtsTokenCount", 0)
    return Usage(int(metadata.get("promptTokenCount", 0)), int(completion))


def _reason(value: object, has_calls: bool) -> str:
    reason = _FINISH.get(str(value), "stop")
    return "tool_calls" if has_calls and reason == "stop" else reason


def _palm_reason(safety: object) -> str:
    return "content_filter" if isinstance(safety, dict) and safety.get("blocked") else "stop"


def _identity(data: Mapping[str, Any], model: str, task: Task) -> dict[str, Any]:
    """id, created and model from the upstream response, so they are stable and truthful."""
    ident: dict[str, Any] = {"model": str(data.get("modelVersion") or model)}
    if data.get("responseId"):
        ident["id"] = f"{'chatcmpl' if task == Task.CHAT else 'cmpl'}-{data['responseId']}"
    with contextlib.suppress(KeyError, ValueError):
        ident["created"] = int(datetime.fromisoformat(str(data["createTime"])).timestamp())
    return ident


def _candidates(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    candidates = [c for c in data.get("candidates") or [] if isinstance(c, dict)]
    if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
        return [{"finishReason": "SAFETY"}]  # the prompt itself was refused
    return sorted(candidates, key=lambda c: int(c.get("index", 0)))


def _candidate(candidate: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
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


def _gemini_response(query: QueryRequest, data: Mapping[str, Any], model: str) -> Translated:
    usage = _usage(data.get("usageMetadata"))
    ident = _identity(data, model, query.task)
    choices: Choices = []
    for candidate in _candidates(data):
        text, calls = _candidate(candidate)
        reason = _reason(candidate.get("finishReason"), bool(calls))
        answer = chat_message(text, calls) if query.task == Task.CHAT else text or ""
        choices.append((answer, reason))
    build = chat_response if query.task == Task.CHAT else completion_response
    return Translated(build(choices=choices, usage=usage, **ident), usage)


def _embedding_response(query: QueryRequest, predictions: list[Any], model: str) -> Translated:
    vectors: list[list[float]] = []
    tokens = 0
    for prediction in predictions:
        embeddings = prediction.get("embeddings") or {}
        vectors.append([float(v) for v in embeddings.get("values") or []])
        tokens += int((embeddings.get("statistics") or {}).get("token_count", 0))
    body = embeddings_response(model=model, vectors=vectors, prompt_tokens=tokens)
    if query.payload.get("encoding_format") == "base64":  # OpenAI's packing: float32, little-endian
        for item, vector in zip(body["data"], vectors, strict=True):
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return Translated(body, Usage(prompt_tokens=tokens))


def _retry_delay(body: object) -> int | None:
    """Google's RetryInfo detail (``"retryDelay": "30s"``), rounded up to whole seconds."""
    error = body.get("error") if isinstance(body, dict) else None
    for detail in (error.get("details") or []) if isinstance(error, dict) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            with contextlib.suppress(ValueError):
                return max(1, -int(-float(delay[:-1]) // 1))
    return None


class _GeminiStream(StreamTranslator):
    """``streamGenerateContent?alt=sse``: one GenerateContentResponse per ``data:`` event and
    no terminator (the body just ends). Events carry the running usage; finish reasons are
    held until the body ends, so the last chunk can carry the final usage."""

    def __init__(self, provider: Provider, query: QueryRequest) -> None:
        self._provider, self._query = provider, query
        self._decoder = SSEDecoder()
        self._emitter: ChunkEmitter | None = None
        self._finish: dict[int, str] = {}
        self._calls: dict[int, int] = {}  # candidate index → tool calls so far

    def feed(self, chunk: bytes) -> list[bytes]:
        return self._frames(self._decoder.decode(chunk))

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
            self.usage = _usage(data.get("usageMetadata")) or self.usage
            if self._emitter is None:
                task, include = self._query.task, self._query.include_usage_requested
                ident = _identity(data, self._provider.model.name, task)
                self._emitter = ChunkEmitter(task, include_usage=include, **ident)
            for candidate in _candidates(data):
                index = int(candidate.get("index", 0))
                text, calls = _candidate(candidate)
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
                    self._finish[index] = _reason(candidate["finishReason"], index in self._calls)
        return frames

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error = data["error"]
            code = error.get("code") if isinstance(error.get("code"), int) else None
            status = code or _GOOGLE_STATUS.get(str(error.get("status")), 500)
            raise UpstreamError(NAME, status, self._provider.decode_error_body(raw))
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"Provider '{NAME}' sent a stream event that is not JSON.")
        return data
