"""The state dir as an ``EndpointStore`` (``LocalStore``): a create that loses the name
writes nothing, a replace from a stale read is a conflict, and the stored version says
when it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servegate.control.pending import pending_config, served_digest
from servegate.control.plaintext import extract
from servegate.control.statedir import LocalStore, StateDir
from servegate.control.store import AlreadyExists, Conflict
from servegate.ingress.errors import NotFound


def spec(key: str) -> dict[str, Any]:
    return {
        "config": {
            "served_entities": [
                {
                    "name": "gpt",
                    "external_model": {
                        "name": "gpt-4o-mini",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": {"openai_api_key_plaintext": key},
                    },
                }
            ]
        }
    }


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(StateDir(tmp_path / "state", tmp_path / "secrets"))


async def test_the_loser_of_a_create_writes_nothing(store: LocalStore) -> None:
    first = await store.create("chat", extract("chat", spec("sk-first")), "ana")
    with pytest.raises(AlreadyExists):
        await store.create("chat", extract("chat", spec("sk-second")), "bob")
    key = store.state.secrets_dir / "chat-credentials" / "gpt.openai_config.openai_api_key"
    assert key.read_text() == "sk-first"
    stored = await store.read("chat")
    assert stored is not None and stored.revision == first.revision
    assert not [p for p in store.state.endpoints.iterdir() if p.name.startswith(".")]


async def test_a_replace_from_a_stale_read_is_a_conflict(store: LocalStore) -> None:
    stored = await store.create("chat", extract("chat", spec("sk-1")), "ana")
    newer = await store.replace(stored, extract("chat", spec("sk-2")))
    assert newer.revision != stored.revision
    with pytest.raises(Conflict):
        await store.replace(stored, extract("chat", spec("sk-3")))
    await store.delete("chat")
    with pytest.raises(NotFound):
        await store.replace(newer, extract("chat", spec("sk-4")))
    with pytest.raises(NotFound):
        await store.delete("chat")


async def test_the_stored_version_knows_what_it_will_serve(store: LocalStore) -> None:
    stored = await store.create("chat", extract("chat", spec("sk-1")), "ana")
    assert stored.serves_as == served_digest(stored.spec) is not None
    assert "sk-1" not in str(stored.spec)
    pending = pending_config(stored, None)
    assert pending is not None and pending["config_version"] == 1
    assert pending["start_time"] == stored.changed_ms > 0
    assert stored.created_ms > 0 and stored.rejected is None
