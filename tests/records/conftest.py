"""PostgreSQL for the record tests: the session's server (``postgres``, tests/conftest.py),
or a fresh one on request.

Tests sharing the session server keep apart by schema (``schema`` fixture) and database
names; a test that stops and restarts the server takes its own (``private_postgres``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.records.pg import PostgresServer, running_postgres


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"
