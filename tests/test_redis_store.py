"""Redis-specific behaviour of the stores: deadlines, failures, script reloads, and
that the integrator's client is left as it was."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.utils

from presence_kit import ConnectRequest, DisconnectRequest, StoreError
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import RequestBuilder
from tests.support.redis_servers import RedisServer, aclose_client

TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
REQUESTS = RequestBuilder()


def connect_request(sid: str = "s1") -> ConnectRequest:
    return REQUESTS.connect(sid, TEACHER)


def disconnect_request(sid: str = "s1") -> DisconnectRequest:
    return REQUESTS.disconnect(sid, TEACHER, "transport close")


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
    await aclose_client(client)


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
    await aclose_client(client)


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
    retry = kwargs["retry"]  # get_retries() exists from redis-py 5.0.1 on
    assert (retry.get_retries() if hasattr(retry, "get_retries") else retry._retries) == 0
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
    await aclose_client(client)


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
    await aclose_client(client)


async def test_concurrent_calls_share_a_pipeline_and_survive_noscript(
    redis_server: RedisServer,
) -> None:
    """Calls made while another is in flight go out together as one pipeline; when the
    script cache was emptied (a failover), the batch loads the scripts and resends."""
    import asyncio

    client = redis_server.async_client()
    store = AsyncRedisStore(client)
    sessions = [{**TEACHER, "user_id": n} for n in range(50)]
    connects = [REQUESTS.connect(f"s{n}", s) for n, s in enumerate(sessions)]
    outcomes = await asyncio.gather(*(store.connect(r) for r in connects))
    assert all(o.first for o in outcomes)
    admin = redis_server.client()
    admin.script_flush()
    admin.config_resetstat()
    disconnects = [
        REQUESTS.disconnect(f"s{n}", s, "transport close") for n, s in enumerate(sessions)
    ]
    outcomes = await asyncio.gather(*(store.disconnect(r) for r in disconnects))
    assert all(o.last for o in outcomes)
    stats = admin.info("commandstats")
    evalsha = stats["cmdstat_evalsha"]
    assert evalsha["calls"] - evalsha["failed_calls"] < 50  # they shared round trips
    # The lone first call and the batch each met NOSCRIPT and were sent again after
    # loading their script.
    assert evalsha["failed_calls"] >= 2 and stats["cmdstat_script|load"]["calls"] >= 2
    await store.aclose()
    await aclose_client(client)


async def _coalesced(store: AsyncRedisStore, calls: list[Any]) -> list[Any]:
    """Run ``calls`` (coroutines) while another call is in flight, so they are batched."""
    import asyncio

    first = asyncio.ensure_future(store.connect(connect_request("warm")))
    await asyncio.sleep(0)  # the first call is in flight: the rest wait for one batch
    results = await asyncio.gather(*calls, return_exceptions=True)
    await first
    return results


CLIENT_OPTIONS = [
    pytest.param({}, id="resp2"),
    pytest.param({"protocol": 3, "decode_responses": True}, id="resp3-decoded"),
]


@pytest.mark.parametrize("options", CLIENT_OPTIONS)
async def test_a_failing_call_in_a_batch_fails_alone(
    redis_server: RedisServer, options: dict[str, Any]
) -> None:
    """A batched EVALSHA runs every call; one that Redis rejects fails by itself."""
    client = redis_server.async_client(**options)
    store = AsyncRedisStore(client)
    sessions = [{**TEACHER, "user_id": n} for n in range(10, 20)]
    for n, session in enumerate(sessions):
        await store.connect(REQUESTS.connect(f"s{n}", session))
    redis_server.client().delete("alive:org_1_user_13")
    redis_server.client().set("alive:org_1_user_13", "not a hash")  # WRONGTYPE for its call
    requests = [REQUESTS.disconnect(f"s{n}", s, "transport close") for n, s in enumerate(sessions)]
    results = await _coalesced(store, [store.disconnect(r) for r in requests])
    failed = [n for n, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [3]
    assert isinstance(results[3], StoreError) and "WRONGTYPE" in str(results[3])
    assert all(r.last for n, r in enumerate(results) if n != 3)
    assert redis_server.client().get("alive:org_1_user_13") == b"not a hash"
    await store.aclose()
    await aclose_client(client)


async def test_a_batch_keeps_the_order_of_its_calls(redis_server: RedisServer) -> None:
    """A connect and the disconnect of the same sid, batched together, run in order."""
    client = redis_server.async_client()
    store = AsyncRedisStore(client)
    session = {**TEACHER, "user_id": 42}
    connect = REQUESTS.connect("s42", session)
    disconnect = REQUESTS.disconnect("s42", session, "transport close")
    connected, left = await _coalesced(
        store, [store.connect(connect), store.disconnect(disconnect)]
    )
    assert connected.first and left.last
    assert redis_server.client().hget("alive:org_1_user_42", "state") == b"disconnect"
    await store.aclose()
    await aclose_client(client)


def test_disconnect_many_sends_batched_scripts(redis_server: RedisServer) -> None:
    """A sweep's disconnects go as one EVALSHA per 50 calls, in one round trip (NOSCRIPT
    handled without loading the script first); a rejected call fails it."""
    store = RedisStore(redis_server.client())
    admin = redis_server.client()
    sessions = [{**TEACHER, "user_id": n} for n in range(100, 220)]
    for n, session in enumerate(sessions):
        store.connect(REQUESTS.connect(f"s{n}", session))
    requests = [REQUESTS.disconnect(f"s{n}", s, "transport close") for n, s in enumerate(sessions)]
    admin.config_resetstat()
    outcomes = store.disconnect_many(requests)
    assert [o.last for o in outcomes] == [True] * 120
    stats = admin.info("commandstats")["cmdstat_evalsha"]
    # 50 + 50 + 20; the batch script was not loaded yet, so the three met NOSCRIPT once.
    assert (stats["calls"], stats["failed_calls"]) == (6, 3), stats
    admin.config_resetstat()
    store.disconnect_many(requests)  # repeats, now with the script loaded
    assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 3
    admin.set("alive:org_1_user_999", "not a hash")
    poisoned = REQUESTS.disconnect("s999", {**TEACHER, "user_id": 999}, "transport close")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.disconnect_many([poisoned])


@pytest.mark.skipif(
    not redis.utils.HIREDIS_AVAILABLE, reason="needs hiredis installed (the hiredis extra)"
)
async def test_the_async_store_packs_commands_with_hiredis(redis_server: RedisServer) -> None:
    """redis-py's asyncio connections pack in Python; the store's own pool uses hiredis's
    packer (as redis-py's blocking connections do), with the same bytes on the wire."""
    client = redis_server.async_client()
    store = AsyncRedisStore(client)
    connection_class = store.client.connection_pool.connection_class
    assert connection_class is not redis.asyncio.Connection
    assert issubclass(connection_class, redis.asyncio.Connection)
    args = ("EVALSHA", "f" * 40, 2, "k1", "k2", "é sid", 3600, b"\x00raw")
    ours = b"".join(connection_class().pack_command(*args))
    assert ours == b"".join(redis.asyncio.Connection().pack_command(*args))
    assert b"".join(connection_class().pack_command("SCRIPT LOAD", "return 1")) == b"".join(
        redis.asyncio.Connection().pack_command("SCRIPT LOAD", "return 1")
    )
    await store.aclose()
    latin = redis_server.async_client(encoding="latin-1")
    assert (
        AsyncRedisStore(latin).client.connection_pool.connection_class is redis.asyncio.Connection
    )
    await aclose_client(client)
    await aclose_client(latin)


def _threads_while_paused(
    server: RedisServer, store: RedisStore, calls: list[Any], *, pause: float = 0.3
) -> list[Any]:
    """Run ``calls`` (callables) on threads while one call is in flight on a paused
    Redis, so they queue behind it; their results (or exceptions), in order."""
    import threading

    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Any) -> None:
        try:
            results[i] = call()
        except BaseException as exc:  # a test records what each thread got
            results[i] = exc

    def in_flight() -> None:
        with contextlib.suppress(StoreError):  # it fails too when the pause outlasts it
            store.connect(connect_request("warm"))

    server.pause()
    first = threading.Thread(target=in_flight)
    first.start()
    deadline = time.monotonic() + 5
    while not store.sending and time.monotonic() < deadline:
        time.sleep(0.001)
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    while store.queued < len(calls) and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(pause)
    server.resume()
    for t in [first, *threads]:
        t.join(10)
    return results


