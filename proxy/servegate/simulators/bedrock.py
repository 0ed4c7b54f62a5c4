"""The Amazon Bedrock Runtime simulator (``bedrock-runtime.<region>.amazonaws.com``).

Paths: ``POST /model/{modelId}/converse``, ``/converse-stream``, ``/invoke`` and
``/invoke-with-response-stream`` (``modelId`` URL-encoded: ids, inference profiles, ARNs).

* **Auth** is AWS Signature Version 4, verified by recomputing the signature with botocore
  from the request as received (method, raw path, query, the signed headers, the body) and
  the configured secret. Failures answer 403 with AWS's bodies and ``x-amzn-ErrorType``:
  ``MissingAuthenticationTokenException``, ``UnrecognizedClientException`` (unknown key or
  session token), ``InvalidSignatureException`` (wrong secret, region, service, day,
  tampered body or headers, more than 5 minutes of clock skew; the body quotes the canonical
  request and string-to-sign, as Bedrock does), ``IncompleteSignatureException``.
* **Converse** for any model id, validated (alternating roles starting with ``user``, one
  field per content block, non-blank text, ``inferenceConfig`` ranges, ``toolConfig`` when
  tool blocks are used); unknown top-level fields are refused, which is stricter than AWS.
  **InvokeModel** bodies for Titan Text (``amazon.titan-text-*``), Titan Embeddings
  (``amazon.titan-embed-text-v1``/``v2``, one ``inputText``) and Cohere Embed
  (``cohere.embed-*``), refusing extraneous keys with Bedrock's schema messages.
* **Streams** use the real ``application/vnd.amazon.eventstream`` binary framing (prelude,
  string headers ``:event-type``/``:content-type``/``:message-type``, CRC32s), with the
  ``"p"`` padding field Bedrock adds to each event payload. A streamed request whose last
  user text contains ``[stream-exception:<name>]`` (e.g. ``throttlingException``) gets that
  exception message after the first content event.

Replies are deterministic: chat ``"Simulated reply from <model> to: <first 40 chars of the
last user text>"``, Titan Text ``"Simulated completion from <model> for: <first 40 chars>"``,
one token per whitespace-separated word (prompt: all system and message text), tool calls as
in the OpenAI simulator (forced by ``toolChoice`` or ``call <name>`` in the user text), unit
embedding vectors from SHA-256. Faults (``/_sim``) match on the model id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from .faults import install_control
from .openai_bodies import embedding_vector
from .openai_shapes import count_tokens, split_words
from .schema_fill import example_for_schema
from .wire import JsonReply, StreamReply, deliver, json_response

__all__ = [
    "DEFAULT_ACCESS_KEY_ID",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_ACCESS_KEY",
    "AwsError",
    "bedrock_status_error",
    "create_bedrock_app",
    "encode_event_message",
]

DEFAULT_REGION: Final = "us-east-1"
DEFAULT_ACCESS_KEY_ID: Final = "AKIASERVEGATESIM0001"
DEFAULT_SECRET_ACCESS_KEY: Final = "servegate/bedrock/simulator/secret/key+00"
EVENTSTREAM: Final = "application/vnd.amazon.eventstream"
_CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_BEDROCK = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SKEW_S = 300
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details."
)
#: What a fault that names only a status answers with: (x-amzn-ErrorType, message).
_STATUS_ERRORS: Final = {
    400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request. Try your request again."),
    424: ("ModelErrorException", "The model encountered an error while processing the request."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The system encountered an unexpected error during processing. Try your request again."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}  # fmt: skip
_CONVERSE_KEYS = frozenset(
    {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig", "promptVariables",
     "additionalModelRequestFields", "additionalModelResponseFieldPaths", "requestMetadata",
     "performanceConfig", "serviceTier", "outputConfig"}
)  # fmt: skip
_BLOCK_KEYS = frozenset(
    {"text", "image", "document", "video", "toolUse", "toolResult", "guardContent",
     "cachePoint", "reasoningContent"}
)  # fmt: skip
_STREAM_MESSAGES = {
    "throttlingException": _STATUS_ERRORS[429][1],
    "serviceUnavailableException": _STATUS_ERRORS[503][1],
    "internalServerException": _STATUS_ERRORS[500][1],
}
_CALL = re.compile(r"\bcall\s+([A-Za-z0-9_-]+)", re.IGNORECASE)
_STREAM_EXCEPTION = re.compile(r"\[stream-exception:([A-Za-z]+)\]")


class AwsError(Exception):
    """An AWS error answer: status, ``{"message"}`` body and ``x-amzn-ErrorType``."""

    def __init__(self, status: int, kind: str, message: str, namespace: str = _BEDROCK) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.namespace = status, kind, message, namespace

    def response(self) -> web.Response:
        headers = {"x-amzn-ErrorType": f"{self.kind}:{self.namespace}"}
        return json_response(self.status, {"message": self.message}, headers)


def _invalid(message: str) -> AwsError:
    return AwsError(400, "ValidationException", message)


def _extraneous(key: str, at: str = "#") -> AwsError:
    return _invalid(
        f"Malformed input request: {at}: extraneous key [{key}] is not permitted, please "
        "reformat your input and try again."
    )


def bedrock_status_error(
    _request: web.Request, status: int, _model: str | None, _headers: Mapping[str, str]
) -> object:
    """Bedrock's body for a fault that names only ``status`` (its type header is added when
    the response is sent)."""
    return {"message": _STATUS_ERRORS.get(status, ("", f"Simulated error (HTTP {status})."))[1]}


# ---------------------------------------------------------------- event-stream framing


def encode_event_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total and headers length, CRC32), string headers
    (type 7), payload, CRC32 of everything before it."""
    encoded = b"".join(
        struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
        for n, v in ((k.encode(), val.encode()) for k, val in headers.items())
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(event_type: str, body: dict[str, Any], sequence: int) -> bytes:
    padded = {**body, "p": _PADDING[: 1 + (sequence * 7) % len(_PADDING)]}
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_event_message(headers, orjson.dumps(padded))


def _exception(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_event_message(headers, orjson.dumps({"message": message}))


# ---------------------------------------------------------------- SigV4


def _amz_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class _Verifier:
    credentials: Mapping[str, str]
    session_tokens: Mapping[str, str]
    region: str
    clock: Callable[[], float]

    def check(self, request: web.Request, body: bytes) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            raise AwsError(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token", _CORAL
            )
        scheme, _, rest = header.partition(" ")
        params = dict(p.strip().partition("=")[::2] for p in rest.split(",") if "=" in p)
        missing = [n for n in ("Credential", "Signature", "SignedHeaders") if n not in params]
        if scheme != "AWS4-HMAC-SHA256" or missing:
            raise self._incomplete(
                " ".join(f"Authorization header requires '{n}' parameter." for n in missing)
                or "Unsupported Authorization Type"
            )
        key_id, day, region, service, terminator = (params["Credential"].split("/") + [""] * 5)[:5]
        secret = self.credentials.get(key_id)
        token = request.headers.get("X-Amz-Security-Token")
        if secret is None or token != self.session_tokens.get(key_id):
            raise AwsError(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                _CORAL,
            )
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            sent = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise self._incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
            ) from None
        if terminator != "aws4_request":
            raise self._bad(
                f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )
        if region != self.region:
            raise self._bad("Credential should be scoped to a valid region. ")
        if service != "bedrock":
            raise self._bad("Credential should be scoped to correct service: 'bedrock'. ")
        if day != amz_date[:8]:
            raise self._bad(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{day}' != '{amz_date[:8]}', from '{amz_date}'."
            )
        now = self.clock()
        if now - sent > _SKEW_S:
            raise self._bad(
                f"Signature expired: {amz_date} is now earlier than {_amz_time(now - _SKEW_S)} "
                f"({_amz_time(now)} - 5 min.)"
            )
        if sent - now > _SKEW_S:
            raise self._bad(
                f"Signature not yet current: {amz_date} is still later than "
                f"{_amz_time(now + _SKEW_S)} ({_amz_time(now)} + 5 min.)"
            )
        signed = params["SignedHeaders"].split(";")
        if "host" not in signed:
            raise self._bad(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
            )
        claimed = request.headers.get("X-Amz-Content-SHA256")
        if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
            raise self._bad(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        aws = AWSRequest(
            method=request.method,
            url=f"http://{request.host}{request.raw_path}",
            data=body,
            headers={n: ",".join(request.headers.getall(n, [])) for n in signed},
        )
        aws.context["timestamp"] = amz_date
        auth = SigV4Auth(ReadOnlyCredentials(key_id, secret, token), "bedrock", self.region)
        canonical = auth.canonical_request(aws)
        to_sign = auth.string_to_sign(aws, canonical)
        expected = auth.signature(to_sign, aws)
        same_headers = auth.signed_headers(auth.headers_to_sign(aws)) == params["SignedHeaders"]
        if not same_headers or not hmac.compare_digest(expected, params["Signature"]):
            raise self._bad(
                f"{_SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have "
                f"been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{to_sign}'\n"
            )

    @staticmethod
    def _bad(message: str) -> AwsError:
        return AwsError(403, "InvalidSignatureException", message, _CORAL)

    @staticmethod
    def _incomplete(message: str) -> AwsError:
        return AwsError(403, "IncompleteSignatureException", message, _CORAL)


# ---------------------------------------------------------------- Converse


@dataclass(frozen=True)
class _Reply:
    text: str
    tool: dict[str, Any] | None  # {"toolUseId", "name", "input"}
    stop_reason: str
    input_tokens: int
    output_tokens: int
    stream_exception: str | None = None

    def usage(self) -> dict[str, int]:
        total = self.input_tokens + self.output_tokens
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": total,
        }


def _limit(text: str, stops: list[str], max_tokens: int | None) -> tuple[str, str]:
    """(text, outcome): ``stop`` (a stop sequence cut it), ``length`` or ``end``."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "stop"
    words = split_words(text)
    if max_tokens is not None and len(words) > max_tokens:
        return "".join(words[:max_tokens]), "length"
    return text, "end"


def _number(config: Mapping[str, Any], key: str, at: str, low: float, high: float | None) -> Any:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(
            f"Malformed input request: {at}/{key}: expected type: Number, found: {type(value).__name__}, please reformat your input and try again."
        )
    bound = "greater than or equal to" if value < low else "less than or equal to"
    if value < low or (high is not None and value > high):
        raise _invalid(
            f"1 validation error detected: Value '{value}' at '{at}.{key}' failed to satisfy "
            f"constraint: Member must have value {bound} {low if value < low else high}"
        )
    return value


def _messages_text(body: Mapping[str, Any]) -> tuple[list[str], str, bool, bool]:
    """Validate ``messages``: (all prompt texts, last user text, uses tool blocks,
    last user turn carries a tool result)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _invalid(
            "Malformed input request: #/messages: expected an array of Message objects, please reformat your input and try again."
        )
    if not messages or messages[0].get("role") != "user":
        raise _invalid(
            "A conversation must start with a user message. Try again with a conversation that starts with a user message."
        )
    texts: list[str] = []
    user_text, uses_tools, answered = "", False, False
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(
                f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]"
            )
        if i and messages[i - 1].get("role") == role:
            raise _invalid(
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again."
            )
        if not isinstance(content, list) or not content:
            raise _invalid(
                f"The content field in the Message object at messages.{i}.content is empty. Add a ContentBlock object to the content field and try again."
            )
        turn: list[str] = []
        answered = False
        for j, block in enumerate(content):
            if not isinstance(block, dict) or len(block) != 1 or not set(block) <= _BLOCK_KEYS:
                raise _invalid(
                    f"Malformed input request: messages.{i}.content.{j} must set exactly one content type, please reformat your input and try again."
                )
            if "text" in block:
                if not isinstance(block["text"], str) or not block["text"].strip():
                    raise _invalid(
                        f"The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text field, and try again."
                    )
                turn.append(block["text"])
            elif "toolResult" in block:
                uses_tools = answered = True
                result = block["toolResult"] if isinstance(block["toolResult"], dict) else {}
                turn += [
                    str(c.get("text", ""))
                    for c in result.get("content") or []
                    if isinstance(c, dict)
                ]
            elif "toolUse" in block:
                uses_tools = True
                use = block["toolUse"] if isinstance(block["toolUse"], dict) else {}
                turn.append(orjson.dumps(use.get("input")).decode())
        texts += turn
        if role == "user":
            user_text = " ".join(turn)
    return texts, user_text, uses_tools, answered


