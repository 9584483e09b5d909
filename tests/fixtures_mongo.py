"""MongoDB fixtures: a SecantusDB server for the session, a fresh database per test.

pymongo clients are bound to the event loop that made them, so fixtures share only
the URI and the database name; each test builds its own ``MongoStore`` on its loop.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.services import SecantusServer


@dataclass(frozen=True)
class MongoTarget:
    """Where a test's MongoStore points: a server URI and a database nobody else uses."""

    uri: str
    database: str


@pytest.fixture(scope="session")
def secantus() -> Iterator[SecantusServer]:
    """One throwaway in-memory SecantusDB for the whole session."""
    server = SecantusServer(test_commands=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def mongo_target(secantus: SecantusServer) -> MongoTarget:
    """A fresh database name per test (SecantusDB slows down as collections grow)."""
    return MongoTarget(secantus.uri, "herald_test_" + secrets.token_hex(6))


@pytest.fixture
def durable_secantus() -> Iterator[SecantusServer]:
    """A SecantusDB of this test's own, on disk with ``--sync-on-commit`` and fail
    points enabled, so the test may ``kill()`` and ``start()`` it again."""
    storage = tempfile.mkdtemp(prefix="herald-secantus-")
    server = SecantusServer(storage=storage, sync_on_commit=True, test_commands=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(storage, ignore_errors=True)
