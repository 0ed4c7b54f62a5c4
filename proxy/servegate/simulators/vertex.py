"""The Google Cloud Vertex AI simulator: Google's OAuth token endpoint and the Vertex AI
model endpoints, in one app.

``POST /token``
    The OAuth 2.0 JWT-bearer grant (RFC 7523) as ``oauth2.googleapis.com/token`` serves
    it: a form with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and an
    ``assertion`` JWT signed RS256 by a service account's private key. The signature is
    checked with the account's public key chosen by the JWT's ``kid``; ``iss`` must be the
    account's ``client_email``, ``aud`` Google's token URI (google-auth always writes
    ``https://oauth2.googleapis.com/token``, whatever the key's ``token_uri``) or this
    endpoint's own URL, ``iat``/``exp`` a window of at most an hour around now, and
    ``scope`` non-empty. Success: ``{"access_token", "expires_in", "token_type": "Bearer"}``;
    failures are Google's 400 bodies (``invalid_grant`` "Invalid JWT Signature." and so on).
``POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}``
    ``generateContent``, ``streamGenerateContent`` (``?alt=sse``: ``data: <json>`` events
    framed with CRLF and no terminator, the body simply ends; without it, a JSON array)
    for ``gemini-*`` models, and ``predict`` for ``text-bison``/``text-unicorn``,
    ``chat-bison``/``codechat-bison`` and the embedding models (``textembedding-gecko*``,
    ``text-embedding-*``, ``text-multilingual-embedding-*``, ``gemini-embedding-*``).
    Only ``Authorization: Bearer <token>`` with a live token issued by ``/token`` for the
    cloud-platform scope is accepted (401 ``UNAUTHENTICATED`` / 403 ``PERMISSION_DENIED``
    otherwise, in Google's ``{"error": {"code", "message", "status"}}`` envelope), and
    only for the token's own project. Unknown fields are refused as protobuf JSON does
    (``Invalid JSON payload received. Unknown name "x"``).
``POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:{method}``
    The same methods, with the same auth and project checks, on the endpoint a tuned model
    is deployed on (see ``endpoints`` of :func:`create_vertex_app`); the model deployed
    there decides which methods it takes and names itself in answers.

Answers are deterministic: chat replies ``"Simulated reply from <model> to: <first 40
chars of the last user text>"`` (candidate ``i > 0`` gets ``" [i]"``), text-bison
``"Simulated completion from <model> for: <first 40 chars>"``; a user text ``call <name>``
naming a declared function (or ``toolConfig`` mode ``ANY``) yields a ``functionCall`` with
arguments filled from its schema; ``sim:block`` in the user text yields a ``SAFETY`` stop.
**Token counting rule**: one token per whitespace-separated word of every text part (and
of a function call's name and JSON arguments). Embeddings are the OpenAI simulator's
SHA-256-derived unit vectors (8 dimensions unless ``outputDimensionality`` says otherwise).

Faults from ``/_sim/faults`` match by model id on the publisher model paths, by endpoint
id on the endpoint paths, and by the service account's ``client_email`` on ``/token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .faults import install_control
from .openai_bodies import embedding_vector
from .openai_shapes import count_tokens, split_words
from .schema_fill import example_for_schema
from .tokens import IssuedToken, TokenRegistry
from .wire import JsonReply, StreamReply, deliver, json_response

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "EXAMPLE_ACCOUNT",
    "JWT_BEARER_GRANT",
    "ServiceAccountKey",
    "create_vertex_app",
    "generate_service_account",
    "google_error",
    "vertex_status_error",
]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: The token URIs Google's token endpoint answers to (and so accepts as ``aud``).
GOOGLE_TOKEN_URIS = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
_MAX_ASSERTION_LIFETIME_S = 3600
_CLOCK_SKEW_S = 300
_DEFAULT_DIMENSIONS = 8
_CRLF = b"\r\n"
_CALL = re.compile(r"\bcall\s+([A-Za-z0-9_.-]+)", re.IGNORECASE)
_MALFORMED_EVENT = b'data: {"candidates": [' + _CRLF + _CRLF
_AUTH_HINT = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
    500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
_GEMINI_FIELDS = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "safetySettings",
     "generationConfig", "labels", "cachedContent"}
)  # fmt: skip
_GENERATION_FIELDS = frozenset(
    {"temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
     "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
     "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities",
     "mediaResolution", "audioTimestamp"}
)  # fmt: skip
_PART_FIELDS = frozenset({"text", "inlineData", "fileData", "functionCall", "functionResponse"})
_PALM_PARAMETERS = frozenset(
    {"temperature", "maxOutputTokens", "topK", "topP", "stopSequences", "candidateCount",
     "presencePenalty", "frequencyPenalty", "logprobs", "echo", "seed"}
)  # fmt: skip
_EMBEDDING_PARAMETERS = frozenset({"autoTruncate", "outputDimensionality"})
_TASK_TYPES = frozenset(
    {"RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
     "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"}
)  # fmt: skip
_MIME_TYPES = frozenset({"text/plain", "application/json", "text/x.enum"})
_TUNED_DEFAULT = "gemini-2.0-flash"
_GEMINI_VIA_PREDICT = (
    "Gemini cannot be accessed through Vertex Predict/RawPredict API. Please follow "
    "https://cloud.google.com/vertex-ai/docs/generative-ai/start/quickstarts/quickstart-multimodal"
    " for Gemini usage."
)


# ------------------------------------------------------------------ service accounts


@dataclass(frozen=True, slots=True)
class ServiceAccountKey:
    """What Google knows of one service-account key: whose it is and its public half."""

    client_email: str
    private_key_id: str
    public_key_pem: str
    project_id: str

    def public_key(self) -> rsa.RSAPublicKey:
        key = serialization.load_pem_public_key(self.public_key_pem.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"key {self.private_key_id} is not an RSA public key")
        return key


#: The account of ``examples/secrets/gcp/service_account``, whose private key is committed
#: for the example only (it is registered nowhere but here): the app's default.
EXAMPLE_ACCOUNT = ServiceAccountKey(
    client_email="servegate-simulator@servegate-example.iam.gserviceaccount.com",
    private_key_id="dcf7254bb993c10554946eb4a2291d6113fc7388",
    project_id="servegate-example",
    public_key_pem="""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAogDvuWOnfSgwhimjBVAt
gxgfRR4lgoaiOmKtLSnSeV/7QPGesX46CjhgJILw77zu+ZuOjPUJIc2LjrAd7UHj
4H69tsSNrBHL3V/yZpWVa6VJgT4cNnDeOGjN88gYaKERse7O0yHITb0D9P3mqwsZ
B4S/K4YAFo9fEJHXl89PB5Kskpw7nmNiwtCjpCPXgo0fXgZfa836JZFXfSza0TYp
GsCG1WiZFNXw5unsTjVb+i2dLXfnKuY4TW9QwbBJifBTBwY10oVwnRZUI5emegGb
GeMFzHE71q2Q1iRC+8vzuwP0wQjuh4DnobJRCAMsdlJZT5OWtpVj/PSTdjkJUWgX
2wIDAQAB
-----END PUBLIC KEY-----
""",
)


def generate_service_account(
    *,
    project_id: str = "servegate-test",
    client_email: str | None = None,
    token_uri: str = "http://127.0.0.1:8908/token",
) -> tuple[dict[str, str], ServiceAccountKey]:
    """A throwaway service account for tests: (the JSON key file as Google issues it, the
    :class:`ServiceAccountKey` to give :func:`create_vertex_app`). A fresh 2048-bit RSA key
    each call, so no two tests share a credential."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_id = hashlib.sha1(public_pem, usedforsecurity=False).hexdigest()
    email = client_email or f"sim-{key_id[:8]}@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "client_email": email,
        "client_id": str(int(key_id[:15], 16)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    return info, ServiceAccountKey(email, key_id, public_pem.decode(), project_id)


# --------------------------------------------------------------------------- errors


class _Refusal(Exception):
    def __init__(self, status: int, body: object) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def google_error(code: int, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """Google's JSON error envelope (``google.rpc.Status`` with the HTTP code)."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": _STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _invalid(message: str) -> _Refusal:
    return _Refusal(400, google_error(400, message))


def _error_info(reason: str) -> list[Any]:
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": {"service": "aiplatform.googleapis.com"},
        }
    ]


def _oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def vertex_status_error(
    request: web.Request, status: int, model: str | None, _headers: Mapping[str, str]
) -> object:
    """The body Google sends for ``status`` (the fault machinery's default): OAuth's on
    ``/token``, the ``google.rpc.Status`` envelope elsewhere."""
    if request.path == "/token":
        if status >= 500:
            return _oauth_error("internal_failure", "Backend Error")
        return _oauth_error("invalid_grant", "Invalid JWT Signature.")
    name = model or "gemini-2.0-flash"
    messages = {
        400: "Request contains an invalid argument.",
        401: f"Request had invalid authentication credentials. {_AUTH_HINT}",
        403: f"Permission 'aiplatform.endpoints.predict' denied on resource '{request.path}' "
        "(or it may not exist).",
        404: f"Publisher Model `{name}` was not found or your project does not have access "
        "to it. Please ensure you are using a valid model version.",
        429: "Resource exhausted. Please try again later. Please refer to "
        "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
        500: "Internal error encountered.",
        503: "The service is currently unavailable.",
        504: "The request timed out. Please try again.",
    }
    return google_error(status, messages.get(status, f"Simulated upstream error (HTTP {status})."))


# ------------------------------------------------------------------- the token grant


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _verify_assertion(
    assertion: str, keys: Mapping[str, Sequence[ServiceAccountKey]], own_uri: str
) -> tuple[dict[str, Any], ServiceAccountKey]:
    """The assertion's claims and signing key, or the 400 Google answers."""
    bad_signature = _Refusal(400, _oauth_error("invalid_grant", "Invalid JWT Signature."))
    try:
        head, body, signature = assertion.split(".")
        header, claims = orjson.loads(_b64url(head)), orjson.loads(_b64url(body))
        raw_signature = _b64url(signature)
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise _Refusal(400, _oauth_error("invalid_grant", "Invalid JWT: malformed.")) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _Refusal(400, _oauth_error("invalid_grant", "Invalid JWT: malformed."))
    account_keys = keys.get(str(claims.get("iss")))
    if not account_keys:
        raise _Refusal(400, _oauth_error("invalid_grant", "Invalid grant: account not found"))
    candidates = [k for k in account_keys if k.private_key_id == header.get("kid")]
    if header.get("alg") != "RS256" or not candidates:
        raise bad_signature
    try:
        candidates[0].public_key().verify(
            raw_signature, f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise bad_signature from None
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if (
        not isinstance(iat, int)
        or not isinstance(exp, int)
        or exp - iat > _MAX_ASSERTION_LIFETIME_S
        or not iat - _CLOCK_SKEW_S <= now <= exp + _CLOCK_SKEW_S
    ):
        raise _Refusal(
            400,
            _oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            ),
        )
    if claims.get("aud") not in GOOGLE_TOKEN_URIS | {own_uri}:
        raise _Refusal(400, _oauth_error("invalid_grant", "Invalid JWT: Failed audience check."))
    if not isinstance(claims.get("scope"), str) or not claims["scope"].strip():
        raise _Refusal(
            400,
            _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided."),
        )
    return claims, candidates[0]


# ---------------------------------------------------------------------- Gemini shapes


def _camel(name: str) -> str:
    """Protobuf JSON accepts a field's proto name (snake_case) as well as its JSON name."""
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _check_fields(body: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in body:
        if _camel(key) not in allowed:
            at = f" at '{where}'" if where else ""
            raise _invalid(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )


def _field(body: Mapping[str, Any], name: str) -> Any:
    """A field by JSON name or proto name."""
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)
    return body.get(name, body.get(snake))


def _check_parts(parts: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(parts, list) or not parts:
        raise _invalid(
            "Unable to submit request because it must include at least one parts field, "
            "which describes the prompt input."
        )
    for part in parts:
        if not isinstance(part, dict) or len({_camel(k) for k in part} & _PART_FIELDS) != 1:
            raise _invalid(
                f"Invalid value at '{where}': a part holds exactly one of {sorted(_PART_FIELDS)}."
            )
        _check_fields(part, _PART_FIELDS | {"thought", "thoughtSignature"}, where)
        if "text" in part and (not isinstance(part["text"], str) or not part["text"]):
            raise _invalid(
                "Unable to submit request because it has an empty text parameter. Add a value "
                "to the parameter and try again."
            )
        call = _field(part, "functionCall")
        if call is not None and not (
            isinstance(call, dict) and isinstance(call.get("args", {}), dict) and call.get("name")
        ):
            raise _invalid(
                f"Invalid value at '{where}.function_call': needs a name and object args."
            )
        result = _field(part, "functionResponse")
        if result is not None and not (
            isinstance(result, dict)
            and result.get("name")
            and isinstance(result.get("response"), dict)
        ):
            raise _invalid(
                f"Invalid value at '{where}.function_response': needs a name and object response."
            )
    return parts


def _check_generation(config: object) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _invalid("Invalid value at 'generation_config': must be an object.")
    _check_fields(config, _GENERATION_FIELDS, "generation_config")
    config = {_camel(k): v for k, v in config.items()}
    ranges = {
        "temperature": (0, 2),
        "topP": (0, 1),
        "presencePenalty": (-2, 2),
        "frequencyPenalty": (-2, 2),
    }
    for name, (low, high) in ranges.items():
        value = config.get(name)
        if value is not None and (not isinstance(value, int | float) or not low <= value <= high):
            raise _invalid(
                f"Unable to submit request because it has a {name} value of {value} but the "
                f"supported range is from {low} (inclusive) to {high} (inclusive). Update the "
                "value and try again."
            )
    for name, low, high in (
        ("candidateCount", 1, 8),
        ("maxOutputTokens", 1, 65536),
        ("topK", 1, 1000),
    ):
        value = config.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise _invalid(
                f"Invalid value at 'generation_config.{name}': an integer from {low} to {high}."
            )
    stops = config.get("stopSequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _invalid(
            "Invalid value at 'generation_config.stop_sequences': must be a list of strings."
        )
    mime = config.get("responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        raise _invalid(f"Unsupported mime type: {mime}. Supported: {sorted(_MIME_TYPES)}.")
    if config.get("responseSchema") is not None and mime not in ("application/json", "text/x.enum"):
        raise _invalid("response_schema requires response_mime_type application/json.")
    return config


def _check_gemini(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    _check_fields(body, _GEMINI_FIELDS, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("Unable to submit request because it has an empty contents field.")
    normalized = []  # parts keyed by JSON names, whichever names the request used
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            raise _invalid("Please use a valid role: user, model.")
        parts = _check_parts(content.get("parts"), f"contents[{i}].parts")
        normalized.append({"parts": [{_camel(k): v for k, v in p.items()} for p in parts]})
    system = _field(body, "systemInstruction")
    if system is not None:
        _check_parts(
            system.get("parts") if isinstance(system, dict) else None, "system_instruction.parts"
        )
    for tool in body.get("tools") or []:
        for declaration in (
            (_field(tool, "functionDeclarations") or []) if isinstance(tool, dict) else [None]
        ):
            name = declaration.get("name") if isinstance(declaration, dict) else None
            if not isinstance(name, str) or not re.fullmatch(
                r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", name
            ):
                raise _invalid(f"Invalid function name: {name!r}.")
    calling = _calling(body)
    if calling.get("mode", "AUTO") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        raise _invalid(
            f"Invalid value at 'tool_config.function_calling_config.mode': {calling.get('mode')!r}"
        )
    return normalized, _check_generation(_field(body, "generationConfig"))


def _calling(body: Mapping[str, Any]) -> dict[str, Any]:
    config = _field(body, "toolConfig")
    calling = _field(config, "functionCallingConfig") if isinstance(config, dict) else None
    return calling if isinstance(calling, dict) else {}


def _words(parts: Iterable[Mapping[str, Any]]) -> int:
    total = 0
    for part in parts:
        if isinstance(part.get("text"), str):
            total += count_tokens(part["text"])
        for key in ("functionCall", "functionResponse"):
            if isinstance(part.get(key), dict):
                total += count_tokens(str(part[key].get("name"))) + count_tokens(
                    orjson.dumps(part[key].get("args", part[key].get("response"))).decode()
                )
    return total


def _limit(text: str, stops: Sequence[str], max_tokens: int | None) -> tuple[str, str]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    words = split_words(text)
    if max_tokens is not None and len(words) > max_tokens:
        return "".join(words[:max_tokens]), "MAX_TOKENS"
    return text, "STOP"


def _function_to_call(body: Mapping[str, Any], user_text: str) -> dict[str, Any] | None:
    declared: list[dict[str, Any]] = [
        d for tool in body.get("tools") or [] for d in _field(tool, "functionDeclarations") or []
    ]
    calling = _calling(body)
    mode = calling.get("mode", "AUTO")
    by_name: dict[str, dict[str, Any]] = {str(d.get("name")): d for d in declared}
    if not declared or mode == "NONE":
        return None
    if mode == "ANY":
        first = str((_field(calling, "allowedFunctionNames") or [declared[0]["name"]])[0])
        return by_name.get(first, {"name": first})
    match = _CALL.search(user_text)
    return by_name.get(match.group(1)) if match else None


def _gemini_candidates(body: Mapping[str, Any], model: str) -> tuple[list[dict[str, Any]], int]:
    """The answer's candidates (each with its final parts) and the prompt's token count."""
    contents, config = _check_gemini(body)
    last = contents[-1]
    results = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
    user_text = " ".join(str(p.get("text", "")) for p in last["parts"] if "text" in p)
    if results:
        user_text = f"the result of {results[0]['name']}"
    snippet = user_text[:40].strip()
    system = _field(body, "systemInstruction") or {}
    prompt_tokens = sum(_words(c["parts"]) for c in contents) + _words(system.get("parts") or [])
    function = None if results else _function_to_call(body, user_text)
    candidates = []
    for index in range(config.get("candidateCount") or 1):
        candidate: dict[str, Any] = {} if index == 0 else {"index": index}
        if "sim:block" in user_text:
            candidate |= {
                "finishReason": "SAFETY",
                "safetyRatings": [
                    {
                        "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                        "probability": "HIGH",
                        "blocked": True,
                    }
                ],
            }
        elif function is not None:
            args = example_for_schema(function.get("parameters") or {}, snippet)
            call = {"name": function["name"], "args": args}
            candidate |= {
                "content": {"role": "model", "parts": [{"functionCall": call}]},
                "finishReason": "STOP",
            }
        else:
            reply = f"Simulated reply from {model} to: {snippet}" + (f" [{index}]" if index else "")
            if config.get("responseMimeType") == "application/json":
                schema = config.get("responseSchema")
                reply = orjson.dumps(
                    example_for_schema(schema, reply) if schema else {"reply": reply}
                ).decode()
            text, reason = _limit(
                reply, config.get("stopSequences") or [], config.get("maxOutputTokens")
            )
            candidate |= {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": reason,
            }
        candidates.append(candidate)
    return candidates, prompt_tokens


def _usage_metadata(prompt_tokens: int, candidates: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Proto3 JSON leaves zero counts out, as Vertex does."""
    output = sum(_words((c.get("content") or {}).get("parts") or []) for c in candidates)
    usage = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens + output}
    return usage | ({"candidatesTokenCount": output} if output else {})


def _stream_events(
    candidates: Sequence[dict[str, Any]], prompt_tokens: int, meta: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Each candidate's text in two-word pieces, its finishReason on its last piece; every
    event carries the usage so far. Function calls arrive whole, as Gemini sends them."""
    pieces: list[list[dict[str, Any]]] = []
    for candidate in candidates:
        parts = (candidate.get("content") or {}).get("parts") or []
        words = split_words(parts[0]["text"]) if parts and "text" in parts[0] else []
        own = [
            {"content": {"role": "model", "parts": [{"text": "".join(words[i : i + 2])}]}}
            for i in range(0, len(words), 2)
        ] or [{k: v for k, v in candidate.items() if k in ("content", "safetyRatings")}]
        for piece in own:
            piece.update({"index": candidate["index"]} if "index" in candidate else {})
        own[-1]["finishReason"] = candidate["finishReason"]
        pieces.append(own)
    events, output = [], 0
    for step in range(max(len(p) for p in pieces)):
        now = [p[step] for p in pieces if step < len(p)]
        output += sum(_words((p.get("content") or {}).get("parts") or []) for p in now)
        usage = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens + output}
        usage |= {"candidatesTokenCount": output} if output else {}
        events.append({"candidates": now, "usageMetadata": usage, **meta})
    return events


# --------------------------------------------------------------------- PaLM :predict


def _instances(body: Mapping[str, Any], allowed: frozenset[str]) -> list[dict[str, Any]]:
    _check_fields(body, frozenset({"instances", "parameters"}), "")
    instances = body.get("instances")
    if (
        not isinstance(instances, list)
        or not instances
        or not all(isinstance(i, dict) for i in instances)
    ):
        raise _invalid("Invalid value at 'instances': at least one instance object is required.")
    parameters = body.get("parameters") or {}
    for key in parameters if isinstance(parameters, dict) else ["parameters"]:
        if key not in allowed:
            raise _invalid(f"Invalid parameter: {key}.")
    return instances


def _token_metadata(prompt_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "tokenMetadata": {
            "inputTokenCount": {"totalTokens": prompt_tokens},
            "outputTokenCount": {"totalTokens": output_tokens},
        }
    }


def _predict_text(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    params = body.get("parameters") or {}
    predictions, prompt_tokens, output = [], 0, 0
    for instance in _instances(body, _PALM_PARAMETERS):
        prompt = instance.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _invalid(
                "Invalid value at 'instances[0].prompt': a non-empty prompt is required."
            )
        prompt_tokens += count_tokens(prompt)
        for index in range(params.get("candidateCount") or 1):
            reply = f"Simulated completion from {model} for: {prompt[:40].strip()}" + (
                f" [{index}]" if index else ""
            )
            text, _ = _limit(
                reply, params.get("stopSequences") or [], params.get("maxOutputTokens")
            )
            output += count_tokens(text)
            safety = {"blocked": False, "categories": [], "scores": []}
            predictions.append(
                {"content": text, "safetyAttributes": safety, "citationMetadata": {"citations": []}}
            )
    return {"predictions": predictions, "metadata": _token_metadata(prompt_tokens, output)}


def _predict_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    params = body.get("parameters") or {}
    instance = _instances(body, _PALM_PARAMETERS)[0]
    messages = instance.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid(
            "Invalid value at 'instances[0].messages': at least one message is required."
        )
    authors = [m.get("author") if isinstance(m, dict) else None for m in messages]
    if len(messages) % 2 == 0 or any(a != authors[i % 2] for i, a in enumerate(authors)):
        raise _invalid("There should be odd number of messages for correct alternating turn.")
    texts = [str(m.get("content", "")) for m in messages] + [str(instance.get("context", ""))]
    snippet = texts[-2][:40].strip()
    candidates, output = [], 0
    for index in range(params.get("candidateCount") or 1):
        reply = f"Simulated reply from {model} to: {snippet}" + (f" [{index}]" if index else "")
        text, _ = _limit(reply, params.get("stopSequences") or [], params.get("maxOutputTokens"))
        output += count_tokens(text)
        candidates.append({"author": "bot", "content": text})
    safety = [{"blocked": False, "categories": [], "scores": []} for _ in candidates]
    prediction = {
        "candidates": candidates,
        "safetyAttributes": safety,
        "citationMetadata": [{"citations": []} for _ in candidates],
    }
    prompt_tokens = sum(count_tokens(t) for t in texts)
    return {"predictions": [prediction], "metadata": _token_metadata(prompt_tokens, output)}


def _predict_embeddings(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    params = body.get("parameters") or {}
    dimensions = params.get("outputDimensionality") or _DEFAULT_DIMENSIONS
    predictions, characters = [], 0
    for instance in _instances(body, _EMBEDDING_PARAMETERS):
        _check_fields(instance, frozenset({"content", "taskType", "title"}), "instances[0]")
        content = instance.get("content")
        task_type = _field(instance, "taskType")
        if not isinstance(content, str):
            raise _invalid("Invalid value at 'instances[0].content': a string is required.")
        if task_type is not None and task_type not in _TASK_TYPES:
            raise _invalid(f"Invalid task_type: {task_type}.")
        values = list(
            struct.unpack(f"<{dimensions}f", embedding_vector(model, content, dimensions))
        )
        statistics = {"truncated": False, "token_count": count_tokens(content)}
        predictions.append({"embeddings": {"values": values, "statistics": statistics}})
        characters += len(content)
    return {"predictions": predictions, "metadata": {"billableCharacterCount": characters}}


# ------------------------------------------------------------------------- delivery


async def _deliver_stream(
    request: web.Request, events: Sequence[object], *, model: str
) -> web.StreamResponse:
    """:func:`.wire.deliver` with Vertex's SSE framing: CRLF line ends, no ``[DONE]``."""
    frames = [b"data: " + orjson.dumps(event) + _CRLF + _CRLF for event in events]
    reply = StreamReply(
        frames=frames,
        terminator=None,
        malformed=_MALFORMED_EVENT,
        content_type="text/event-stream",
    )
    return await deliver(request, reply, model=model)


# ------------------------------------------------------------------------------ app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _family(model: str) -> str | None:
    if model.startswith(
        (
            "textembedding-gecko",
            "text-embedding-",
            "text-multilingual-embedding-",
            "gemini-embedding-",
        )
    ):
        return "embeddings"
    if model.startswith("gemini-"):
        return "gemini"
    if model.startswith(("text-bison", "text-unicorn")):
        return "text"
    if model.startswith(("chat-bison", "codechat-bison")):
        return "chat"
    return None


def create_vertex_app(
    *,
    accounts: Iterable[ServiceAccountKey] = (EXAMPLE_ACCOUNT,),
    tokens: TokenRegistry | None = None,
    token_lifetime_s: int = 3600,
    models: Collection[str] | None = None,
    endpoints: Mapping[str, str] | None = None,
) -> web.Application:
    """An aiohttp app speaking Vertex AI and its OAuth token endpoint (plus ``/_sim``).

    ``accounts`` are the service-account keys ``/token`` accepts (default: the example
    key of ``examples/secrets/gcp/service_account``, whose ``token_uri`` expects this app
    on 127.0.0.1:8908); several keys of one account model key rotation. ``tokens`` is the
    registry issued access tokens go to (pass one with a fake clock to expire them, or to
    count fetches); ``token_lifetime_s`` is their ``expires_in``. ``models`` restricts the
    model ids served (others get Vertex's 404); by default every id of a known family is.
    ``endpoints`` maps the endpoint ids of ``projects/{p}/locations/{l}/endpoints/{id}``
    to the model deployed there (a tuned ``gemini-*`` takes generateContent, an embedding
    model predict); other ids get a 404. By default every endpoint id serves a tuned
    ``gemini-2.0-flash``.
    """
    keys: dict[str, list[ServiceAccountKey]] = {}
    for key in accounts:
        keys.setdefault(key.client_email, []).append(key)
    registry = tokens if tokens is not None else TokenRegistry()
    served = frozenset(models) if models is not None else None
    deployed = dict(endpoints) if endpoints is not None else None

    async def token(request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/x-www-form-urlencoded":
            return json_response(400, _oauth_error("invalid_request", "Bad Request"))
        form = await request.post()
        grant = str(form.get("grant_type") or "")
        if grant != JWT_BEARER_GRANT:
            return json_response(
                400, _oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant}")
            )
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or not assertion:
            return json_response(
                400, _oauth_error("invalid_request", "Missing required parameter: assertion")
            )
        own_uri = f"{request.scheme}://{request.host}{request.path}"
        try:
            claims, key = _verify_assertion(assertion, keys, own_uri)
        except _Refusal as refusal:
            return json_response(refusal.status, refusal.body)

        def issue() -> JsonReply:
            issued = registry.issue(
                client_id=key.client_email,
                tenant=key.project_id,
                audience=str(claims["scope"]),
                lifetime_s=token_lifetime_s,
            )
            body = {
                "access_token": issued.access_token,
                "expires_in": token_lifetime_s,
                "token_type": "Bearer",
            }
            return JsonReply(200, body, {"Cache-Control": "no-cache, no-store, max-age=0"})

        return await deliver(request, issue, model=key.client_email)

    def authenticate(request: web.Request) -> IssuedToken | web.Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            message = f"Request is missing required authentication credential. {_AUTH_HINT}"
            return json_response(
                401, google_error(401, message, _error_info("CREDENTIALS_MISSING"))
            )
        issued = registry.lookup(value.strip())
        if issued is None or not registry.is_live(issued.access_token, audience=issued.audience):
            reason = (
                "ACCESS_TOKEN_EXPIRED" if issued is not None else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            )
            message = f"Request had invalid authentication credentials. {_AUTH_HINT}"
            return json_response(401, google_error(401, message, _error_info(reason)))
        if CLOUD_PLATFORM_SCOPE not in issued.audience.split():
            message = "Request had insufficient authentication scopes."
            return json_response(
                403, google_error(403, message, _error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT"))
            )
        return issued

    def refuse_project(
        request: web.Request, project: str, resource: str
    ) -> IssuedToken | web.Response:
        issued = authenticate(request)
        if isinstance(issued, web.Response):
            return issued
        if project != issued.tenant:
            message = (
                "Permission 'aiplatform.endpoints.predict' denied on resource "
                f"'//aiplatform.googleapis.com/{resource}' (or it may not exist)."
            )
            return json_response(
                403, google_error(403, message, _error_info("IAM_PERMISSION_DENIED"))
            )
        return issued

    async def model_call(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        project, location, publisher = info["project"], info["location"], info["publisher"]
        model, _, method = info["model_method"].rpartition(":")
        resource = f"projects/{project}/locations/{location}/publishers/{publisher}/models/{model}"
        refused = refuse_project(request, project, resource)
        if isinstance(refused, web.Response):
            return refused
        family = _family(model)
        if method not in ("generateContent", "streamGenerateContent", "predict"):
            return json_response(404, google_error(404, f"Method not found: {method}."))
        if publisher != "google" or family is None or (served is not None and model not in served):
            message = (
                f"Publisher Model `{resource}` was not found or your project does not have "
                "access to it. Please ensure you are using a valid model version. For more "
                "information, see: "
                "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
            )
            return json_response(404, google_error(404, message))
        return await answer(request, model, method, family, fault_key=model)

    async def endpoint_call(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        project, location = info["project"], info["location"]
        endpoint, _, method = info["endpoint_method"].rpartition(":")
        resource = f"projects/{project}/locations/{location}/endpoints/{endpoint}"
        refused = refuse_project(request, project, resource)
        if isinstance(refused, web.Response):
            return refused
        if method not in ("generateContent", "streamGenerateContent", "predict"):
            return json_response(404, google_error(404, f"Method not found: {method}."))
        model = deployed.get(endpoint) if deployed is not None else _TUNED_DEFAULT
        family = _family(model) if model is not None else None
        if model is None or family is None:
            return json_response(404, google_error(404, f'Endpoint "{resource}" not found.'))
        return await answer(request, model, method, family, fault_key=endpoint)

    async def answer(
        request: web.Request, model: str, method: str, family: str, *, fault_key: str
    ) -> web.StreamResponse:
        if (family == "gemini") != (method != "predict"):
            message = (
                _GEMINI_VIA_PREDICT
                if family == "gemini"
                else f"Model {model} does not support {method}; call :predict."
            )
            return json_response(
                400, google_error(400, message, _error_info("FAILED_PRECONDITION"))
            )
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return json_response(
                400, google_error(400, "Invalid JSON payload received. Expected an object.")
            )
        try:
            if family == "gemini":
                candidates, prompt_tokens = _gemini_candidates(body, model)
                meta = {
                    "modelVersion": model,
                    "createTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "responseId": uuid.uuid4().hex[:24],
                }
                if method == "streamGenerateContent":
                    events = _stream_events(candidates, prompt_tokens, meta)
                    if request.query.get("alt") == "sse":
                        return await _deliver_stream(request, events, model=fault_key)
                    return await deliver(request, JsonReply(200, events), model=fault_key)
                usage = _usage_metadata(prompt_tokens, candidates)
                reply = {"candidates": candidates, "usageMetadata": usage, **meta}
            else:
                build = {
                    "text": _predict_text,
                    "chat": _predict_chat,
                    "embeddings": _predict_embeddings,
                }[family]
                reply = build(body, model)
        except _Refusal as refusal:
            return json_response(refusal.status, refusal.body)
        return await deliver(request, JsonReply(200, reply), model=fault_key)

    app = web.Application()
    install_control(app, error_factory=vertex_status_error)
    app.router.add_post("/token", token)
    app.router.add_post(
        "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model_method}",
        model_call,
    )
    app.router.add_post(
        "/v1/projects/{project}/locations/{location}/endpoints/{endpoint_method}", endpoint_call
    )
    return app
