"""Reading usage from the tail of a response without parsing the whole body."""

from __future__ import annotations

import orjson
import pytest

from servegate.canonical.usage import Usage, estimate_tokens, usage_near_end

EMBEDDINGS = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1] * 1536}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(EMBEDDINGS, Usage(7, 0), id="embeddings"),
        pytest.param(
            b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, '
            b'"prompt_tokens_details": {"cached_tokens": 1}}}',
            Usage(3, 2),
            id="nested-details-and-spaces",
        ),
        pytest.param(b'{"data": [], "usage": null}', None, id="null-usage"),
        pytest.param(b'{"data": []}', None, id="no-usage"),
        pytest.param(b'{"data": [], "usage": {"prompt_tokens": 3', None, id="truncated"),
        pytest.param(b'{"usage_hint": "x", "data": {"a": 1}}', None, id="similar-key"),
    ],
)
def test_usage_near_end(body: bytes, expected: Usage | None) -> None:
    assert usage_near_end(body) == expected


def test_estimate_tokens() -> None:
    assert estimate_tokens(0) == 0
    assert estimate_tokens(39) == 10