def _tools(body: Mapping[str, Any], uses_tools: bool) -> tuple[dict[str, dict[str, Any]], Any]:
    config = body.get("toolConfig")
    if config is None:
        if uses_tools:
            raise _invalid(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks."
            )
        return {}, None
    tools: dict[str, dict[str, Any]] = {}
    for tool in config.get("tools") or []:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        schema = (spec or {}).get("inputSchema") or {}
        if (
            not isinstance(spec, dict)
            or not spec.get("name")
            or not isinstance(schema.get("json"), dict)
        ):
            raise _invalid(
                "The toolConfig field has an invalid tool: each tool needs toolSpec.name and toolSpec.inputSchema.json."
            )
        tools[str(spec["name"])] = schema["json"]
    if not tools:
        raise _invalid("The toolConfig field must contain at least one tool.")
    choice = config.get("toolChoice")
    if choice is not None and (
        not isinstance(choice, dict)
        or len(choice) != 1
        or not set(choice) <= {"auto", "any", "tool"}
    ):
        raise _invalid(
            "Malformed input request: toolConfig.toolChoice must set exactly one of auto, any or tool."
        )
    return tools, choice


def plan_converse(body: Mapping[str, Any], model: str) -> _Reply:
    """Validate a Converse body and decide the (deterministic) answer."""
    for key in body:
        if key not in _CONVERSE_KEYS:
            raise _extraneous(key)
    texts, user_text, uses_tools, answered = _messages_text(body)
    for i, block in enumerate(body.get("system") or []):
        if not isinstance(block, dict) or not str(block.get("text", "")).strip():
            raise _invalid(
                f"The text field in the SystemContentBlock object at system.{i} is blank. Add text to the text field, and try again."
            )
        texts.append(block["text"])
    config = body.get("inferenceConfig") or {}
    for key in config:
        if key not in ("maxTokens", "temperature", "topP", "stopSequences"):
            raise _extraneous(key, "#/inferenceConfig")
    max_tokens = _number(config, "maxTokens", "inferenceConfig", 1, None)
    _number(config, "temperature", "inferenceConfig", 0, 1)
    _number(config, "topP", "inferenceConfig", 0, 1)
    extra = body.get("additionalModelRequestFields") or {}
    if "anthropic." not in model and extra:
        raise _extraneous(sorted(extra)[0])
    tools, choice = _tools(body, uses_tools)
    snippet = user_text[:40].strip()
    raised = _STREAM_EXCEPTION.search(user_text)
    exception = raised.group(1) if raised else None
    input_tokens = sum(count_tokens(t) for t in texts)
    name = None
    if tools and not answered:
        if choice and "tool" in choice:
            name = str(choice["tool"].get("name"))
            if name not in tools:
                raise _invalid(f"The tool {name} in toolChoice is not defined in toolConfig.tools.")
        elif choice and "any" in choice:
            name = next(iter(tools))
        elif (match := _CALL.search(user_text)) and match.group(1) in tools:
            name = match.group(1)
    if name is not None:
        arguments = example_for_schema(tools[name], snippet)
        use_id = (
            "tooluse_" + hashlib.sha256(f"{model}\0{name}\0{user_text}".encode()).hexdigest()[:22]
        )
        tokens = count_tokens(name) + count_tokens(orjson.dumps(arguments).decode())
        tool = {"toolUseId": use_id, "name": name, "input": arguments}
        return _Reply("", tool, "tool_use", input_tokens, tokens, exception)
    stops = [s for s in config.get("stopSequences") or [] if isinstance(s, str) and s]
    text, outcome = _limit(f"Simulated reply from {model} to: {snippet}", stops, max_tokens)
    reason = {"stop": "stop_sequence", "length": "max_tokens", "end": "end_turn"}[outcome]
    return _Reply(text, None, reason, input_tokens, count_tokens(text), exception)


