"""Amazon Bedrock bodies: OpenAI-shaped queries to Converse / InvokeModel JSON, and back.

Pure functions, no I/O; ``bedrock.py`` picks which one a query needs. Three body families:

* **Converse** (chat, and completions outside ``amazon``): one shape for every model family,
  with tools and token usage. A completions ``prompt`` becomes one user turn. Reasoning
  blocks (``reasoningContent``) in answers are not passed on: OpenAI's shape has no slot.
* **Titan Text** (completions for ``bedrock_provider: amazon``): Titan Text models are raw
  prompt-completion models, so the prompt goes as is (``inputText``) instead of through a
  chat template, and the body reports token counts in both modes.
* **Embeddings** (InvokeModel): Titan (``{"inputText"}``, one text per call) or Cohere
  (``{"texts", "input_type"}``, up to 96 per call).

Parameter policy: every OpenAI parameter Bedrock can take is translated; one it cannot take is
a 400 naming it (never dropped). Bedrock-native Converse fields (:data:`CONVERSE_NATIVE`) and
native embedding fields (``normalize``; ``input_type``, ``truncate``) pass through as the
client wrote them, so a client can opt in to what only Bedrock has.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest
from servegate.spec import BedrockProvider as Family
from servegate.spec import Task

PROVIDER = "amazon-bedrock"
CONVERSE_NATIVE = frozenset(
    {"additionalModelRequestFields", "guardrailConfig", "performanceConfig", "requestMetadata"}
)
_SAMPLING = frozenset(
    {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "n"}
)
_STREAMING = frozenset({"stream", "stream_options"})
CONVERSE_CHAT_PARAMS = (
    _SAMPLING
    | _STREAMING
    | CONVERSE_NATIVE
    | {"messages", "tools", "tool_choice", "response_format"}
)
CONVERSE_COMPLETION_PARAMS = _SAMPLING | _STREAMING | CONVERSE_NATIVE | {"prompt"}
TITAN_TEXT_PARAMS = _SAMPLING | _STREAMING | {"prompt"}
EMBED_PARAMS = {
    Family.AMAZON: frozenset({"input", "encoding_format", "dimensions", "normalize"}),
    Family.COHERE: frozenset({"input", "encoding_format", "input_type", "truncate"}),
}
COHERE_DEFAULT_INPUT_TYPE = "search_document"

# Converse stopReason → OpenAI finish_reason.
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Titan Text completionReason → OpenAI finish_reason.
TITAN_REASONS = {
    "FINISH": "stop",
    "STOP_CRITERIA_MET": "stop",
    "LENGTH": "length",
    "CONTENT_FILTERED": "content_filter",
}
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,(.+)$", re.DOTALL)


def unsupported(param: str, why: str = "") -> BadRequest:
    return BadRequest(
        f"Parameter '{param}' is not supported by provider '{PROVIDER}'{why}; "
        "remove it from the request."
    )


def check_params(payload: Mapping[str, Any], allowed: Iterable[str], family: Family) -> None:
    """Refuse, before any call, what the chosen Bedrock API cannot express."""
    known = frozenset(allowed)
    for key in payload:
        if key not in known:
            raise unsupported(key)
    if "top_k" in payload and family is not Family.ANTHROPIC:
        raise unsupported("top_k", f" for bedrock_provider '{family}' (only 'anthropic')")
    if (payload.get("n") or 1) > 1:
        raise unsupported("n", " with a value above 1 (one choice per call)")
    response_format = payload.get("response_format")
    if response_format is not None and response_format.get("type") != "text":
        raise unsupported("response_format", f" with type '{response_format.get('type')}'")


def single_prompt(payload: Mapping[str, Any]) -> str:
    """Bedrock completes one prompt per call; a one-element list is accepted too."""
    prompt = payload["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise BadRequest(
                f"Provider '{PROVIDER}' completes one prompt per request; got {len(prompt)}."
            )
        prompt = prompt[0]
    return str(prompt)


def _stop(payload: Mapping[str, Any]) -> list[str] | None:
    stop = payload.get("stop")
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def _max_tokens(payload: Mapping[str, Any]) -> int | None:
    value = payload.get("max_completion_tokens", payload.get("max_tokens"))
    return int(value) if value is not None else None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- Converse


def converse_body(payload: Mapping[str, Any], task: Task) -> dict[str, Any]:
    if task == Task.CHAT:
        system, messages = _messages(payload["messages"])
    else:
        system, messages = [], [{"role": "user", "content": [{"text": single_prompt(payload)}]}]
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    inference = _drop_none(
        {
            "maxTokens": _max_tokens(payload),
            "temperature": payload.get("temperature"),
            "topP": payload.get("top_p"),
            "stopSequences": _stop(payload),
        }
    )
    if inference:
        body["inferenceConfig"] = inference
    tool_config = _tool_config(payload)
    if tool_config:
        body["toolConfig"] = tool_config
    for key in sorted(CONVERSE_NATIVE & payload.keys()):
        body[key] = payload[key]
    if "top_k" in payload:  # Anthropic's own field, which Converse has no slot for
        extra = body.get("additionalModelRequestFields")
        body["additionalModelRequestFields"] = {
            **(extra if isinstance(extra, dict) else {}),
            "top_k": payload["top_k"],
        }
    return body


def _messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (Converse ``system``, ``messages``).

    Converse takes system text separately, tool results as user turns, and wants user and
    assistant turns to alternate, so consecutive turns of one role are merged.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(message.get("content"), role))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"))
        elif role == "assistant":
            blocks = [{"text": t} for t in _texts(message.get("content"), role)]
            blocks += [_tool_use(call) for call in message.get("tool_calls") or []]
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:
            raise BadRequest(f"Messages with role '{role}' are not supported by '{PROVIDER}'.")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _texts(content: object, role: str) -> list[str]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for part in content if isinstance(content, list) else []:
        if part.get("type") != "text":
            raise BadRequest(
                f"Content part type '{part.get('type')}' in a {role} message is not supported "
                f"by provider '{PROVIDER}'."
            )
        if part.get("text"):
            texts.append(str(part["text"]))
    return texts


def _user_blocks(content: object) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": t} for t in _texts(content, "user")]
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "image_url":
            blocks.append(_image(part.get("image_url")))
        else:
            blocks.extend({"text": t} for t in _texts([part], "user"))
    return blocks


def _image(image_url: object) -> dict[str, Any]:
    """Converse takes image bytes (base64 in JSON), not URLs: only data URLs translate."""
    url = image_url.get("url") if isinstance(image_url, dict) else None
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise BadRequest(
            f"Provider '{PROVIDER}' takes images as base64 data URLs "
            "(data:image/png|jpeg|gif|webp;base64,...), not links."
        )
    kind = "jpeg" if match.group(1) == "jpg" else match.group(1)
    return {"image": {"format": kind, "source": {"bytes": match.group(2)}}}


def _tool_use(call: object) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict):
        raise BadRequest("tool_calls[] entries must be {'id', 'type', 'function': {...}}.")
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except (orjson.JSONDecodeError, TypeError):  # TypeError: not a string
        raise BadRequest(
            f"tool_calls[].function.arguments of call '{call.get('id')}' is not valid JSON."
        ) from None
    return {
        "toolUse": {"toolUseId": call.get("id"), "name": function.get("name"), "input": arguments}
    }


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_call_id"):
        raise BadRequest("A message with role 'tool' needs 'tool_call_id'.")
    text = "\n".join(_texts(message.get("content"), "tool"))
    return {"toolResult": {"toolUseId": message["tool_call_id"], "content": [{"text": text}]}}


def _tool_config(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if not tools:
        if choice is not None:
            raise BadRequest("'tool_choice' needs 'tools'.")
        return None
    specs = []
    for tool in tools:
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise BadRequest(f"Provider '{PROVIDER}' takes only tools of type 'function'.")
        spec = {
            "name": function.get("name"),
            "inputSchema": {"json": function.get("parameters") or {"type": "object"}},
        }
        if function.get("description"):
            spec["description"] = function["description"]
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        config["toolChoice"] = {"tool": {"name": (choice.get("function") or {}).get("name")}}
    elif choice is not None:  # "none": Converse cannot forbid tools while declaring them
        raise unsupported("tool_choice", f" with value '{choice}'")
    return config


def converse_usage(usage: object) -> Usage | None:
    """Bedrock counts cache reads/writes apart from ``inputTokens``; OpenAI's
    ``prompt_tokens`` includes them."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("inputTokens"), usage.get("outputTokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    cached = sum(
        v
        for k in ("cacheReadInputTokens", "cacheWriteInputTokens")
        if isinstance(v := usage.get(k), int)
    )
    return Usage(prompt + cached, completion)