def test_threads_queued_behind_a_call_share_one_round_trip(
    fresh_redis_server: RedisServer,
) -> None:
    """Calls made on other threads while one is in flight go out together: one
    pipeline of batched EVALSHAs, sent by the first of them to queue."""
    store = RedisStore(fresh_redis_server.client(), timeout=2.0)
    admin = fresh_redis_server.client()
    store.connect(connect_request("warm"))  # scripts loaded
    store.disconnect(disconnect_request("warm"))
    sessions = [{**TEACHER, "user_id": n} for n in range(300, 330)]
    requests = [REQUESTS.connect(f"t{n}", s) for n, s in enumerate(sessions)]
    admin.config_resetstat()
    results = _threads_while_paused(
        fresh_redis_server, store, [lambda r=r: store.connect(r) for r in requests]
    )
    assert all(r.first for r in results)
    stats = admin.info("commandstats")["cmdstat_evalsha"]
    # Alone, then the 30 in one batch; the first batch met NOSCRIPT and was sent again.
    assert (stats["calls"], stats["failed_calls"]) == (3, 1), stats
    assert store.sending is False
    assert store.disconnect(disconnect_request("t0")).status.value == "unknown"  # not s0


def test_a_queued_thread_gives_up_at_its_deadline(fresh_redis_server: RedisServer) -> None:
    """A paused Redis: the call in flight and the calls queued behind it all fail
    within their deadlines (StoreError); afterwards the store works again."""
    store = RedisStore(fresh_redis_server.client(), timeout=0.2)
    store.connect(connect_request("warm"))
    requests = [REQUESTS.connect(f"q{n}", {**TEACHER, "user_id": n}) for n in range(5)]
    results = _threads_while_paused(
        fresh_redis_server, store, [lambda r=r: store.connect(r) for r in requests], pause=1.0
    )
    # All failed, so none waited until Redis came back (1 s; their deadline is 0.4 s).
    assert all(isinstance(r, StoreError) for r in results)
    assert store.sending is False
    assert store.connect(connect_request("after")).first in (True, False)


