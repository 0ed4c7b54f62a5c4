"""Amazon Bedrock (``provider: amazon-bedrock``): Converse, InvokeModel, SigV4, event streams.

Which Bedrock API answers which task (bodies in ``bedrock_bodies.py``):

====================  ==========================================================
chat                  Converse / ConverseStream, every ``bedrock_provider``
completions           InvokeModel (Titan Text body) for ``amazon``; Converse otherwise
embeddings            InvokeModel: Titan (``amazon``) or Cohere Embed (``cohere``)
====================  ==========================================================

Requests are signed per request in :meth:`BedrockProvider.authorize` with botocore's SigV4
signer (service ``bedrock``), because the signature covers the body and the time. Keys come
from the endpoint's access-key secrets or, without them, from the AWS default credential
chain of the gateway's environment (env vars, IRSA web identity, container or instance
role); see :class:`AwsCredentialChain`. ``instance_profile_arn`` also means the chain: an
instance profile cannot be assumed by ARN, so the gateway's pod or node must run with that
profile's role (IRSA or the instance role). ``uc_service_credential_name`` only exists
inside Databricks: such an endpoint is NOT_READY with that reason.

The signature also covers the URL path, so the path must be signed exactly as aiohttp will
send it. aiohttp normalises URLs with yarl, which turns a quoted ``%3A`` back into ``:``;
the URLs are therefore built once in ``__init__`` and normalised by yarl before signing.

Streams are ``application/vnd.amazon.eventstream``, decoded incrementally by botocore's
``EventStreamBuffer``: ConverseStream events, or InvokeModel ``chunk`` events whose base64
``bytes`` hold the model family's own chunk JSON. An ``exception`` message in the stream
(``throttlingException``...) becomes an :class:`UpstreamError` with the matching status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, ClassVar
from urllib.parse import quote

import botocore.session
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
from yarl import URL

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
)
from servegate.providers import bedrock_bodies as bodies
from servegate.providers.base import (
    SHAPE_ERRORS,
    Provider,
    StreamTranslator,
    Translated,
    UpstreamRequest,
    reads_upstream,
)
from servegate.spec import BedrockProvider as Family
from servegate.spec import ExternalModel, Task

log = logging.getLogger(__name__)

SIGNING_NAME = "bedrock"
EVENTSTREAM = "application/vnd.amazon.eventstream"
# Bedrock's error type (``x-amzn-ErrorType`` / a stream's ``:exception-type``) → the status
# the gateway answers with. AWS sends ModelTimeoutException as 408 and ModelErrorException as
# 424, which clients read as their own mistake; they are upstream failures.
ERROR_STATUS = {
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 403,
    "MissingAuthenticationTokenException": 403,
    "ExpiredTokenException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 504,
    "ModelErrorException": 502,
    "ModelStreamErrorException": 502,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}


class Api(Enum):
    CONVERSE = ("converse", "converse-stream")
    INVOKE = ("invoke", "invoke-with-response-stream")


_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
_HEADERS = {
    "converse": _JSON,
    "invoke": _JSON,
    "converse-stream": {"Content-Type": "application/json", "Accept": EVENTSTREAM},
    "invoke-with-response-stream": {
        "Content-Type": "application/json",
        "Accept": EVENTSTREAM,
        "X-Amzn-Bedrock-Accept": "application/json",
    },
}


class AwsCredentialChain:
    """The AWS default credential chain, resolved and refreshed off the event loop.

    botocore's chain may read files or call the instance metadata service, and refreshing
    temporary credentials calls STS: both block, so they run in a worker thread. Between
    refreshes the frozen keys are read from memory. One chain serves every provider built
    by every config reload (:meth:`shared`), so a reload costs no new lookup.
    """

    _shared: ClassVar[AwsCredentialChain | None] = None

    def __init__(self, session_factory: Callable[[], Any] = botocore.session.get_session) -> None:
        self._session_factory = session_factory
        self._credentials: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def shared(cls) -> AwsCredentialChain:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    async def frozen(self) -> ReadOnlyCredentials:
        if self._credentials is None:
            async with self._lock:
                if self._credentials is None:
                    self._credentials = await asyncio.to_thread(self._resolve)
        credentials = self._credentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        frozen: ReadOnlyCredentials = credentials.get_frozen_credentials()
        return frozen

    def _resolve(self) -> Any:
        try:
            credentials = self._session_factory().get_credentials()
        except Exception as exc:  # a broken profile or config file: botocore raises many kinds
            log.warning("the AWS default credential chain failed: %s", exc)
            credentials = None
        if credentials is None:
            raise UpstreamUnavailable(
                "Provider 'amazon-bedrock' found no AWS credentials: configure "
                "aws_access_key_id/aws_secret_access_key, or give the gateway an AWS identity "
                "(AWS_* environment variables, IRSA web identity, or an instance role)."
            )
        return credentials


class BedrockProvider(Provider):
    name = "amazon-bedrock"
    tasks = frozenset(Task)

    def __init__(
        self,
        model: ExternalModel,
        secrets: Mapping[str, str],
        *,
        chain: AwsCredentialChain | None = None,
    ) -> None:
        super().__init__(model, secrets)
        config = model.amazon_bedrock_config
        if config is None:
            raise ValueError("provider 'amazon-bedrock' needs amazon_bedrock_config")
        if config.uc_service_credential_name is not None:
            raise ValueError(
                "uc_service_credential_name: Unity Catalog service credentials exist only "
                "inside Databricks; use aws_access_key_id/aws_secret_access_key or the AWS "
                "default credential chain (IRSA, instance role) instead"
            )
        self._family = config.bedrock_provider
        if model.task == Task.EMBEDDINGS and self._family not in bodies.EMBED_PARAMS:
            raise ValueError(
                f"bedrock_provider '{self._family}' has no embedding models on Amazon Bedrock "
                "(use 'amazon' for Titan or 'cohere' for Cohere Embed)"
            )
        self._region = config.aws_region
        base = (
            config.bedrock_endpoint_url or f"https://bedrock-runtime.{self._region}.amazonaws.com"
        )
        prefix = f"{base.rstrip('/')}/model/{quote(model.name, safe='')}/"
        self._urls = {op: str(URL(prefix + op)) for api in Api for op in api.value}
        key, secret = secrets.get("aws_access_key_id"), secrets.get("aws_secret_access_key")
        self._keys = ReadOnlyCredentials(key, secret, None) if key and secret else None
        self._chain = chain if chain is not None else AwsCredentialChain.shared()

    def api(self, task: Task) -> Api:
        if task == Task.EMBEDDINGS or (task == Task.COMPLETIONS and self._family is Family.AMAZON):
            return Api.INVOKE
        return Api.CONVERSE

    def check(self, query: QueryRequest) -> None:
        super().check(query)
        if query.task == Task.EMBEDDINGS:
            if self._family not in bodies.EMBED_PARAMS:
                raise BadRequest(
                    f"Provider '{self.name}' does not support the task {query.task} "
                    f"for bedrock_provider '{self._family}'."
                )
            allowed = bodies.EMBED_PARAMS[self._family]
        elif query.task == Task.CHAT:
            allowed = bodies.CONVERSE_CHAT_PARAMS
        elif self.api(query.task) is Api.INVOKE:
            allowed = bodies.TITAN_TEXT_PARAMS
        else:
            allowed = bodies.CONVERSE_COMPLETION_PARAMS
        bodies.check_params(query.payload, allowed, self._family)

    def build_request(self, query: QueryRequest) -> UpstreamRequest:
        api = self.api(query.task)
        operation = api.value[1] if query.stream else api.value[0]
        if query.task == Task.EMBEDDINGS:
            body = bodies.embed_body(query.payload, self._family)
        elif api is Api.INVOKE:
            body = bodies.titan_text_body(query.payload)
        else:
            body = bodies.converse_body(query.payload, query.task)
        return UpstreamRequest(
            url=self._urls[operation], headers=_HEADERS[operation], body=orjson.dumps(body)
        )

    async def authorize(self, request: UpstreamRequest) -> UpstreamRequest:
        """Sign with SigV4 (botocore); the signature covers method, path, headers and body."""
        credentials = self._keys if self._keys is not None else await self._chain.frozen()
        signed = AWSRequest(
            method=request.method, url=request.url, data=request.body, headers=request.headers
        )
        SigV4Auth(credentials, SIGNING_NAME, self._region).add_auth(signed)
        return request.with_headers(dict(signed.headers.items()))

    @reads_upstream
    def parse_response(self, query: QueryRequest, body: bytes) -> Translated:
        data = self.load_json(body, self.name)
        model = self.model.name
        if query.task == Task.EMBEDDINGS:
            embedded = bodies.embed_output(data, self._family)
            if embedded is None:
                raise self._malformed()
            vectors, tokens = embedded
            result = embeddings_response(model=model, vectors=vectors, prompt_tokens=tokens or 0)
            if query.payload.get("encoding_format") == "base64":
                for item in result["data"]:
                    item["embedding"] = bodies.base64_vector(item["embedding"])
            if tokens is None:
                result["usage"] = None  # not in the body: report none rather than zero
            return Translated(result, Usage(tokens, 0) if tokens is not None else None)
        if self.api(query.task) is Api.INVOKE:
            titan = bodies.titan_text_output(data)
            if titan is None:
                raise self._malformed()
            text, reason, usage = titan
            completion = completion_response(model=model, choices=[(text, reason)], usage=usage)
            return Translated(completion, usage)
        converse = bodies.converse_output(data)
        if converse is None:
            raise self._malformed()
        content, calls, reason, usage = converse
        if query.task == Task.CHAT:
            message = chat_message(content, calls)
            return Translated(
                chat_response(model=model, choices=[(message, reason)], usage=usage), usage
            )
        completion = completion_response(
            model=model, choices=[(content or "", reason)], usage=usage
        )
        return Translated(completion, usage)

    def complete_usage(
        self, query: QueryRequest, translated: Translated, headers: Mapping[str, str]
    ) -> Translated:
        """InvokeModel reports its token counts in ``X-Amzn-Bedrock-Input-Token-Count`` and
        ``-Output-Token-Count``; Cohere's embed body has none, so they come from there."""
        if translated.usage is not None or translated.body is None:
            return translated
        prompt = _token_header(headers, "X-Amzn-Bedrock-Input-Token-Count")
        if prompt is None:
            return translated
        completion = _token_header(headers, "X-Amzn-Bedrock-Output-Token-Count") or 0
        usage = Usage(prompt, completion)
        reported: dict[str, int] = usage.to_openai()
        if query.task == Task.EMBEDDINGS:  # OpenAI's embedding usage has no completion side
            reported = {"prompt_tokens": prompt, "total_tokens": prompt}
        return Translated({**translated.body, "usage": reported}, usage)

    def stream(self, query: QueryRequest) -> StreamTranslator:
        return BedrockStream(self, query, invoke=self.api(query.task) is Api.INVOKE)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        kind = error_type(headers, body)
        return super().error(ERROR_STATUS.get(kind or "", status), body, headers)

    def _malformed(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"Provider '{self.name}' returned a response of unknown shape.")