def converse_json(reply: _Reply) -> dict[str, Any]:
    content = [{"toolUse": reply.tool}] if reply.tool else [{"text": reply.text}]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": reply.stop_reason,
        "usage": reply.usage(),
        "metrics": {"latencyMs": 1},
    }


def converse_events(reply: _Reply) -> list[bytes]:
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    if reply.tool is not None:
        start = {"toolUse": {"toolUseId": reply.tool["toolUseId"], "name": reply.tool["name"]}}
        events.append(("contentBlockStart", {"contentBlockIndex": 0, "start": start}))
        arguments = orjson.dumps(reply.tool["input"]).decode()
        half = len(arguments) // 2
        pieces: list[dict[str, Any]] = [
            {"toolUse": {"input": part}} for part in (arguments[:half], arguments[half:])
        ]
    else:
        pieces = [{"text": word} for word in split_words(reply.text)]
    events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": p}) for p in pieces]
    events += [
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": reply.stop_reason}),
        ("metadata", {"usage": reply.usage(), "metrics": {"latencyMs": 1}}),
    ]
    frames = [_event(kind, body, i) for i, (kind, body) in enumerate(events)]
    if reply.stream_exception:
        message = _STREAM_MESSAGES.get(reply.stream_exception, "Simulated stream exception.")
        frames = [*frames[:2], _exception(reply.stream_exception, message)]
    return frames


