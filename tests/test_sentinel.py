"""Redis Sentinel, for real: a failover under the kit (sync and asyncio).

One master, one replica, three sentinels (``tests/support/sentinel.py``). Teachers are
connected through the kit, whose store wraps the integrator's ``Sentinel.master_for``
client; then the master stops answering (SIGSTOP) and the sentinels promote the replica.
Disconnects made during and after the failover must converge exactly once: every
teacher's leave announced once overall (after the outbox has replayed what failed), the
alive key ending ``state=disconnect`` on the new master, every handler call returning
at once (never raising), and the store's own pool keeping no connection to the old
master (checked with ``CLIENT LIST`` on it once it runs again).

The Socket.IO side is not what is tested here: sockets are the shipped recording fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from presence_kit import AsyncPresenceKit, PresenceKit, StoreError
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_fixtures import _require_redis_binaries
from tests.support.redis_servers import RedisServer, RedisServerError, wait_until
from tests.support.sentinel import SentinelSetup

pytestmark = pytest.mark.timeout(90)

CLIENT_NAME = "presence-kit-sentinel-test"
"""Set on the integrator's client; the store's own connections inherit it."""
HANDLER_BOUND = 3.0
"""Generous: a handler call must return about its deadline (0.5 s), never hang."""
SENTINEL_TIMEOUT = 0.5
TEACHERS = 6
CONVERGE_TIMEOUT = 30.0


def session(user: int) -> dict[str, Any]:
    return {"role": "TeacherAPP", "org_id": 1, "user_id": user, "lesson_id": 3}


def alive_key(user: int) -> str:
    return f"alive:org_1_user_{user}"


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    _require_redis_binaries()
    with SentinelSetup() as setup:
        yield setup


def timed(call: Callable[[], Any]) -> Any:
    start = time.monotonic()
    result = call()
    elapsed = time.monotonic() - start
    assert elapsed < HANDLER_BOUND, f"a handler call took {elapsed:.2f}s"
    return result


async def atimed(call: Awaitable[Any]) -> Any:
    start = time.monotonic()
    result = await call
    elapsed = time.monotonic() - start
    assert elapsed < HANDLER_BOUND, f"a handler call took {elapsed:.2f}s"
    return result


def leaves(sockets: RecordingSockets | AsyncRecordingSockets) -> Counter[Any]:
    return Counter(
        data["user_id"] for event, data, _to in sockets.emitted if event == "teacher_disconnect"
    )


def converged(master: RedisServer, sockets: RecordingSockets | AsyncRecordingSockets) -> bool:
    if leaves(sockets) != Counter(range(TEACHERS)):
        return False
    return all(
        master.admin("HGET", alive_key(user), "state") == "disconnect" for user in range(TEACHERS)
    )


def check_final_state(
    setup: SentinelSetup,
    old: RedisServer,
    new: RedisServer,
    sockets: RecordingSockets | AsyncRecordingSockets,
) -> None:
    assert leaves(sockets) == Counter(range(TEACHERS)), "each leave announced exactly once"
    for user in range(TEACHERS):
        assert new.admin("HGET", alive_key(user), "state") == "disconnect"
        assert 0 < int(new.admin("TTL", alive_key(user))) <= 3600
        assert not sockets.rooms_of(f"sid-{user}"), "rooms are left even while Redis fails"
    assert setup.clients_named(new, CLIENT_NAME) >= 1  # the store talks to the new master
    # The old master runs again: the store's pool must hold no connection to it (its idle
    # connections to a replaced master are dropped once the new one is discovered). The
    # sentinels are stopped first: reconfiguring the old master as a replica, they would
    # CLIENT KILL its clients and hide connections a pool had kept.
    for sentinel_server in setup.sentinels:
        sentinel_server.pause()
    old.resume()
    wait_until(
        lambda: setup.clients_named(old, CLIENT_NAME) == 0,
        10.0,
        "the store's connections to the old master to close",
    )


def replay(kit: PresenceKit) -> None:
    """Replay the outbox as the background does (it raises while Redis still fails)."""
    with contextlib.suppress(StoreError):
        timed(kit.replay_outbox)


async def areplay(kit: AsyncPresenceKit) -> None:
    with contextlib.suppress(StoreError):
        await atimed(kit.replay_outbox())


def _get_connection(pool: Any) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py < 5.1 wants a command name
        return pool.get_connection("PING")


async def _aget_connection(pool: Any) -> Any:
    try:
        return await pool.get_connection()
    except TypeError:
        return await pool.get_connection("PING")


# --- sync -------------------------------------------------------------------------


def test_sync_failover_converges_exactly_once(sentinel_setup: SentinelSetup) -> None:
    setup = sentinel_setup
    no_retry = Retry(NoBackoff(), 0)
    sentinel = redis.sentinel.Sentinel(
        setup.addresses,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "retry": no_retry,
        },
    )
    client = sentinel.master_for(setup.service, client_name=CLIENT_NAME, socket_timeout=5)
    store = RedisStore(client)
    sockets = RecordingSockets()
    kit = PresenceKit(store=store, sockets=sockets)
    try:
        old = setup.current_master()
        for user in range(TEACHERS):
            assert timed(lambda u=user: kit.handle_connect(f"sid-{u}", session(u))) is not None
        # A threaded server holds several connections: open a few, idle in the pool.
        pool = store.client.connection_pool
        held = [_get_connection(pool) for _ in range(3)]
        for connection in held:
            pool.release(connection)
        assert setup.clients_named(old, CLIENT_NAME) >= 3

        old.pause()  # the master stops answering; the sentinels fail over
        during = range(TEACHERS // 2)
        for user in during:
            timed(lambda u=user: kit.handle_disconnect(f"sid-{u}", session(u), "ping timeout"))

        def failed_over() -> RedisServer | None:
            replay(kit)  # replays fail fast until the new master is known
            try:
                return setup.wait_failover(old, timeout=0.01)
            except RedisServerError:
                return None

        new = wait_until(failed_over, CONVERGE_TIMEOUT, "the failover", interval=0.2)
        for user in range(TEACHERS // 2, TEACHERS):
            timed(lambda u=user: kit.handle_disconnect(f"sid-{u}", session(u), "client close"))

        def replayed() -> bool:
            replay(kit)
            return converged(new, sockets)

        wait_until(replayed, CONVERGE_TIMEOUT, "the leaves to converge", interval=0.1)
        for _ in range(3):  # nothing left to replay: no second announcement
            replay(kit)
        stats = kit.stats
        assert stats.replayed == stats.queued
        assert stats.announced_offline == TEACHERS
        check_final_state(setup, old, new, sockets)
    finally:
        kit.close(timeout=5)
        store.close()
        client.close()
        for sentinel_client in sentinel.sentinels:
            sentinel_client.close()


# --- asyncio ----------------------------------------------------------------------


async def _await_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise RedisServerError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def _aclose(client: Any) -> None:
    await (client.aclose() if hasattr(client, "aclose") else client.close())


async def test_async_failover_converges_exactly_once(sentinel_setup: SentinelSetup) -> None:
    from redis.asyncio.retry import Retry as AsyncRetry

    setup = sentinel_setup
    sentinel = redis.asyncio.sentinel.Sentinel(
        setup.addresses,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "retry": AsyncRetry(NoBackoff(), 0),
        },
    )
    client = sentinel.master_for(setup.service, client_name=CLIENT_NAME, socket_timeout=5)
    store = AsyncRedisStore(client)
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(store=store, sockets=sockets)
    try:
        old = setup.current_master()
        for user in range(TEACHERS):
            assert await atimed(kit.handle_connect(f"sid-{user}", session(user))) is not None
        pool = store.client.connection_pool
        held = [await _aget_connection(pool) for _ in range(3)]
        for connection in held:
            await pool.release(connection)
        assert setup.clients_named(old, CLIENT_NAME) >= 3

        old.pause()
        during = range(TEACHERS // 2)
        await atimed(
            asyncio.gather(
                *(
                    kit.handle_disconnect(f"sid-{user}", session(user), "ping timeout")
                    for user in during
                )
            )
        )

        async def failed_over() -> RedisServer | None:
            await areplay(kit)
            try:
                return setup.wait_failover(old, timeout=0.01)
            except RedisServerError:
                return None

        new = await _await_until(failed_over, CONVERGE_TIMEOUT, "the failover", 0.2)
        for user in range(TEACHERS // 2, TEACHERS):
            await atimed(kit.handle_disconnect(f"sid-{user}", session(user), "client close"))

        async def replayed() -> bool:
            await areplay(kit)
            return converged(new, sockets)

        await _await_until(replayed, CONVERGE_TIMEOUT, "the leaves to converge", 0.1)
        for _ in range(3):
            await areplay(kit)
        stats = kit.stats
        assert stats.replayed == stats.queued
        assert stats.announced_offline == TEACHERS
        check_final_state(setup, old, new, sockets)
    finally:
        await kit.aclose()
        await store.aclose()
        await _aclose(client)
        for sentinel_client in sentinel.sentinels:
            await _aclose(sentinel_client)