def converse_output(
    data: Mapping[str, Any],
) -> tuple[str | None, list[dict[str, Any]], str, Usage | None] | None:
    """A Converse response → (text, tool calls, finish_reason, usage); None if malformed."""
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    if not isinstance(blocks, list):
        return None
    texts = [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]
    calls = [
        {
            "id": use.get("toolUseId"),
            "type": "function",
            "function": {"name": use.get("name"), "arguments": json_text(use.get("input"))},
        }
        for b in blocks
        if isinstance(b, dict) and isinstance(use := b.get("toolUse"), dict)
    ]
    reason = STOP_REASONS.get(str(data.get("stopReason")), "stop")
    return ("".join(texts) if texts else None), calls, reason, converse_usage(data.get("usage"))


def json_text(value: object) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


# ---------------------------------------------------------------- Titan Text


def titan_text_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    config = _drop_none(
        {
            "maxTokenCount": _max_tokens(payload),
            "temperature": payload.get("temperature"),
            "topP": payload.get("top_p"),
            "stopSequences": _stop(payload),
        }
    )
    body: dict[str, Any] = {"inputText": single_prompt(payload)}
    if config:
        body["textGenerationConfig"] = config
    return body


def titan_text_output(data: Mapping[str, Any]) -> tuple[str, str, Usage | None] | None:
    results = data.get("results")
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        return None
    first = results[0]
    prompt, completion = data.get("inputTextTokenCount"), first.get("tokenCount")
    usage = (
        Usage(prompt, completion)
        if isinstance(prompt, int) and isinstance(completion, int)
        else None
    )
    reason = TITAN_REASONS.get(str(first.get("completionReason")), "stop")
    return str(first.get("outputText") or ""), reason, usage


