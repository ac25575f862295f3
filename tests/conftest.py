"""For every test folder: the markers each folder's tests carry, and a real PostgreSQL server,
started once on first use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


# Every test is marked by the folder it lives in, so a selection needs no list of paths:
# `pytest -m "not e2e"` is the fast subset (no server, no vLLM engine, no wheel build).
# A folder missing here stops the collection: a new folder says which kind it is.
FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "unit": ("unit",),
    "deploy": ("deploy",),
    "kernels": ("kernels",),
    "e2e": ("e2e",),
    "zaya": ("zaya", "e2e"),  # the ZAYA model in real vLLM runs and a served tiny checkpoint
    "packaging": ("packaging", "e2e"),  # builds the wheel and installs it into a fresh venv
}
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve()
        if not path.is_relative_to(TESTS):
            continue
        folder = path.relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(f"tests/{folder}/ has no markers: add it to FOLDER_MARKERS in tests/conftest.py")
        for name in FOLDER_MARKERS[folder]:
            item.add_marker(name)
