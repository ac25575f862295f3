"""The e2e folder's shared server: one ``mrsa serve`` for the session.

Test modules import the helpers from tests/e2e/server.py; the names below stay importable from
here for modules that still take them from this file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.server import (  # noqa: F401 (re-exported, see above)
    MAX_MODEL_LEN,
    MAX_POPULATION,
    MAX_ROUNDS,
    ROOT,
    Server,
    free_port,
    start_server,
    stop_server,
)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    proc, srv = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        stop_server(proc)