def error_type(headers: Mapping[str, str], body: bytes) -> str | None:
    """The AWS error type: ``x-amzn-ErrorType: ThrottlingException:http://...``, else a
    JSON body's ``__type`` (``com.amazon.coral.service#UnrecognizedClientException``)."""
    for name, value in headers.items():
        if name.lower() == "x-amzn-errortype":
            return value.split(":", 1)[0].strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    kind = data.get("__type") if isinstance(data, dict) else None
    return kind.rsplit("#", 1)[-1] if isinstance(kind, str) else None


class BedrockStream(StreamTranslator):
    """Event-stream frames in, OpenAI SSE chunks out; usage from the stream's own counts."""

    content_types = frozenset({"application/vnd.amazon.eventstream"})

    def __init__(self, provider: BedrockProvider, query: QueryRequest, *, invoke: bool) -> None:
        self._provider = provider
        self._invoke = invoke
        self._buffer = EventStreamBuffer()
        self._emitter = ChunkEmitter(
            query.task, provider.model.name, include_usage=query.include_usage_requested
        )
        self._reason: str | None = None
        self._tools: dict[int, int] = {}  # contentBlockIndex → position among tool calls
        self._done = False
        self._failure: GatewayError | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        """Frames for every complete message. A failure met after some frames in the same
        chunk is held back and raised on the next call, so the client gets what the
        provider sent before it, then the error, however the bytes were split."""
        self._raise_held()
        self._buffer.add_data(chunk)
        frames: list[bytes] = []
        try:
            for message in self._buffer:
                if not self._done:
                    frames += self._message(message)
        except (ParserError, *SHAPE_ERRORS):  # botocore raises more than ParserError
            self._failure = UpstreamUnavailable(
                f"Provider '{self._provider.name}' sent a malformed event stream."
            )
        except GatewayError as failure:
            self._failure = failure
        if not frames:
            self._raise_held()
        return frames

    @reads_upstream
    def finish(self) -> list[bytes]:
        self._raise_held()
        if self._done:
            return []
        if self._reason is None:
            raise UpstreamUnavailable(
                f"Provider '{self._provider.name}' ended the stream before it was complete."
            )
        self._done = True  # stopped, but without the closing metadata (usage) event
        return self._emitter.finish(self._reason, None)

    def _raise_held(self) -> None:
        if self._failure is not None:
            raise self._failure

    @reads_upstream
    def _message(self, message: EventStreamMessage) -> list[bytes]:
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "exception":
            name = str(headers.get(":exception-type", ""))
            status = ERROR_STATUS.get(name[:1].upper() + name[1:], 500)
            raise UpstreamError(
                self._provider.name, status, self._provider.decode_error_body(message.payload)
            )
        if kind == "error":
            detail = {"code": headers.get(":error-code"), "message": headers.get(":error-message")}
            raise UpstreamError(self._provider.name, 500, detail)
        data = self._json(message.payload)
        event = headers.get(":event-type")
        if self._invoke:
            return self._titan(self._json(self._chunk_bytes(data))) if event == "chunk" else []
        return self._converse(str(event), data)

    def _converse(self, event: str, data: dict[str, Any]) -> list[bytes]:
        index = data.get("contentBlockIndex")
        if event == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if isinstance(use, dict) and isinstance(index, int):
                self._tools[index] = position = len(self._tools)
                return self._emitter.tool_call(
                    position=position, call_id=use.get("toolUseId"), name=use.get("name")
                )
        elif event == "contentBlockDelta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                return self._emitter.text(delta["text"])
            use = delta.get("toolUse")
            if isinstance(use, dict) and index in self._tools:
                return self._emitter.tool_call(
                    position=self._tools[index], arguments=str(use.get("input") or "")
                )
        elif event == "messageStop":
            self._reason = bodies.STOP_REASONS.get(str(data.get("stopReason")), "stop")
        elif event == "metadata" and self._reason is not None:
            self.usage = bodies.converse_usage(data.get("usage"))
            self._done = True
            return self._emitter.finish(self._reason, self.usage)
        return []

    def _titan(self, chunk: dict[str, Any]) -> list[bytes]:
        frames = self._emitter.text(chunk["outputText"]) if chunk.get("outputText") else []
        reason = chunk.get("completionReason")
        if reason is None:
            return frames
        self._reason = bodies.TITAN_REASONS.get(str(reason), "stop")
        self.usage = bodies.invocation_usage(chunk)
        self._done = True
        return frames + self._emitter.finish(self._reason, self.usage)

    def _chunk_bytes(self, data: dict[str, Any]) -> bytes:
        try:
            return base64.b64decode(str(data.get("bytes", "")), validate=True)
        except binascii.Error:
            raise self._bad_json() from None

    def _json(self, payload: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise self._bad_json()
        return data

    def _bad_json(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"Provider '{self._provider.name}' sent a stream event that is not JSON."
        )


def _token_header(headers: Mapping[str, str], name: str) -> int | None:
    """A token count header: plain digits only (anything else counts as absent)."""
    value = headers.get(name, "").strip()
    if value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    return None