# ---------------------------------------------------------------- InvokeModel bodies


def _keys(body: Mapping[str, Any], allowed: Collection[str], at: str = "#") -> None:
    for key in body:
        if key not in allowed:
            raise _extraneous(key, at)


def _required(body: Mapping[str, Any], key: str) -> Any:
    if key not in body:
        raise _invalid(
            f"Malformed input request: #: required key [{key}] not found, please reformat your input and try again."
        )
    return body[key]


def titan_text(body: Mapping[str, Any], model: str) -> tuple[str, str, int]:
    """(text, completionReason, input tokens) for a Titan Text body."""
    _keys(body, ("inputText", "textGenerationConfig"))
    prompt = str(_required(body, "inputText"))
    config = body.get("textGenerationConfig") or {}
    _keys(
        config, ("temperature", "topP", "maxTokenCount", "stopSequences"), "#/textGenerationConfig"
    )
    _number(config, "temperature", "textGenerationConfig", 0, 1)
    _number(config, "topP", "textGenerationConfig", 0, 1)
    max_tokens = _number(config, "maxTokenCount", "textGenerationConfig", 0, None)
    reply = f"Simulated completion from {model} for: {prompt[:40].strip()}"
    text, outcome = _limit(
        reply, list(config.get("stopSequences") or []), 512 if max_tokens is None else max_tokens
    )
    reason = {"stop": "STOP_CRITERIA_MET", "length": "LENGTH", "end": "FINISH"}[outcome]
    return text, reason, count_tokens(prompt)