@pytest.mark.parametrize("options", CLIENT_OPTIONS)
def test_a_failing_call_among_threads_fails_alone(
    fresh_redis_server: RedisServer, options: dict[str, Any]
) -> None:
    store = RedisStore(fresh_redis_server.client(**options), timeout=2.0)
    store.connect(connect_request("warm"))
    fresh_redis_server.client().set("alive:org_1_user_503", "not a hash")
    requests = [REQUESTS.connect(f"f{n}", {**TEACHER, "user_id": n}) for n in range(500, 506)]
    results = _threads_while_paused(
        fresh_redis_server, store, [lambda r=r: store.connect(r) for r in requests]
    )
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [3]
    assert isinstance(results[3], StoreError) and "WRONGTYPE" in str(results[3])


def test_threads_queued_behind_an_interrupted_sender_are_answered(
    fresh_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread sending a batch is interrupted (a greenlet killed, say): every call it
    carried fails at once with a StoreError instead of waiting out its deadline."""

    class Interrupted(BaseException):
        pass

    # A deadline (60 s) far beyond the helper's 10 s join: only a reply ends their wait.
    store = RedisStore(fresh_redis_server.client(), timeout=30.0)
    store.connect(connect_request("warm"))

    def interrupted(**options: Any) -> Any:
        raise Interrupted

    monkeypatch.setattr(store.client, "pipeline", interrupted)  # batches go as a pipeline
    requests = [REQUESTS.connect(f"i{n}", {**TEACHER, "user_id": n}) for n in range(4)]
    results = _threads_while_paused(
        fresh_redis_server, store, [lambda r=r: store.connect(r) for r in requests]
    )
    assert sum(isinstance(r, Interrupted) for r in results) == 1  # the sender
    failed = [r for r in results if isinstance(r, StoreError)]
    assert len(failed) == 3 and all("interrupted" in str(r) for r in failed)
    assert store.sending is False


# --- the store's own pool: its size, and that close() really closes it -----------------


def _clients_of(server: RedisServer, name: str) -> int:
    """How many connections named ``name`` the server holds."""
    return sum(1 for c in server.client().client_list() if c.get("name") == name)


@pytest.mark.parametrize(("given", "expected"), [(None, 100), (7, 7)])
def test_the_stores_pool_is_capped_whatever_the_clients_pool_allows(
    redis_server: RedisServer, given: int | None, expected: int
) -> None:
    # Before redis-py 8 a pool's default size is 2**31, which a blocking pool would
    # pre-allocate (RedisStore.__init__ never returned on redis-py 5-7).
    pool = redis.ConnectionPool(host="127.0.0.1", port=redis_server.port, max_connections=2**31)
    store = RedisStore(redis.Redis(connection_pool=pool), max_connections=given)
    assert store.client.connection_pool.max_connections == expected
    assert store.connect(connect_request()).first is True
    store.close()
    pool.disconnect()


async def test_the_async_stores_burst_is_bounded_by_its_capped_pool(
    redis_server: RedisServer,
) -> None:
    import asyncio

    pool = redis.asyncio.ConnectionPool(
        host="127.0.0.1", port=redis_server.port, max_connections=2**31, client_name="capped"
    )
    store = AsyncRedisStore(redis.asyncio.Redis(connection_pool=pool), max_connections=5)
    assert store.client.connection_pool.max_connections == 5
    requests = [REQUESTS.connect(f"s{n}", {**TEACHER, "user_id": n}) for n in range(200)]
    outcomes = await asyncio.gather(*(store.connect(r) for r in requests))
    assert all(o.first for o in outcomes)
    assert 1 <= _clients_of(redis_server, "capped") <= 5  # back-pressure, not 200 sockets
    await store.aclose()
    await pool.disconnect()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_a_bad_max_connections_is_refused_before_anything_is_written(
    redis_server: RedisServer, bad: Any
) -> None:
    client = redis_server.client()
    with pytest.raises((ValueError, TypeError), match="max_connections"):
        RedisStore(client, max_connections=bad)
    with pytest.raises((ValueError, TypeError), match="max_connections"):
        AsyncRedisStore(redis_server.async_client(), max_connections=bad)
    assert client.dbsize() == 0


def test_close_disconnects_the_stores_own_pool(redis_server: RedisServer) -> None:
    import gc
    import warnings

    client = redis_server.client(client_name="own-pool")
    store = RedisStore(client)
    store.connect(connect_request())
    assert _clients_of(redis_server, "own-pool") == 1  # the store's; the client made none
    gc.collect()  # other tests' garbage first: only what closing this store leaves counts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        store.close()
        del store
        gc.collect()
    assert _clients_of(redis_server, "own-pool") == 0
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert client.ping() is True  # the integrator's client is untouched


async def test_aclose_disconnects_the_async_stores_own_pool(redis_server: RedisServer) -> None:
    import gc
    import warnings

    client = redis_server.async_client(client_name="own-async-pool")
    store = AsyncRedisStore(client)
    await store.connect(connect_request())
    assert _clients_of(redis_server, "own-async-pool") == 1
    gc.collect()  # other tests' garbage first: only what closing this store leaves counts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        await store.aclose()
        del store
        gc.collect()
    assert _clients_of(redis_server, "own-async-pool") == 0
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert await client.ping() is True
    await client.connection_pool.disconnect()


def test_a_tombstone_written_before_attempts_still_answers_a_repeat(
    redis_server: RedisServer,
) -> None:
    """0.1 kept "last:version:at_ms:deferred:record", 0.2 the same with the attempt
    before the record; this version puts "+first:version:attempt:" of the removed
    connect in front. A rolling upgrade may meet either older one."""
    from presence_kit import DisconnectStatus

    store = RedisStore(redis_server.client())
    store.connect(connect_request())
    request: Any = disconnect_request()
    first = store.disconnect(request)
    raw = redis_server.client(decode_responses=True)
    stored = raw.get(request.tombstone_key)
    assert stored.startswith("+1:1:")  # the connect brought the user online, version 1
    of_02 = stored.split(":", 3)[3]
    assert of_02.split(":")[4] == request.attempt
    raw.set(request.tombstone_key, of_02, ex=60)
    repeat = store.disconnect(request)
    assert (repeat.status, repeat.attempt) == (DisconnectStatus.REPEAT, request.attempt)
    last, version, at_ms, deferred, _, record = of_02.split(":", 5)
    raw.set(request.tombstone_key, f"{last}:{version}:{at_ms}:{deferred}:{record}", ex=60)
    repeat = store.disconnect(request)
    assert repeat.status is DisconnectStatus.REPEAT
    assert (repeat.last, repeat.version, repeat.record, repeat.attempt) == (
        first.last,
        first.version,
        first.record,
        "?",
    )
    store.close()


@pytest.mark.cluster
async def test_nodes_lists_the_incarnations_on_a_cluster(redis_cluster: Any) -> None:
    """The node listing's pipelines span slots (the registry's and the node indexes')."""
    from presence_kit import AsyncPresenceKit, PresenceKit, Settings
    from presence_kit.testing import AsyncRecordingSockets, RecordingSockets

    sync_kit = PresenceKit(
        store=RedisStore(redis_cluster.client()),
        sockets=RecordingSockets(),
        settings=Settings(node_id="sync-node"),
    )
    client = redis_cluster.async_client()
    async_kit = AsyncPresenceKit(
        store=AsyncRedisStore(client), sockets=AsyncRecordingSockets(), settings=Settings()
    )
    sync_kit.handle_connect("s1", TEACHER)
    sync_kit.handle_connect("s2", {**TEACHER, "user_id": 3})
    assert sync_kit.heartbeat()
    [node] = await async_kit.nodes()
    assert (node.member.split("/")[0], node.connections) == ("sync-node", 2)
    assert sync_kit.nodes() == [node]
    sync_kit.close()
    await async_kit.aclose()
    await aclose_client(client)


# --- the connection kept for lone calls ----------------------------------------------


def _kill_clients_named(server: RedisServer, name: str) -> int:
    admin = server.client()
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


def test_lone_calls_share_one_connection_that_is_replaced_when_redis_drops_it(
    redis_server: RedisServer,
) -> None:
    """Sequential handler calls all go over one kept connection; when Redis closes it
    (CLIENT KILL, an idle timeout), the next call notices before sending and
    reconnects, as a pool does with a connection it hands out: no call fails."""
    store = RedisStore(redis_server.client(client_name="lone"))
    for n in range(20):
        assert store.connect(connect_request(f"s{n}")).first is (n == 0)
    assert _clients_of(redis_server, "lone") == 1
    assert _kill_clients_named(redis_server, "lone") == 1
    assert store.disconnect(disconnect_request("s0")).last is False
    assert _clients_of(redis_server, "lone") == 1
    store.close()
    assert _clients_of(redis_server, "lone") == 0


async def test_async_lone_calls_share_one_connection_that_is_replaced_when_redis_drops_it(
    redis_server: RedisServer,
) -> None:
    import asyncio

    client = redis_server.async_client(client_name="alone")
    store = AsyncRedisStore(client)
    for n in range(20):
        assert (await store.connect(connect_request(f"s{n}"))).first is (n == 0)
    assert _clients_of(redis_server, "alone") == 1
    assert _kill_clients_named(redis_server, "alone") == 1
    await asyncio.sleep(0.05)  # the event loop reads the close (as an idle connection's)
    assert (await store.disconnect(disconnect_request("s0"))).last is False
    assert _clients_of(redis_server, "alone") == 1
    await store.aclose()
    await aclose_client(client)
    assert _clients_of(redis_server, "alone") == 0


@pytest.mark.parametrize("size", [1, 2])
def test_a_burst_of_threads_stays_within_a_small_pool(
    redis_server: RedisServer, size: int
) -> None:
    """The kept connection counts against max_connections: with 2 the burst shares one
    more; with 1 nothing is kept (it would starve the pipelines) and all still succeed."""
    import concurrent.futures

    store = RedisStore(redis_server.client(client_name=f"small-{size}"), max_connections=size)
    requests = [REQUESTS.connect(f"s{n}", {**TEACHER, "user_id": n}) for n in range(300)]
    with concurrent.futures.ThreadPoolExecutor(16) as threads:
        outcomes = list(threads.map(store.connect, requests))
    assert all(o.first for o in outcomes)
    assert 1 <= _clients_of(redis_server, f"small-{size}") <= size
    store.close()


async def test_an_async_burst_stays_within_a_pool_of_one(redis_server: RedisServer) -> None:
    import asyncio

    client = redis_server.async_client(client_name="asmall")
    store = AsyncRedisStore(client, max_connections=1)
    requests = [REQUESTS.connect(f"s{n}", {**TEACHER, "user_id": n}) for n in range(300)]
    outcomes = await asyncio.gather(*(store.connect(r) for r in requests))
    assert all(o.first for o in outcomes)
    assert _clients_of(redis_server, "asmall") == 1
    await store.aclose()
    await aclose_client(client)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_takes_its_own_connection(redis_server: RedisServer) -> None:
    """A store used before a fork (a preforking server) keeps working in both
    processes: the child never writes on the parent's socket."""
    store = RedisStore(redis_server.client())
    assert store.connect(connect_request("parent-1")).first is True
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            ok = store.connect(connect_request("child-1")).first is False
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.connect(connect_request("parent-2")).first is False
    assert redis_server.client().hlen("alive:org_1_user_2") >= 4  # state, n and 3 records
    store.close()
