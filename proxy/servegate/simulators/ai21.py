"""The AI21 Studio (Jurassic-2) simulator: ``POST /studio/v1/{model}/complete``.

What it reproduces of api.ai21.com, so a translator that gets any of it wrong fails:

* the path ``/studio/v1/{model}/complete`` (and the custom-model form
  ``/studio/v1/{model}/{custom model}/complete``); any other path under ``/studio/v1``
  is FastAPI's 404 ``{"detail": "Not Found"}``, another method its 405;
* ``Authorization: Bearer <key>``; a missing or wrong key is 401
  ``{"detail": "Forbidden: Bad or missing API token."}`` (AI21's own message);
* an unknown model is 404 ``{"detail": "Not Found"}``;
* the J2 body, validated the way AI21's FastAPI service answers (422 with
  ``{"detail": [{"loc", "msg", "type"}]}``, every problem listed): ``prompt``
  (required string), ``numResults`` 1-16, ``maxTokens``/``minTokens`` >= 0,
  ``temperature`` and ``topP`` 0-1, ``topKReturn`` 0-64, ``stopSequences`` (strings),
  ``frequencyPenalty``/``presencePenalty``/``countPenalty`` objects (``scale`` >= 0
  plus the ``applyTo*`` switches), ``logitBias``, ``epoch``. ``model`` and
  ``customModel`` are tolerated because AI21's own SDK sends them. Any other field is
  refused as ``extra fields not permitted``: that is stricter than AI21 may be, on
  purpose, so an OpenAI name (``max_tokens``, ``stream``) leaking upstream is caught;
* the response: ``{"id", "prompt": {"text", "tokens"}, "completions": [{"data":
  {"text", "tokens"}, "finishReason"}]}`` with ``finishReason`` ``{"reason":
  "endoftext"}``, ``{"reason": "length", "length": maxTokens}`` or ``{"reason":
  "stop", "sequence": s}``. J2 never streams.

Deterministic answers: completion ``i`` of a prompt is ``"Simulated completion from
<model> for: <first 40 chars of the prompt>"`` (``" [i]"`` appended for ``i > 0``),
cut at the first stop sequence, then at ``maxTokens`` (default 16). **Token rule**:
one token per whitespace-separated word (a token's ``textRange`` includes the
whitespace before it), so prompt tokens = words of the prompt, and a completion's
tokens = words of its text plus one ``<|endoftext|>`` token when it ended naturally.

Faults (``/_sim/faults``) match on the model in the path (without the custom model).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from .errors import ApiError
from .faults import install_control
from .openai_shapes import split_words
from .wire import JsonReply, deliver, json_response

__all__ = [
    "DEFAULT_AI21_API_KEY",
    "DEFAULT_AI21_MODELS",
    "ai21_status_error",
    "create_ai21_app",
]

#: The key the simulator accepts by default (examples/secrets/ai21/api_key holds it).
DEFAULT_AI21_API_KEY: Final = "ai21-servegate-simulator"
#: The Jurassic-2 model ids AI21 Studio served.
DEFAULT_AI21_MODELS: Final = (
    "j2-light", "j2-mid", "j2-ultra", "j2-large", "j2-grande", "j2-jumbo",
    "j2-grande-instruct", "j2-jumbo-instruct",
)  # fmt: skip
DEFAULT_MAX_TOKENS: Final = 16

_UNAUTHORIZED: Final = {"detail": "Forbidden: Bad or missing API token."}
_NOT_FOUND: Final = {"detail": "Not Found"}
_ENDOFTEXT: Final = "<|endoftext|>"
_PENALTY_SWITCHES: Final = frozenset(
    {"applyToWhitespaces", "applyToPunctuations", "applyToNumbers", "applyToStopwords",
     "applyToEmojis"}
)  # fmt: skip
_TOLERATED: Final = frozenset({"model", "customModel"})
#: Integer fields and their (minimum, maximum or None).
_INTS: Final = {
    "numResults": (1, 16),
    "maxTokens": (0, None),
    "minTokens": (0, None),
    "topKReturn": (0, 64),
    "epoch": (0, None),
}
_FLOATS: Final = {"temperature": (0.0, 1.0), "topP": (0.0, 1.0)}
_PENALTIES: Final = ("frequencyPenalty", "presencePenalty", "countPenalty")
_KNOWN: Final = frozenset(
    {"prompt", "stopSequences", "logitBias", *_INTS, *_FLOATS, *_PENALTIES, *_TOLERATED}
)


def ai21_status_error(
    _request: web.Request, status: int, _model: str | None, _headers: Mapping[str, str]
) -> object:
    """AI21's ``{"detail": ...}`` body for a fault that names only ``status``.

    The 429 text is what AI21's rate limiter answered (quoted in stanford-crfm/helm
    issue #188: ``AI21 error: 50 per 1 minute``).
    """
    details = {
        400: "Bad Request",
        401: _UNAUTHORIZED["detail"],
        403: "Forbidden",
        404: "Not Found",
        429: "50 per 1 minute",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    if status == 422:
        return {"detail": [{"loc": ["body"], "msg": "Invalid request.", "type": "value_error"}]}
    return {"detail": details.get(status, f"Simulated error (HTTP {status}).")}


class _Problems:
    """Collects FastAPI (pydantic v1) validation errors; all are reported at once."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, loc: tuple[str | int, ...], msg: str, kind: str, **ctx: Any) -> None:
        item: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": kind}
        if ctx:
            item["ctx"] = ctx
        self.items.append(item)

    def number(
        self,
        loc: tuple[str | int, ...],
        value: object,
        low: float,
        high: float | None,
        *,
        integer: bool,
    ) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
        ):
            kind = "integer" if integer else "float"
            self.add(loc, f"value is not a valid {kind}", f"type_error.{kind}")
        elif value < low:
            message = f"ensure this value is greater than or equal to {low}"
            self.add(loc, message, "value_error.number.not_ge", limit_value=low)
        elif high is not None and value > high:
            message = f"ensure this value is less than or equal to {high}"
            self.add(loc, message, "value_error.number.not_le", limit_value=high)

    def extra(self, loc: tuple[str | int, ...]) -> None:
        self.add(loc, "extra fields not permitted", "value_error.extra")