def invocation_usage(chunk: Mapping[str, Any]) -> Usage | None:
    """Usage from the ``amazon-bedrock-invocationMetrics`` Bedrock adds to a stream's last chunk."""
    metrics = chunk.get("amazon-bedrock-invocationMetrics")
    if not isinstance(metrics, dict):
        return None
    prompt, completion = metrics.get("inputTokenCount"), metrics.get("outputTokenCount")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


# ---------------------------------------------------------------- embeddings


def embed_body(payload: Mapping[str, Any], family: Family) -> dict[str, Any]:
    texts = _embed_inputs(payload["input"])
    if family is Family.AMAZON:
        if len(texts) != 1:  # Titan takes one inputText per call; one call per query
            raise BadRequest(
                f"Amazon Titan embeddings on provider '{PROVIDER}' take one input per "
                f"request; got {len(texts)}. Send one request per input."
            )
        body: dict[str, Any] = {"inputText": texts[0]}
        return body | _drop_none(
            {"dimensions": payload.get("dimensions"), "normalize": payload.get("normalize")}
        )
    return {
        "texts": texts,
        "input_type": payload.get("input_type", COHERE_DEFAULT_INPUT_TYPE),
    } | _drop_none({"truncate": payload.get("truncate")})


def _embed_inputs(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    raise BadRequest(f"Provider '{PROVIDER}' embeds text: 'input' must be a string or strings.")


def embed_output(
    data: Mapping[str, Any], family: Family
) -> tuple[list[list[float]], int | None] | None:
    """(vectors, prompt tokens). Cohere's body has no token count (Bedrock sends it only in
    the ``X-Amzn-Bedrock-Input-Token-Count`` header), so it is None there."""
    if family is Family.AMAZON:
        vector, tokens = data.get("embedding"), data.get("inputTextTokenCount")
        if not isinstance(vector, list):
            return None
        return [vector], tokens if isinstance(tokens, int) else None
    vectors = data.get("embeddings")
    if isinstance(vectors, dict):  # requested via embedding_types: {"float": [...]}
        vectors = vectors.get("float")
    if not isinstance(vectors, list):
        return None
    return vectors, None


def base64_vector(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
