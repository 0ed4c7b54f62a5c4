"""AI21 Labs Jurassic-2: the J2 ``complete`` API behind the OpenAI completions shape.

``POST {ai21labs_api_base or https://api.ai21.com}/studio/v1/{model}/complete`` with
``Authorization: Bearer <key>``. J2 only completes text, so this provider serves
``llm/v1/completions`` only; chat and embeddings are refused by the base ``check``.

Decisions the J2 API forces, and why:

* **One prompt per call.** J2 takes one ``prompt`` string. A one-element list is
  unwrapped; several prompts are refused (400) rather than fanned out, because the
  gateway sends one upstream request per query and a partial failure could not be
  reported as one OpenAI response.
* **Ranges are checked, never clamped.** J2 ``temperature`` is 0-1 (OpenAI's is 0-2),
  ``numResults`` (``n``) is 1-16 and penalty scales cannot be negative. Silently
  clamping would answer a different question than the one asked, so such values get a
  400 naming the parameter and the provider.
* **Penalties become objects.** ``frequency_penalty``/``presence_penalty`` ``x`` become
  ``frequencyPenalty``/``presencePenalty`` ``{"scale": x}``. J2's own penalty objects
  (with their ``applyTo*`` switches), ``countPenalty``, ``minTokens``, ``topKReturn``,
  ``logitBias`` and ``epoch`` pass through as provider extras (e.g. via Databricks
  ``extra_params``). Every other parameter is refused by name, never dropped:
  ``logit_bias`` (OpenAI keys are token ids, J2 keys are token strings), ``top_k``,
  ``tools``, ``response_format``, ``logprobs``, ``echo``, ``suffix``, ``seed``...
* **Streams are emulated.** J2 does not stream. A streamed query is sent upstream
  without ``stream``; the translator buffers the JSON body and, at its end, emits a
  short OpenAI chunk stream (text, then finish reason and usage) via ``ChunkEmitter``,
  so streaming clients work unchanged.
* **Usage** is counted from the token lists J2 returns: ``len(prompt.tokens)`` once,
  plus ``len(completions[i].data.tokens)`` over all completions (the trailing
  ``<|endoftext|>`` token included, as AI21 generated it).
* **Errors** are FastAPI-style ``{"detail": ...}``; 429 and a ``"Quota exceeded."``
  detail (whatever its status) become 429 ``REQUEST_LIMIT_EXCEEDED``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.responses import ChunkEmitter, completion_response, new_id
from servegate.canonical.usage import Usage
from servegate.ingress.errors import (
    BadRequest,
    InvalidParameter,
    UpstreamUnavailable,
)
from servegate.providers.base import (
    Provider,
    StreamTranslator,
    Translated,
    UpstreamRequest,
    reads_upstream,
)
from servegate.spec.endpoint import ExternalModel, Task

DEFAULT_API_BASE = "https://api.ai21.com"
MAX_NUM_RESULTS = 16
MAX_TEMPERATURE = 1.0

# OpenAI name → J2 name, for parameters that differ only by name.
_RENAMED = {"max_tokens": "maxTokens", "top_p": "topP", "n": "numResults"}
# OpenAI penalty → J2 penalty object.
_PENALTIES = {"frequency_penalty": "frequencyPenalty", "presence_penalty": "presencePenalty"}
# J2-native keys a client may send as provider extras; passed through unchanged.
_NATIVE = (
    "minTokens", "topKReturn", "countPenalty", "frequencyPenalty", "presencePenalty",
    "logitBias", "epoch",
)  # fmt: skip
# Every key a completions payload may carry for this provider.
_ACCEPTED = frozenset(
    {"prompt", "temperature", "stop", "stream", "stream_options", *_RENAMED, *_PENALTIES, *_NATIVE}
)
# J2 spellings of parameters clients must send in OpenAI form: a hint beats a bare 400.
_USE_OPENAI_NAME = {
    "maxTokens": "max_tokens",
    "topP": "top_p",
    "numResults": "n",
    "stopSequences": "stop",
}
_FINISH_REASONS = {"endoftext": "stop", "stop": "stop", "length": "length"}


@dataclass(frozen=True, slots=True)
class _Completion:
    """A J2 response reduced to what the OpenAI shapes need."""

    id: str
    choices: list[tuple[str, str | None]]
    usage: Usage | None


class AI21Provider(Provider):
    """AI21 Studio's J2 ``complete`` endpoint for one model."""

    name = "ai21labs"
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.COMPLETIONS})

    def __init__(self, model: ExternalModel, secrets: Mapping[str, str]) -> None:
        super().__init__(model, secrets)
        config = model.ai21labs_config
        if config is None:
            raise ValueError("provider 'ai21labs' needs ai21labs_config")
        base = (config.ai21labs_api_base or DEFAULT_API_BASE).rstrip("/")
        # '/' stays: "j2-grande/my-model" addresses an AI21 custom model, whose path is
        # /studio/v1/{model}/{custom model}/complete.
        self._url = f"{base}/studio/v1/{quote(model.name, safe='/')}/complete"
        self._headers = {
            "Authorization": f"Bearer {secrets['ai21labs_api_key']}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def check(self, query: QueryRequest) -> None:
        super().check(query)
        self._j2_body(query.payload)

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        return UpstreamRequest(
            url=self._url, headers=self._headers, body=orjson.dumps(self._j2_body(query.payload))
        )

    @reads_upstream
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        result = self.read_completion(body)
        response = completion_response(
            model=self.model.name, choices=result.choices, usage=result.usage, id=result.id
        )
        return Translated(body=response, usage=result.usage)

    def stream(self, query: QueryRequest) -> StreamTranslator:
        return AI21Stream(self, include_usage=query.include_usage_requested)

    def error_status(self, status: int, body: Any, headers: Mapping[str, str]) -> int:
        """AI21's quota message is a rate-limit signal whatever status carries it."""
        return 429 if _is_quota_exceeded(body) else status

    # ---------------------------------------------------------------- converters

    def _j2_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The J2 request body for an OpenAI completions payload; 400 on what J2 cannot take."""
        for key in payload:
            if key not in _ACCEPTED:
                raise BadRequest(self._unsupported(key))
        body: dict[str, Any] = {"prompt": self._prompt(payload["prompt"])}
        for openai_name, j2_name in _RENAMED.items():
            if payload.get(openai_name) is not None:
                body[j2_name] = payload[openai_name]
        if body.get("numResults", 1) > MAX_NUM_RESULTS:
            raise InvalidParameter(
                f"Parameter 'n' must be at most {MAX_NUM_RESULTS} for provider '{self.name}' "
                f"(J2 numResults); got {body['numResults']}."
            )
        temperature = payload.get("temperature")
        if temperature is not None:
            if temperature > MAX_TEMPERATURE:
                raise InvalidParameter(
                    f"Parameter 'temperature' must be between 0 and 1 for provider "
                    f"'{self.name}' (the Jurassic-2 range); got {temperature}."
                )
            body["temperature"] = temperature
        stop = payload.get("stop")
        if stop is not None:
            body["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
        for openai_name, j2_name in _PENALTIES.items():
            scale = payload.get(openai_name)
            if scale is None:
                continue
            if j2_name in payload:
                raise BadRequest(
                    f"Parameters '{openai_name}' and '{j2_name}' both set a penalty for "
                    f"provider '{self.name}'; send only one of them."
                )
            if isinstance(scale, bool) or not isinstance(scale, int | float) or scale < 0:
                raise InvalidParameter(
                    f"Parameter '{openai_name}' must be a number >= 0 for provider "
                    f"'{self.name}' (it becomes {j2_name}.scale); got {scale!r}."
                )
            body[j2_name] = {"scale": scale}
        for key in _NATIVE:
            if key in payload:
                body[key] = payload[key]
        return body

    def _unsupported(self, key: str) -> str:
        message = f"Parameter '{key}' is not supported by provider '{self.name}'"
        if key in _USE_OPENAI_NAME:
            return message + f"; send '{_USE_OPENAI_NAME[key]}' instead."
        return message + "; remove it from the request."

    def _prompt(self, prompt: str | list[str]) -> str:
        if isinstance(prompt, str):
            return prompt
        if len(prompt) == 1:
            return prompt[0]
        raise BadRequest(
            f"Provider '{self.name}' completes one prompt per request; 'prompt' has "
            f"{len(prompt)} entries. Send them as separate requests."
        )

    def read_completion(self, body: bytes) -> _Completion:
        """A J2 response body, for ``parse_response`` and the emulated stream alike."""
        data = self.load_json(body, self.name)
        completions = data.get("completions")
        if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
            raise UpstreamUnavailable(
                f"Provider '{self.name}' returned a response without 'completions'."
            )
        choices = [(_text(c), _finish_reason(c)) for c in completions]
        upstream_id = data.get("id")
        completion_id = f"cmpl-{upstream_id}" if upstream_id else new_id("cmpl")
        return _Completion(completion_id, choices, _usage(data.get("prompt"), completions))


class AI21Stream(StreamTranslator):
    """A streamed query answered from J2's whole (non-streamed) body.

    ``feed`` only buffers: the body is one JSON document, useless until complete.
    ``finish`` turns it into chunks, one text chunk and one finish chunk per choice, the
    usage riding on the last (``ChunkEmitter`` applies the stream usage policy). A body
    that is empty or cut short fails in ``finish``, before any frame went out, so the
    client still gets a normal error response.
    """

    content_types = frozenset({"application/json"})

    def __init__(self, provider: AI21Provider, *, include_usage: bool) -> None:
        self._provider = provider
        self._include_usage = include_usage
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        return []

    @reads_upstream
    def finish(self) -> list[bytes]:
        if not self._buffer:
            raise UpstreamUnavailable(
                f"Provider '{self._provider.name}' ended the response before it was complete."
            )
        result = self._provider.read_completion(bytes(self._buffer))
        self.usage = result.usage
        emitter = ChunkEmitter(
            task=Task.COMPLETIONS,
            model=self._provider.model.name,
            include_usage=self._include_usage,
            id=result.id,
        )
        frames: list[bytes] = []
        last = len(result.choices) - 1
        for index, (text, reason) in enumerate(result.choices):
            if text:
                frames += emitter.text(text, index)
            frames += emitter.finish(reason, result.usage if index == last else None, index)
        return frames


def _text(completion: Mapping[str, Any]) -> str:
    data = completion.get("data")
    text = data.get("text") if isinstance(data, dict) else None
    return text if isinstance(text, str) else ""


def _finish_reason(completion: Mapping[str, Any]) -> str | None:
    """endoftext/stop → stop, length → length; anything unknown → None (not guessed)."""
    finish = completion.get("finishReason")
    reason = finish.get("reason") if isinstance(finish, dict) else None
    return _FINISH_REASONS.get(reason) if isinstance(reason, str) else None


def _usage(prompt: object, completions: list[dict[str, Any]]) -> Usage | None:
    """Token counts from the token lists; None if AI21 (or a proxy) left them out."""
    prompt_tokens = prompt.get("tokens") if isinstance(prompt, dict) else None
    if not isinstance(prompt_tokens, list):
        return None
    generated = 0
    for completion in completions:
        data = completion.get("data")
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            return None
        generated += len(tokens)
    return Usage(prompt_tokens=len(prompt_tokens), completion_tokens=generated)


def _is_quota_exceeded(body: object) -> bool:
    detail = body.get("detail") if isinstance(body, dict) else None
    return isinstance(detail, str) and detail.lower().startswith("quota exceeded")
