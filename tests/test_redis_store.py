"""Redis-specific behaviour of the stores: deadlines, failures, script reloads, and
that the integrator's client is left as it was."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import redis.asyncio

from presence_kit import StoreError
from presence_kit._core import KitCore
from presence_kit.redis import AsyncRedisStore, RedisStore
from tests.support.redis_servers import RedisServer

TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
CORE = KitCore(settings=None, policies=None, namespace="/")


def connect_request(sid: str = "s1") -> object:
    return CORE.prepare_connect(sid, TEACHER)[3]


def disconnect_request(sid: str = "s1") -> object:
    return CORE.prepare_disconnect(sid, TEACHER, "transport close")[3]


def test_a_paused_redis_fails_fast_with_a_store_error(fresh_redis_server: RedisServer) -> None:
    client = fresh_redis_server.client()  # redis-py defaults: 5 s timeouts, retries
    store = RedisStore(client, timeout=0.2)
    store.connect(connect_request())  # warm the pool and the script cache
    fresh_redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            store.disconnect(disconnect_request())
        elapsed = time.monotonic() - started
    finally:
        fresh_redis_server.resume()
    assert isinstance(info.value.__cause__, redis.RedisError)
    assert elapsed < 1.0  # one 0.2 s deadline, no retries (redis-py's own would take 5 s+)
    # The call may have run once Redis woke up; a retry returns the same outcome.
    assert store.disconnect(disconnect_request()).last is True
    store.close()
    assert client.ping() is True  # the integrator's client is untouched by close()


def test_a_dead_redis_is_a_store_error(fresh_redis_server: RedisServer) -> None:
    store = RedisStore(fresh_redis_server.client(), timeout=0.2)
    fresh_redis_server.kill()
    with pytest.raises(StoreError):
        store.connect(connect_request())
    fresh_redis_server.restart()
    assert store.connect(connect_request()).first is True


async def test_async_store_deadline_and_failure(fresh_redis_server: RedisServer) -> None:
    client = fresh_redis_server.async_client()
    store = AsyncRedisStore(client, timeout=0.2)
    await store.connect(connect_request())
    fresh_redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.disconnect(disconnect_request())
        with pytest.raises(StoreError):
            await store.connect(connect_request("s2"))
        elapsed = time.monotonic() - started
    finally:
        fresh_redis_server.resume()
    assert elapsed < 2.0
    assert (await store.disconnect(disconnect_request())).last is True
    await store.aclose()
    assert await client.ping() is True
    await client.aclose()


def test_timeout_none_uses_the_client_as_given(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = RedisStore(client, timeout=None)
    assert store.client is client
    assert store.connect(connect_request()).first is True
    store.close()
    assert client.ping() is True


async def test_async_timeout_none_uses_the_client_as_given(redis_server: RedisServer) -> None:
    client = redis_server.async_client()
    store = AsyncRedisStore(client, timeout=None)
    assert store.client is client
    assert (await store.connect(connect_request())).first is True
    assert (await store.disconnect(disconnect_request())).last is True
    await store.aclose()
    assert await client.ping() is True
    await client.aclose()


def test_derived_client_keeps_the_integrators_options(redis_server: RedisServer) -> None:
    client = redis_server.client(protocol=3, decode_responses=True, client_name="mine")
    store = RedisStore(client, timeout=0.3)
    kwargs = store.client.connection_pool.connection_kwargs
    assert (kwargs["protocol"], kwargs["decode_responses"], kwargs["client_name"]) == (
        3,
        True,
        "mine",
    )
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.3, 0.3)
    assert kwargs["retry"].get_retries() == 0
    assert client.connection_pool.connection_kwargs["socket_timeout"] != 0.3


def test_scripts_are_reloaded_after_a_script_flush(redis_server: RedisServer) -> None:
    """A failover empties the script cache (NOSCRIPT): the store loads them again."""
    store = RedisStore(redis_server.client())
    store.connect(connect_request())
    redis_server.client().script_flush()
    assert store.disconnect(disconnect_request()).last is True


async def test_async_scripts_are_reloaded_after_a_script_flush(redis_server: RedisServer) -> None:
    client = redis_server.async_client()
    store = AsyncRedisStore(client)
    await store.connect(connect_request())
    redis_server.client().script_flush()
    assert (await store.disconnect(disconnect_request())).last is True
    await store.aclose()
    await client.aclose()


def test_a_corrupt_record_is_a_store_error(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.client())
    store.connect(connect_request())
    redis_server.client().hset("alive:org_1_user_2", "c:s1", "not json")
    with pytest.raises(StoreError, match="corrupt connection record"):
        store.disconnect(disconnect_request())


async def test_a_burst_beyond_the_pool_waits_for_a_connection(redis_server: RedisServer) -> None:
    """300 handlers at once on a pool of 20: none fails with MaxConnectionsError."""
    import asyncio

    from presence_kit import AsyncPresenceKit
    from presence_kit.testing import AsyncRecordingSockets

    client = redis_server.async_client(max_connections=20)
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client, timeout=2.0), sockets=AsyncRecordingSockets()
    )

    async def one(n: int) -> None:
        session = {**TEACHER, "user_id": n}
        await kit.handle_connect(f"s{n}", session)
        await kit.handle_disconnect(f"s{n}", session)

    await asyncio.gather(*(one(n) for n in range(300)))
    assert (kit.stats.store_failures, kit.stats.announced_offline) == (0, 300)
    await kit.aclose()
    await client.aclose()


async def test_concurrent_calls_share_a_pipeline_and_survive_noscript(
    redis_server: RedisServer,
) -> None:
    """Calls made while another is in flight go out together as one pipeline; when the
    script cache was emptied (a failover), the batch loads the scripts and resends."""
    import asyncio

    client = redis_server.async_client()
    store = AsyncRedisStore(client)
    sessions = [{**TEACHER, "user_id": n} for n in range(50)]
    connects = [CORE.prepare_connect(f"s{n}", s)[3] for n, s in enumerate(sessions)]
    outcomes = await asyncio.gather(*(store.connect(r) for r in connects))
    assert all(o.first for o in outcomes)
    redis_server.client().script_flush()
    batches: list[int] = []
    send = store._pipelined  # type: ignore[attr-defined]

    async def spy(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return await send(batch)  # type: ignore[no-any-return]

    store._pipelined = spy  # type: ignore[attr-defined]
    disconnects = [
        CORE.prepare_disconnect(f"s{n}", s, "transport close")[3] for n, s in enumerate(sessions)
    ]
    outcomes = await asyncio.gather(*(store.disconnect(r) for r in disconnects))
    assert all(o.last for o in outcomes)
    assert max(batches) > 1  # they shared round trips
    # The first batch met NOSCRIPT and was sent again after loading the scripts.
    assert sum(batches) > 49
    await store.aclose()
    await client.aclose()
