"""Redis outages: operations that failed are queued and replayed in order once Redis
answers, so presence converges to the truth and every leave is announced once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from presence_kit import AsyncPresenceKit, PresenceKit, Settings, StoreError
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingAnalytics, RecordingSockets
from tests.support.redis_servers import RedisServer, aclose_client


def teacher(n: int) -> dict[str, Any]:
    return {"role": "TeacherAPP", "org_id": 1, "user_id": n, "lesson_id": 5}


def participant(n: int) -> dict[str, Any]:
    return {"role": "ParticipantWeb", "org_id": 1, "user_id": n, "lesson_id": 5, "room_id": 9}


async def test_disconnects_during_an_outage_are_replayed_once(
    fresh_redis_server: RedisServer,
) -> None:
    """10,000 teachers and 200 participants online; Redis stops (SIGSTOP); they all
    disconnect, and 50 new teachers connect and leave again, during the outage. After
    Redis resumes, the replay makes Redis match the truth and announces each leave once:
    0 lost of 10,000 disconnects, none announced twice."""
    client = fresh_redis_server.async_client()
    sockets, analytics = AsyncRecordingSockets(), RecordingAnalytics()
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client, timeout=0.05),
        sockets=sockets,
        analytics=analytics,
        settings=Settings(outbox_size=20_000),
    )
    for n in range(10_000):
        await kit.handle_connect(f"t{n}", teacher(n))
    for n in range(200):
        await kit.handle_connect(f"p{n}", participant(10_000 + n))
    fresh_redis_server.pause()
    try:
        durations: list[float] = []

        async def leave(n: int) -> None:
            started = time.monotonic()
            await kit.handle_disconnect(f"t{n}", teacher(n))
            durations.append(time.monotonic() - started)

        for wave in range(0, 10_000, 500):  # disconnects arrive in waves, as on a server
            await asyncio.gather(*(leave(n) for n in range(wave, wave + 500)))
        await asyncio.gather(
            *(kit.handle_disconnect(f"p{n}", participant(10_000 + n)) for n in range(200))
        )
        for n in range(20_000, 20_050):  # connect and leave during the outage
            await kit.handle_connect(f"late{n}", teacher(n))
            await kit.handle_disconnect(f"late{n}", teacher(n))
        assert kit.stats.announced_offline == 0  # nothing was granted yet
        with pytest.raises(StoreError):  # Redis is still down: the replay keeps waiting
            await kit.replay_outbox()
    finally:
        fresh_redis_server.resume()
    replayed = await kit.replay_outbox()
    assert replayed == 10_000 + 200 + 100
    # Every handler returned within its deadline (0.05 s, doubled for the whole call,
    # including the wait for one of the pool's connections), never hanging on Redis.
    assert max(durations) < 1.0
    assert kit.stats.outbox_dropped == 0
    leaves = Counter(d["user_id"] for e, d, _to in sockets.emitted if e == "teacher_disconnect")
    assert leaves == Counter([*range(10_000), *range(20_000, 20_050)])  # once each
    assert len(analytics.events) == 200
    assert len({e.insert_id for e in analytics.events}) == 200
    raw = fresh_redis_server.client(decode_responses=True)
    pipe = raw.pipeline(transaction=False)
    for n in [*range(10_000), *range(20_000, 20_050)]:
        pipe.hget(f"alive:org_1_user_{n}", "state")
    assert set(pipe.execute()) == {"disconnect"}
    assert (await kit.online_users(1)) == []
    assert (await kit.online_users(1, "ParticipantWeb")) == []
    await kit.aclose()
    await aclose_client(client)


def test_a_full_outbox_drops_the_oldest_and_counts_it(fresh_redis_server: RedisServer) -> None:
    sockets = RecordingSockets()
    kit = PresenceKit(
        store=RedisStore(fresh_redis_server.client(), timeout=0.05),
        sockets=sockets,
        settings=Settings(outbox_size=10),
    )
    for n in range(20):
        kit.handle_connect(f"t{n}", teacher(n))
    fresh_redis_server.pause()
    try:
        for n in range(20):
            kit.handle_disconnect(f"t{n}", teacher(n))
    finally:
        fresh_redis_server.resume()
    assert (kit.stats.queued, kit.stats.outbox_dropped) == (20, 10)
    assert kit.replay_outbox() == 10
    leaves = sorted(d["user_id"] for e, d, _to in sockets.emitted if e == "teacher_disconnect")
    assert leaves == list(range(10, 20))  # the newest ten; the rest is left to reconcile
    sockets.connected.clear()
    assert kit.reconcile() == 10  # ... which repairs them
    leaves = sorted(d["user_id"] for e, d, _to in sockets.emitted if e == "teacher_disconnect")
    assert leaves == list(range(20))
    kit.close()


class _AnswerLosingStore(RedisStore):
    """A real RedisStore whose next connect runs, but whose answer is lost when
    ``lose_next_answer`` is set (as if the call timed out after the script ran)."""

    lose_next_answer = False

    def connect(self, request: Any) -> Any:
        outcome = super().connect(request)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise StoreError("timed out after the script ran")
        return outcome


def test_a_connect_that_timed_out_after_it_ran_is_announced_by_the_replay(
    fresh_redis_server: RedisServer,
) -> None:
    """The script ran, but its answer was lost: the replay sees a repeat and announces
    the teacher_connect that nobody announced."""
    sockets = RecordingSockets()
    store = _AnswerLosingStore(fresh_redis_server.client())
    kit = PresenceKit(store=store, sockets=sockets)
    store.lose_next_answer = True
    kit.handle_connect("s1", teacher(7))  # the call runs, then times out: queued
    assert kit.replay_outbox() == 1
    assert [e for e, _d, _to in sockets.emitted] == ["teacher_connect"]
    assert kit.replay_outbox() == 0
    kit.close()


class _InterleavingStore(RedisStore):
    """A real RedisStore that runs ``during_connect`` (once) as its next connect is
    sent: the handler calls a server makes while a replay's call is in flight."""

    during_connect: Any = None

    def connect(self, request: Any) -> Any:
        hook, self.during_connect = self.during_connect, None
        if hook is not None:
            hook()
        return super().connect(request)