def titan_text_events(text: str, reason: str, input_tokens: int) -> list[bytes]:
    words = split_words(text) or [""]
    chunks: list[dict[str, Any]] = []
    for i, word in enumerate(words):
        chunk: dict[str, Any] = {
            "outputText": word,
            "index": 0,
            "totalOutputTextTokenCount": i + 1 if text else 0,
            "completionReason": None,
            "inputTextTokenCount": input_tokens if i == 0 else None,
        }
        chunks.append(chunk)
    chunks[-1]["completionReason"] = reason
    chunks[-1]["amazon-bedrock-invocationMetrics"] = {
        "inputTokenCount": input_tokens,
        "outputTokenCount": count_tokens(text),
        "invocationLatency": 1,
        "firstByteLatency": 1,
    }
    return [
        _event("chunk", {"bytes": base64.b64encode(orjson.dumps(c)).decode()}, i)
        for i, c in enumerate(chunks)
    ]


def _vector(model: str, text: str, dimensions: int) -> list[float]:
    return list(struct.unpack(f"<{dimensions}f", embedding_vector(model, text, dimensions)))


def titan_embed(body: Mapping[str, Any], model: str) -> tuple[dict[str, Any], int]:
    v2 = "titan-embed-text-v2" in model
    _keys(
        body, ("inputText", "dimensions", "normalize", "embeddingTypes") if v2 else ("inputText",)
    )
    text = _required(body, "inputText")
    if not isinstance(text, str) or not text:
        raise _invalid(
            "Malformed input request: #/inputText: expected minLength: 1, actual: 0, please reformat your input and try again."
        )
    dimensions = body.get("dimensions", 1024 if v2 else 1536)
    if dimensions not in (256, 512, 1024, 1536):
        raise _invalid(
            f"Malformed input request: #/dimensions: {dimensions} is not a valid enum value, please reformat your input and try again."
        )
    vector, tokens = _vector(model, text, dimensions), count_tokens(text)
    result: dict[str, Any] = {"embedding": vector, "inputTextTokenCount": tokens}
    if v2:
        result["embeddingsByType"] = {"float": vector}
    return result, tokens