def _validate(body: Mapping[str, Any]) -> None:
    problems = _Problems()
    if "prompt" not in body:
        problems.add(("prompt",), "field required", "value_error.missing")
    elif not isinstance(body["prompt"], str):
        problems.add(("prompt",), "str type expected", "type_error.str")
    for name, (low, high) in _INTS.items():
        if body.get(name) is not None:
            problems.number((name,), body[name], low, high, integer=True)
    for name, (flow, fhigh) in _FLOATS.items():
        if body.get(name) is not None:
            problems.number((name,), body[name], flow, fhigh, integer=False)
    stops = body.get("stopSequences")
    if stops is not None:
        if not isinstance(stops, list):
            problems.add(("stopSequences",), "value is not a valid list", "type_error.list")
        else:
            for i, stop in enumerate(stops):
                if not isinstance(stop, str):
                    problems.add(("stopSequences", i), "str type expected", "type_error.str")
    for name in _PENALTIES:
        if body.get(name) is not None:
            _validate_penalty(problems, name, body[name])
    bias = body.get("logitBias")
    if bias is not None:
        if not isinstance(bias, dict):
            problems.add(("logitBias",), "value is not a valid dict", "type_error.dict")
        else:
            for token, value in bias.items():
                problems.number(("logitBias", token), value, float("-inf"), None, integer=False)
    for name in body:
        if name not in _KNOWN:
            problems.extra((name,))
    if problems.items:
        raise ApiError(422, {"detail": problems.items})


def _validate_penalty(problems: _Problems, name: str, penalty: object) -> None:
    if not isinstance(penalty, dict):
        problems.add((name,), "value is not a valid dict", "type_error.dict")
        return
    if "scale" not in penalty:
        problems.add((name, "scale"), "field required", "value_error.missing")
    else:
        problems.number((name, "scale"), penalty["scale"], 0, None, integer=False)
    for key, value in penalty.items():
        if key == "scale":
            continue
        if key not in _PENALTY_SWITCHES:
            problems.extra((name, key))
        elif not isinstance(value, bool):
            problems.add((name, key), "value could not be parsed to a boolean", "type_error.bool")


def _body_error(msg: str, kind: str) -> web.Response:
    """FastAPI's 422 for a body that is not a JSON object."""
    return json_response(422, {"detail": [{"loc": ["body"], "msg": msg, "type": kind}]})