class _AsyncInterleavingStore(AsyncRedisStore):
    during_connect: Any = None

    async def connect(self, request: Any) -> Any:
        hook, self.during_connect = self.during_connect, None
        if hook is not None:
            await hook()
        return await super().connect(request)


def _online(users: Any) -> list[Any]:
    return sorted(u.user_id for u in users)


def test_an_operation_pushed_during_a_replay_never_evicts_the_one_in_flight(
    fresh_redis_server: RedisServer,
) -> None:
    """outbox_size=2 holds t0 and t1; while t0's replay is in flight, t2 and t3 connect.
    The full queue drops its oldest *queued* operation (t1), never t0, and the replay
    finishes t0, then t2 and t3: no operation is lost unsent, or counted wrongly."""
    store = _InterleavingStore(fresh_redis_server.client(), timeout=0.05)
    kit = PresenceKit(store=store, sockets=RecordingSockets(), settings=Settings(outbox_size=2))
    fresh_redis_server.pause()
    try:
        kit.handle_connect("t0", teacher(0))
        kit.handle_connect("t1", teacher(1))
    finally:
        fresh_redis_server.resume()
    assert (kit.stats.queued, kit.stats.store_failures) == (2, 1)  # t1 queued behind t0
    assert kit.pending == 2

    def two_more_connects() -> None:
        kit.handle_connect("t2", teacher(2))
        kit.handle_connect("t3", teacher(3))

    store.during_connect = two_more_connects
    assert kit.replay_outbox() == 3
    assert (kit.stats.queued, kit.stats.outbox_dropped, kit.stats.replayed) == (4, 1, 3)
    assert _online(kit.online_users(1)) == [0, 2, 3]  # t1 is left to reconciling
    assert kit.pending == 0
    kit.close()


async def test_an_async_replay_keeps_its_operation_while_handlers_push(
    fresh_redis_server: RedisServer,
) -> None:
    client = fresh_redis_server.async_client()
    store = _AsyncInterleavingStore(client, timeout=0.05)
    kit = AsyncPresenceKit(
        store=store, sockets=AsyncRecordingSockets(), settings=Settings(outbox_size=2)
    )
    fresh_redis_server.pause()
    try:
        await kit.handle_connect("t0", teacher(0))
        await kit.handle_connect("t1", teacher(1))
    finally:
        fresh_redis_server.resume()

    async def two_more_connects() -> None:
        await asyncio.gather(
            kit.handle_connect("t2", teacher(2)), kit.handle_connect("t3", teacher(3))
        )

    store.during_connect = two_more_connects
    assert await kit.replay_outbox() == 3
    assert (kit.stats.queued, kit.stats.outbox_dropped, kit.stats.replayed) == (4, 1, 3)
    assert _online(await kit.online_users(1)) == [0, 2, 3]
    await kit.aclose()
    await aclose_client(client)


def test_a_replayed_disconnect_is_counted_once(fresh_redis_server: RedisServer) -> None:
    """One handler call, one count: the replay adds its announcement, not a call."""
    kit = PresenceKit(
        store=RedisStore(fresh_redis_server.client(), timeout=0.05), sockets=RecordingSockets()
    )
    kit.handle_connect("t0", teacher(0))
    fresh_redis_server.pause()
    try:
        kit.handle_disconnect("t0", teacher(0))
    finally:
        fresh_redis_server.resume()
    assert kit.replay_outbox() == 1
    stats = kit.stats
    assert (stats.connects, stats.disconnects, stats.announced_offline) == (1, 1, 1)
    kit.close()


async def test_a_socket_that_disconnects_while_it_is_repaired_never_comes_back(
    fresh_redis_server: RedisServer,
) -> None:
    """s1's connect never reached Redis (killed) and was forced out of the outbox; while
    a reconcile writes its record again, s1 disconnects, and that disconnect lands
    first (it finds no record). The reconcile sees the session gone and removes what it
    wrote: s1 is not left online, and its leave is announced once."""
    client = fresh_redis_server.async_client()
    store = _AsyncInterleavingStore(client, timeout=0.05)
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(store=store, sockets=sockets, settings=Settings(outbox_size=1))
    fresh_redis_server.kill()
    await kit.handle_connect("s1", teacher(1))  # refused: it never ran
    await kit.handle_connect("s2", teacher(2))  # queued, forcing s1's connect out
    fresh_redis_server.restart()
    assert kit.stats.outbox_dropped == 1
    assert await kit.replay_outbox() == 1
    sockets.connected.update({"s1", "s2"})

    async def s1_disconnects() -> None:
        sockets.connected.discard("s1")
        await kit.handle_disconnect("s1", teacher(1))

    store.during_connect = s1_disconnects
    assert await kit.reconcile() == 1
    assert _online(await kit.online_users(1)) == [2]
    events = Counter(e for e, d, _to in sockets.emitted if d == {"user_id": 1})
    assert events == Counter({"teacher_connect": 1, "teacher_disconnect": 1})
    assert await kit.reconcile() == 0
    await kit.aclose()
    await aclose_client(client)
