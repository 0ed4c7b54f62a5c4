"""Google Cloud Vertex AI: Gemini's ``generateContent`` and the PaLM-era ``:predict`` models.

Vertex speaks two dialects under one path prefix
(``/v1/projects/{project}/locations/{region}/publishers/google/models/{model}``):

* Gemini models (converters in ``gemini.py``) take ``:generateContent`` / ``:streamGenerateContent?alt=sse`` for chat AND
  completions (a prompt becomes one user turn). The request is rebuilt from the OpenAI body:
  roles user/assistant → user/model, system → ``systemInstruction``, tool calls ↔
  ``functionCall``/``functionResponse`` parts, sampling parameters → ``generationConfig``.
* ``text-bison``/``text-unicorn`` (completions), ``chat-bison``/``codechat-bison`` (chat)
  and every embeddings model take ``:predict`` with ``{"instances", "parameters"}``.
  They do not stream here: a stream request for them is a 400.

``external_model.name`` is a publisher model id (``gemini-2.0-flash``,
``text-embedding-004``), the same as ``publishers/google/models/{model}``, or the resource
name of an endpoint a tuned model is deployed on,
``projects/{project}/locations/{location}/endpoints/{endpoint}``: its methods are called on
``/v1/projects/{project}/locations/{location}/endpoints/{endpoint}``, Gemini's for chat and
completions (a tuned Gemini model) and ``:predict`` for embeddings. The endpoint's project
and location must be the configured ``project_id`` and ``region`` (the host and the
service account's grant are chosen by those), or the model does not load. Any other name
with a ``/`` does not load either, so no name can reach another path.

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
import re
import struct
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import orjson

from servegate.canonical.requests import QueryRequest
from servegate.canonical.responses import (
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
from servegate.providers.base import (
    Provider,
    StreamTranslator,
    Translated,
    UpstreamRequest,
    reads_upstream,
)
from servegate.providers.gemini import (
    GEMINI_PARAMS,
    NAME,
    Choices,
    GeminiStream,
    content_parts,
    gemini_body,
    gemini_response,
    generation_config,
    one_prompt,
    refuse,
)
from servegate.spec.endpoint import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

_PALM_PARAMS = {k: v for k, v in GEMINI_PARAMS.items() if k != "seed"}
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


_ENDPOINT = re.compile(r"projects/([^/]+)/locations/([^/]+)/endpoints/([A-Za-z0-9][A-Za-z0-9_-]*)")
_PUBLISHER_MODEL = re.compile(r"publishers/([^/]+)/models/([^/]+)")


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
        self.add_secret_values(_key_parts(secrets["private_key"]))
        host = "aiplatform.googleapis.com"  # the "global" location has no regional host
        host = host if config.region == "global" else f"{config.region}-{host}"
        base = (config.vertex_api_base or f"https://{host}").rstrip("/")
        project, region = quote(config.project_id, safe=""), quote(config.region, safe="")
        resource, model_id = _resource(model.name, config.project_id, config.region)
        self._prefix = f"{base}/v1/projects/{project}/locations/{region}/{resource}"
        self._family = _family(model_id, model.task)
        self._headers = {"Content-Type": "application/json"}

    def check(self, query: QueryRequest) -> None:
        super().check(query)
        family = self._family
        if family is _Family.EMBEDDING:
            allowed = _EMBEDDING_ALLOWED
        elif family is _Family.GEMINI:
            allowed = _COMMON | _GEMINI_NATIVE | set(GEMINI_PARAMS)
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
            raise refuse("Parameter 'parallel_tool_calls': false (Gemini decides)")

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        payload, family = query.payload, self._family
        method = "predict"
        if family is _Family.GEMINI:
            body = gemini_body(payload)
            method = "streamGenerateContent?alt=sse" if query.stream else "generateContent"
        elif family is _Family.EMBEDDING:
            body = _embedding_body(payload)
        else:
            instance = (
                {"prompt": one_prompt(payload["prompt"])}
                if family is _Family.PALM_TEXT
                else _palm_chat_instance(payload["messages"])
            )
            params = generation_config(payload, _PALM_PARAMS)
            body = {"instances": [instance]} | ({"parameters": params} if params else {})
        return UpstreamRequest(f"{self._prefix}:{method}", self._headers, orjson.dumps(body))

    def live_secrets(self) -> tuple[str, ...]:
        return self._tokens.recent_tokens()

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

    @reads_upstream
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        data = self.load_json(body, NAME)
        if self._family is _Family.GEMINI:
            return gemini_response(query, data, self.model.name)
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
        return GeminiStream(self, query)

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


def _resource(name: str, project: str, region: str) -> tuple[str, str]:
    """The path below ``/locations/{region}/`` that ``name`` is called on, quoted, and the
    model id that decides its API family (``""`` for an endpoint: Gemini, or predict for
    embeddings). A name that is none of the accepted forms is a ``ValueError``."""
    if (endpoint := _ENDPOINT.fullmatch(name)) is not None:
        own_project, location, endpoint_id = endpoint.groups()
        if (own_project, location) != (project, region):
            raise ValueError(
                f"provider '{NAME}': model name '{name}' is an endpoint in project "
                f"'{own_project}', location '{location}', but google_cloud_vertex_ai_config "
                f"has project_id '{project}', region '{region}'; write the name with those "
                "(Vertex takes a project id or number alike in the path)."
            )
        return f"endpoints/{endpoint_id}", ""
    model_id = name
    if (publisher := _PUBLISHER_MODEL.fullmatch(name)) is not None:
        if publisher.group(1) != "google":
            raise ValueError(
                f"provider '{NAME}': model name '{name}' is a '{publisher.group(1)}' "
                "publisher model; only Google's (publishers/google/models/...) speak the "
                "APIs this provider calls."
            )
        model_id = publisher.group(2)
    if "/" in model_id or not model_id.strip(". "):
        raise ValueError(
            f"provider '{NAME}': model name '{name}' is neither a model id (gemini-2.0-flash), "
            "publishers/google/models/{model} nor "
            "projects/{project}/locations/{region}/endpoints/{endpoint}."
        )
    return f"publishers/google/models/{quote(model_id, safe='@')}", model_id


def _key_parts(raw_key: str) -> list[str]:
    """What an error could echo of a service-account key on its own: the PEM, each line
    of it (for a PEM re-wrapped or cut short; not the armour, nor a tail too short to
    matter), and the private_key_id."""
    info = orjson.loads(raw_key)  # the token source accepted it: a JSON object
    pem, key_id = str(info.get("private_key") or ""), str(info.get("private_key_id") or "")
    lines = [line.strip() for line in pem.splitlines()]
    return [pem, key_id, *(line for line in lines if len(line) >= 16 and "-----" not in line)]


# ---------------------------------------------------------------------------- requests


def _palm_chat_instance(messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """chat-bison: system text → ``context``; turns alternate ``user`` / ``bot`` authors."""
    context: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        role = message["role"]
        if role not in ("system", "developer", "user", "assistant") or message.get("tool_calls"):
            raise refuse(f"Tool calling (a '{role}' message) with chat-bison models")
        text = "".join(p["text"] for p in content_parts(message.get("content"), media=False))
        if role in ("system", "developer"):
            context.append(text)
        else:
            turns.append({"author": "user" if role == "user" else "bot", "content": text})
    return ({"context": "\n".join(context)} if context else {}) | {"messages": turns}


def _embedding_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    inputs = [payload["input"]] if isinstance(payload["input"], str) else payload["input"]
    if not all(isinstance(i, str) for i in inputs):
        raise refuse("input: token arrays (send text)")
    extra = {k: payload[k] for k in ("task_type", "title") if payload.get(k) is not None}
    names = {"dimensions": "outputDimensionality", "autoTruncate": "autoTruncate"}
    params = {field: payload[p] for p, field in names.items() if payload.get(p) is not None}
    body: dict[str, Any] = {"instances": [{"content": text, **extra} for text in inputs]}
    return body | ({"parameters": params} if params else {})


# --------------------------------------------------------------------------- responses


def _palm_reason(safety: object) -> str:
    return "content_filter" if isinstance(safety, dict) and safety.get("blocked") else "stop"


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
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            with contextlib.suppress(ValueError, OverflowError):  # "xs", "infs"
                seconds = max(1, -int(-float(delay[:-1]) // 1))
                return seconds if seconds < 10**9 else None
    return None