def _tokens(text: str, *, endoftext: bool = False, top_k: int = 0) -> list[dict[str, Any]]:
    """J2 token records, one per word; ``▁`` stands for the whitespace before a word."""
    tokens: list[dict[str, Any]] = []
    position = 0
    for piece in split_words(text):
        word = piece.lstrip()
        token = ("▁" + word) if len(word) < len(piece) else word
        top = [{"token": token, "logprob": -0.25}] + [
            {"token": f"▁alt{j}", "logprob": -2.0 - j} for j in range(1, top_k)
        ]
        tokens.append(
            {
                "generatedToken": {"token": token, "logprob": -0.25, "raw_logprob": -0.25},
                "topTokens": top if top_k else None,
                "textRange": {"start": position, "end": position + len(piece)},
            }
        )
        position += len(piece)
    if endoftext:
        tokens.append(
            {
                "generatedToken": {"token": _ENDOFTEXT, "logprob": -0.01, "raw_logprob": -0.01},
                "topTokens": None,
                "textRange": {"start": len(text), "end": len(text)},
            }
        )
    return tokens


def _completion(body: Mapping[str, Any], model: str, index: int) -> dict[str, Any]:
    prompt: str = body["prompt"]
    text = f"Simulated completion from {model} for: {prompt[:40].strip()}"
    text += f" [{index}]" if index else ""
    finish: dict[str, Any] = {"reason": "endoftext"}
    stops = [s for s in body.get("stopSequences") or [] if s]
    cuts = [(text.find(s), s) for s in stops if text.find(s) >= 0]
    if cuts:
        cut, sequence = min(cuts)
        text, finish = text[:cut], {"reason": "stop", "sequence": sequence}
    max_tokens = body.get("maxTokens")
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    words = split_words(text)
    if len(words) > max_tokens or (len(words) == max_tokens and finish["reason"] == "endoftext"):
        # The <|endoftext|> token would be one past the budget: the answer is cut.
        text, finish = "".join(words[:max_tokens]), {"reason": "length", "length": max_tokens}
    top_k = body.get("topKReturn") or 0
    tokens = _tokens(text, endoftext=finish["reason"] == "endoftext", top_k=top_k)
    return {"data": {"text": text, "tokens": tokens}, "finishReason": finish}


def _complete_body(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The deterministic J2 response to a validated request body."""
    n = body.get("numResults") or 1
    return {
        "id": str(uuid.uuid4()),
        "prompt": {"text": body["prompt"], "tokens": _tokens(body["prompt"])},
        "completions": [_completion(body, model, i) for i in range(n)],
    }


def create_ai21_app(
    *,
    api_keys: Collection[str] = (DEFAULT_AI21_API_KEY,),
    models: Collection[str] | None = DEFAULT_AI21_MODELS,
) -> web.Application:
    """An aiohttp app speaking AI21 Studio's J2 ``complete`` API (plus ``/_sim``).

    ``api_keys``: the bearer keys accepted (default :data:`DEFAULT_AI21_API_KEY`).
    ``models``: the model ids served (default :data:`DEFAULT_AI21_MODELS`); others get
    404; None accepts any model. Serve it at the origin a gateway's
    ``ai21labs_api_base`` names (the quick start's example uses port 8909); paths
    are ``/studio/v1/{model}/complete`` and ``/studio/v1/{model}/{custom}/complete``.
    """
    keys = frozenset(api_keys)
    known = frozenset(models) if models is not None else None

    async def complete(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return json_response(405, {"detail": "Method Not Allowed"})
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in keys:
            return json_response(401, _UNAUTHORIZED)
        model = request.match_info["model"]
        if known is not None and model not in known:
            return json_response(404, _NOT_FOUND)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _body_error("Invalid JSON", "value_error.jsondecode")
        if not isinstance(body, dict):
            return _body_error("value is not a valid dict", "type_error.dict")
        try:
            _validate(body)
        except ApiError as exc:
            return json_response(exc.status, exc.body)
        reply = JsonReply(200, _complete_body(body, model))
        return await deliver(request, reply, model=model)

    async def not_found(_request: web.Request) -> web.StreamResponse:
        return json_response(404, _NOT_FOUND)

    app = web.Application()
    install_control(app, error_factory=ai21_status_error)
    app.router.add_route("*", "/studio/v1/{model}/complete", complete)
    app.router.add_route("*", "/studio/v1/{model}/{custom}/complete", complete)
    app.router.add_route("*", "/studio/v1/{tail:.*}", not_found)
    return app
