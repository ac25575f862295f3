"""Fixtures for every test folder: a real PostgreSQL server, started once on first use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import fresh_database, postgres_server


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 for this session (stopped at its end)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """An empty database of its own for one test."""
    return fresh_database(postgres_server_url)
