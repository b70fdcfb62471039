"""Replies lost after the script ran: a replay announces what the first try did.

A connect's store call that timed out may have run. Its replay then meets a repeat,
and the store hands back that first try's outcome (first or not, its version), so the
replay announces exactly what the lost reply would have, whatever another node did in
between. Two kits share one real redis-server; kit A's next reply is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from presence_kit import AsyncPresenceKit, PresenceKit, Settings, StoreError
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_servers import RedisServer, aclose_client
from tests.support.sio_harness import eventually

T7 = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}


class _ReplyLosingStore(RedisStore):
    """A real RedisStore whose next connect runs but whose reply is lost."""

    lose_next_reply = False

    def connect(self, request: Any) -> Any:
        outcome = super().connect(request)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise StoreError("timed out after the script ran")
        return outcome


class _AsyncReplyLosingStore(AsyncRedisStore):
    """A real AsyncRedisStore whose next connect runs but whose reply is lost; with
    ``slow``, only once ``release`` is set (the handler call is in flight meanwhile)."""

    lose_next_reply = False
    slow = False

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.release = asyncio.Event()

    async def connect(self, request: Any) -> Any:
        outcome = await super().connect(request)
        if self.lose_next_reply:
            self.lose_next_reply = False
            if self.slow:
                await self.release.wait()
            raise StoreError("timed out after the script ran")
        return outcome


def _announced(*sockets: RecordingSockets | AsyncRecordingSockets) -> list[tuple[str, int]]:
    return [
        (event, data["version"])
        for recorded in sockets
        for event, data, _to in recorded.emitted
        if event in ("teacher_connect", "teacher_disconnect")
    ]


def _settings() -> Settings:
    return Settings(include_version=True)


def test_a_replayed_connect_announces_the_first_tries_coming_online(
    fresh_redis_server: RedisServer,
) -> None:
    """A's connect brings the teacher online but its reply is lost; B then connects
    the same teacher (not first). The replay still announces A's teacher_connect."""
    store_a = _ReplyLosingStore(fresh_redis_server.client())
    sockets_a, sockets_b = RecordingSockets(), RecordingSockets()
    kit_a = PresenceKit(store=store_a, sockets=sockets_a, settings=_settings())
    kit_b = PresenceKit(
        store=RedisStore(fresh_redis_server.client()), sockets=sockets_b, settings=_settings()
    )
    store_a.lose_next_reply = True
    kit_a.handle_connect("a1", T7)
    assert kit_a.pending == 1
    kit_b.handle_connect("b1", T7)
    assert _announced(sockets_a, sockets_b) == []  # B's connect was not the first
    assert kit_a.replay_outbox() == 1
    assert _announced(sockets_a, sockets_b) == [("teacher_connect", 1)]
    kit_a.close()
    kit_b.close()


def test_a_replayed_connect_that_was_not_first_announces_nothing(
    fresh_redis_server: RedisServer,
) -> None:
    """B's connect brings the teacher online; A's connect (not first) loses its reply;
    B's connection leaves (A's is now the only one). The replay announces nothing:
    the teacher never went offline."""
    store_a = _ReplyLosingStore(fresh_redis_server.client())
    sockets_a, sockets_b = RecordingSockets(), RecordingSockets()
    kit_a = PresenceKit(store=store_a, sockets=sockets_a, settings=_settings())
    kit_b = PresenceKit(
        store=RedisStore(fresh_redis_server.client()), sockets=sockets_b, settings=_settings()
    )
    kit_b.handle_connect("b1", T7)
    store_a.lose_next_reply = True
    kit_a.handle_connect("a1", T7)
    kit_b.handle_disconnect("b1", T7)
    assert kit_a.replay_outbox() == 1
    assert _announced(sockets_a, sockets_b) == [("teacher_connect", 1)]
    raw = fresh_redis_server.client(decode_responses=True)
    assert raw.hget("alive:org_1_user_7", "state") == "connect"
    kit_a.close()
    kit_b.close()