def cohere_embed(body: Mapping[str, Any], model: str) -> tuple[dict[str, Any], int]:
    _keys(body, ("texts", "input_type", "truncate", "embedding_types", "images"))
    texts = _required(body, "texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or len(texts) > 96:
        raise _invalid(
            "Malformed input request: #/texts: expected an array of at most 96 strings, please reformat your input and try again."
        )
    kind = _required(body, "input_type")
    if kind not in ("search_document", "search_query", "classification", "clustering"):
        raise _invalid(
            f"Malformed input request: #/input_type: {kind} is not a valid enum value, please reformat your input and try again."
        )
    if body.get("truncate", "NONE") not in ("NONE", "START", "END"):
        raise _invalid(
            f"Malformed input request: #/truncate: {body['truncate']} is not a valid enum value, please reformat your input and try again."
        )
    vectors = [_vector(model, t, 1024) for t in texts]
    typed = body.get("embedding_types") is not None
    result = {
        "embeddings": {"float": vectors} if typed else vectors,
        "id": str(uuid.UUID(hashlib.md5(repr(texts).encode()).hexdigest())),
        "response_type": "embeddings_by_type" if typed else "embeddings_floats",
        "texts": texts,
    }
    return result, sum(count_tokens(t) for t in texts)


# ---------------------------------------------------------------- the wire


def _corrupt(frame: bytes) -> bytes:
    """The frame with a wrong message CRC, which every AWS event-stream parser refuses."""
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


async def _stream(
    request: web.Request, model: str, frames: list[bytes], headers: Mapping[str, str]
) -> web.StreamResponse:
    """:func:`.wire.deliver` for event streams: binary frames, no terminator; a fault that
    replaces the answer gives a plain AWS JSON error, as Bedrock fails before streaming."""
    reply = StreamReply(
        frames=frames,
        headers=headers,
        terminator=None,
        malformed=_corrupt,
        content_type=EVENTSTREAM,
    )
    return await deliver(request, reply, model=model)


async def _aws_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/_sim/"):
        return
    response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
    known = _STATUS_ERRORS.get(response.status)
    if known is not None and "x-amzn-ErrorType" not in response.headers:
        response.headers["x-amzn-ErrorType"] = f"{known[0]}:{_BEDROCK}"


def _invoke_counts(input_tokens: int, output_tokens: int) -> dict[str, str]:
    return {
        "X-Amzn-Bedrock-Input-Token-Count": str(input_tokens),
        "X-Amzn-Bedrock-Output-Token-Count": str(output_tokens),
        "X-Amzn-Bedrock-Invocation-Latency": "1",
    }


def create_bedrock_app(
    *,
    credentials: Mapping[str, str] | None = None,
    region: str = DEFAULT_REGION,
    session_tokens: Mapping[str, str] | None = None,
    models: Collection[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """An aiohttp app speaking the Bedrock Runtime API (plus ``/_sim``).

    ``credentials`` maps access key id → secret access key (default: the one pair
    :data:`DEFAULT_ACCESS_KEY_ID` / :data:`DEFAULT_SECRET_ACCESS_KEY`); requests must be
    signed for ``region`` and service ``bedrock``. ``session_tokens`` maps an access key id
    to the ``X-Amz-Security-Token`` it requires (temporary credentials); other keys must
    send none. ``models`` restricts the accepted model ids (others: ``The provided model
    identifier is invalid.``); None accepts any. ``clock`` (epoch seconds) checks
    ``X-Amz-Date`` skew. ``servegate`` examples expect it on 127.0.0.1:8907.
    """
    verifier = _Verifier(
        credentials
        if credentials is not None
        else {DEFAULT_ACCESS_KEY_ID: DEFAULT_SECRET_ACCESS_KEY},
        session_tokens or {},
        region,
        clock,
    )
    allowed = frozenset(models) if models is not None else None

    async def answer(
        request: web.Request, model: str, operation: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        if operation in ("converse", "converse-stream"):
            if "embed" in model:
                raise _invalid(
                    "This action doesn't support the model that you provided. Try again with a supported text or chat model."
                )
            reply = plan_converse(body, model)
            if operation == "converse":
                return await deliver(request, JsonReply(200, converse_json(reply)), model=model)
            return await _stream(request, model, converse_events(reply), {})
        if "amazon.titan-text" in model:
            text, reason, tokens = titan_text(body, model)
            if operation == "invoke-with-response-stream":
                headers = {"X-Amzn-Bedrock-Content-Type": "application/json"}
                return await _stream(
                    request, model, titan_text_events(text, reason, tokens), headers
                )
            result = {
                "inputTextTokenCount": tokens,
                "results": [
                    {
                        "tokenCount": count_tokens(text),
                        "outputText": text,
                        "completionReason": reason,
                    }
                ],
            }
            invoked = JsonReply(200, result, _invoke_counts(tokens, count_tokens(text)))
            return await deliver(request, invoked, model=model)
        if "amazon.titan-embed" in model or "cohere.embed" in model:
            if operation == "invoke-with-response-stream":
                raise _invalid("The model is unsupported for streaming.")
            embed = titan_embed if "amazon.titan-embed" in model else cohere_embed
            result, tokens = embed(body, model)
            return await deliver(
                request, JsonReply(200, result, _invoke_counts(tokens, 0)), model=model
            )
        raise _invalid(
            f"The simulator has no InvokeModel body for {model}: it serves amazon.titan-text-*, "
            "amazon.titan-embed-text-* and cohere.embed-* (use Converse for other models)."
        )

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        model = request.match_info["model"]
        try:
            verifier.check(request, raw)
            if allowed is not None and model not in allowed:
                raise _invalid("The provided model identifier is invalid.")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                raise _invalid("Malformed input request, please reformat your input and try again.")
            return await answer(request, model, request.match_info["operation"], body)
        except AwsError as error:
            return error.response()

    async def unknown(_request: web.Request) -> web.StreamResponse:
        return AwsError(404, "UnknownOperationException", "Unknown operation", _CORAL).response()

    app = web.Application()
    install_control(app, error_factory=bedrock_status_error)
    app.on_response_prepare.append(_aws_headers)
    operations = "{operation:converse|converse-stream|invoke|invoke-with-response-stream}"
    app.router.add_post(f"/model/{{model}}/{operations}", handle)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
