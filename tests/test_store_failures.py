"""One translation of store failures: the same failure, the same exception, from each store.

The store contract says "implementations raise StoreError on any backend failure". A
proxy in front of Redis (:mod:`tests.support.fault_proxy`) injects the same failures
into every Redis store, blocking and asyncio, standalone and cluster, and into every
way a call reaches Redis: a lone handler call (the store's kept connection), calls
coalesced behind one in flight (a batch), a sweep's disconnects, a script operation
and a pipelined read. Each failure must come out as a :class:`~presence_kit.StoreError`
(naming the operation, the original kept as ``__cause__``), whichever path it took:

- a connection reset by the peer while the call is sent;
- a reply that never comes (the store's deadline ends);
- a Lua error (WRONGTYPE inside the script: a key of the wrong type);
- an unexpected reply (an integer where the script returns an array).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from presence_kit import ConnectRequest, DisconnectRequest, StoreError
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import RequestBuilder
from tests.support.fault_proxy import Fault, FaultProxies
from tests.support.redis_servers import RedisClusterServers, RedisServer, aclose_client

REQUESTS = RequestBuilder()
TIMEOUT = 0.3
"""The stores' deadline: a reply that never comes fails within about twice it."""
DELAY = 0.1
"""How long the proxy holds each spoiled command: calls made meanwhile queue behind it."""
QUEUE = "presence:test:queue"
FAULTS: list[Fault | str] = ["reset", "timeout", "lua-error", "reply"]


def teacher(n: int) -> dict[str, Any]:
    return {"role": "TeacherAPP", "org_id": 1, "user_id": n, "lesson_id": 3}


def connect_request(n: int) -> ConnectRequest:
    return REQUESTS.connect(f"s{n}", teacher(n))


def disconnect_request(n: int) -> DisconnectRequest:
    return REQUESTS.disconnect(f"s{n}", teacher(n), "transport close")


class Target:
    """A Redis (standalone or cluster) behind fault proxies, and a direct admin client."""

    def __init__(self, kind: str, ports: list[int], admin: Any) -> None:
        self.kind = kind
        self.proxies = FaultProxies(ports)
        self.admin = admin
        self.ports = ports

    def sync_client(self) -> Any:
        if self.kind == "standalone":
            return redis.Redis.from_url(self.proxies.by_port[self.ports[0]].url)
        nodes = [redis.cluster.ClusterNode("127.0.0.1", port) for port in self.ports]
        return redis.cluster.RedisCluster(startup_nodes=nodes, address_remap=self.proxies.remap)

    def async_client(self) -> Any:
        if self.kind == "standalone":
            return redis.asyncio.Redis.from_url(self.proxies.by_port[self.ports[0]].url)
        nodes = [redis.asyncio.cluster.ClusterNode("127.0.0.1", port) for port in self.ports]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes, address_remap=self.proxies.remap
        )

    def inject(self, fault: Fault | str, *, commands: tuple[str, ...] = ("EVALSHA",)) -> None:
        """Spoil ``commands`` with ``fault``; a Lua error is a key of the wrong type."""
        if fault == "lua-error":
            for n in range(10):
                self.admin.set(f"alive:org_1_user_{n}", "not a hash")  # the script's HGET fails
            self.admin.set(QUEUE, "not a sorted set")
            return
        self.proxies.inject(fault, commands=commands, delay=DELAY)  # type: ignore[arg-type]


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()  # (requested here, so the clean-slate fixture does not know it)
        result = Target("standalone", [server.port], server.client())
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        result = Target("cluster", [s.port for s in cluster.servers], cluster.client())
    yield result
    result.proxies.close()


def _check(results: list[Any], operation: str) -> None:
    assert results, "no call was made"
    for result in results:
        assert type(result) is StoreError, f"{operation}: {result!r}"
        assert result.__cause__ is not None
        assert operation in str(result)


def _threads(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on threads, the first one first, the others while it is in flight."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # recorded, checked by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    threads[0].start()
    time.sleep(DELAY / 3)  # the first one is held by the proxy: the others queue behind it
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def _sync_failures(store: RedisStore, path: str) -> list[Any]:
    def failed(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BaseException as exc:  # recorded, checked by the test
            return exc

    if path == "lone":
        return [failed(lambda: store.connect(connect_request(1)))]
    if path == "batch":
        return _threads([lambda n=n: store.connect(connect_request(n)) for n in range(1, 6)])
    if path == "sweep":
        return [failed(lambda: store.disconnect_many([disconnect_request(n) for n in range(4)]))]
    if path == "script":
        return [failed(lambda: store.due_leaves(QUEUE, 10))]
    return [failed(lambda: store.presence("alive:org_1_user_1", "alive:org_1_user_1", "state"))]


async def _async_failures(store: AsyncRedisStore, path: str) -> list[Any]:
    async def failed(call: Any) -> Any:
        try:
            return await call
        except Exception as exc:  # recorded, checked by the test
            return exc

    if path == "lone":
        return [await failed(store.connect(connect_request(1)))]
    if path == "batch":
        first = asyncio.ensure_future(failed(store.connect(connect_request(1))))
        await asyncio.sleep(0)  # in flight: the others wait for one batch
        rest = [failed(store.connect(connect_request(n))) for n in range(2, 6)]
        return [*(await asyncio.gather(*rest)), await first]
    if path == "sweep":
        return [await failed(store.disconnect_many([disconnect_request(n) for n in range(4)]))]
    if path == "script":
        return [await failed(store.due_leaves(QUEUE, 10))]
    read = store.presence("alive:org_1_user_1", "alive:org_1_user_1", "state")
    return [await failed(read)]


PATHS = {
    "lone": "connect",
    "batch": "connect",
    "sweep": "disconnect_many",
    "script": "due_leaves",
    "read": "presence",
}


def _prepare(target: Target, fault: Fault | str, path: str) -> None:
    if path == "sweep" and fault != "lua-error":
        for n in range(4):  # something to disconnect (the scripts are loaded, too)
            target.admin.hset(f"alive:org_1_user_{n}", "state", "connect")
    if path == "read":
        if fault == "lua-error":  # no script: a command's WRONGTYPE is the same failure
            target.admin.set("alive:org_1_user_1", "not a hash")
        else:
            target.inject(fault, commands=("HGETALL",))
        return
    target.inject(fault)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fault", FAULTS)
def test_the_blocking_store_raises_store_error_for_every_failure(
    target: Target, fault: str, path: str
) -> None:
    store = RedisStore(target.sync_client(), timeout=TIMEOUT)
    _prepare(target, fault, path)
    _check(_sync_failures(store, path), PATHS[path])
    target.proxies.clear()
    store.close()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fault", FAULTS)
async def test_the_asyncio_store_raises_store_error_for_every_failure(
    target: Target, fault: str, path: str
) -> None:
    client = target.async_client()
    store = AsyncRedisStore(client, timeout=TIMEOUT)
    _prepare(target, fault, path)
    _check(await _async_failures(store, path), PATHS[path])
    target.proxies.clear()
    await store.aclose()
    await aclose_client(client)