async def test_asyncio_replays_announce_the_first_tries_outcome(
    fresh_redis_server: RedisServer,
) -> None:
    """Both orders above, with the asyncio facade and store."""
    client_a, client_b = fresh_redis_server.async_client(), fresh_redis_server.async_client()
    store_a = _AsyncReplyLosingStore(client_a)
    sockets_a, sockets_b = AsyncRecordingSockets(), AsyncRecordingSockets()
    kit_a = AsyncPresenceKit(store=store_a, sockets=sockets_a, settings=_settings())
    kit_b = AsyncPresenceKit(
        store=AsyncRedisStore(client_b), sockets=sockets_b, settings=_settings()
    )
    try:
        # A first (reply lost), then B: A's replay announces the teacher online.
        store_a.lose_next_reply = True
        await kit_a.handle_connect("a1", T7)
        await kit_b.handle_connect("b1", T7)
        assert await kit_a.replay_outbox() == 1
        assert _announced(sockets_a, sockets_b) == [("teacher_connect", 1)]
        # Both leave (announced once); then B first, A's lost, B leaves: nothing more.
        await kit_a.handle_disconnect("a1", T7)
        await kit_b.handle_disconnect("b1", T7)
        await kit_b.handle_connect("b2", T7)
        store_a.lose_next_reply = True
        await kit_a.handle_connect("a2", T7)
        await kit_b.handle_disconnect("b2", T7)
        assert await kit_a.replay_outbox() == 1
        assert _announced(sockets_a, sockets_b) == [
            ("teacher_connect", 1),
            ("teacher_disconnect", 2),
            ("teacher_connect", 3),
        ]
    finally:
        await kit_a.aclose()
        await kit_b.aclose()
        await aclose_client(client_a)
        await aclose_client(client_b)


async def test_a_replayed_connect_whose_sid_left_meanwhile_announces_its_first_try(
    fresh_redis_server: RedisServer,
) -> None:
    """A connect brings the teacher online (version 1) but its reply is slow, then
    lost; meanwhile the socket's disconnect goes straight to Redis and takes the
    teacher offline (version 2, announced). The connect's replay meets the disconnect's
    tombstone (STALE) and still announces its first try's coming online: every version
    Redis counted is announced once."""
    client = fresh_redis_server.async_client()
    store = _AsyncReplyLosingStore(client)
    store.slow = True
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(store=store, sockets=sockets, settings=_settings())
    raw = fresh_redis_server.client(decode_responses=True)
    try:
        store.lose_next_reply = True
        connecting = asyncio.create_task(kit.handle_connect("a1", T7))
        await eventually(lambda: raw.hget("alive:org_1_user_7", "state") == "connect")
        await kit.handle_disconnect("a1", T7)  # nothing queued yet: straight to Redis
        store.release.set()
        assert await connecting is None  # failed: queued for replay
        assert _announced(sockets) == [("teacher_disconnect", 2)]
        assert await kit.replay_outbox() == 1
        assert _announced(sockets) == [("teacher_disconnect", 2), ("teacher_connect", 1)]
        assert raw.hget("alive:org_1_user_7", "state") == "disconnect"
    finally:
        await kit.aclose()
        await aclose_client(client)


class _UpdateReplyLosingStore(RedisStore):
    """A real RedisStore whose next update runs but whose reply is lost."""

    lose_next_reply = False

    def update(self, request: Any) -> Any:
        outcome = super().update(request)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise StoreError("timed out after the script ran")
        return outcome


def test_a_replayed_update_announces_its_first_try_once(fresh_redis_server: RedisServer) -> None:
    """An update moves the teacher to lesson 6 but its reply is lost: the rooms moved at
    once, the update waits in the outbox. Its replay meets the update already applied
    (the same sequence number), changes nothing twice and announces what the first try
    did: one teacher_update, with the version that try reached."""
    store = _UpdateReplyLosingStore(fresh_redis_server.client())
    sockets = RecordingSockets()
    kit = PresenceKit(store=store, sockets=sockets, settings=_settings())
    try:
        kit.handle_connect("a1", T7)
        store.lose_next_reply = True
        assert kit.handle_update("a1", {**T7, "lesson_id": 6}) is None
        assert sockets.rooms_of("a1") == {"lesson:6"}
        raw = fresh_redis_server.client(decode_responses=True)
        alive = raw.hgetall("alive:org_1_user_7")
        assert kit.replay_outbox() == 1
        assert raw.hgetall("alive:org_1_user_7") == alive  # nothing changed twice
        updates = [data for event, data, _to in sockets.emitted if event == "teacher_update"]
        assert updates == [{"user_id": 7, "lesson_id": 6, "version": 2}]
        assert kit.stats.updates == 1
    finally:
        kit.close()
