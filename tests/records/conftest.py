"""The record tests' schemas. Their PostgreSQL servers are fixtures of tests/conftest.py:
the session's (``postgres``), or a fresh one (``private_postgres``).

Tests sharing the session server keep apart by schema (``schema`` fixture) and database
names; a test that stops and restarts the server takes its own.
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"
