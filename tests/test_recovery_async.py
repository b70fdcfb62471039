"""Crash recovery through the asyncio facade and AsyncRedisStore (in-process)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from presence_kit import AsyncPresenceKit, Settings, StoreError
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingAnalytics
from tests.support.redis_servers import RedisServer, aclose_client

TIMEOUT = 0.4
SETTINGS = Settings(heartbeat_interval=0.1, node_timeout=TIMEOUT, shutdown_grace=0.5)
T1 = {"role": "TeacherAPP", "org_id": 1, "user_id": 1, "lesson_id": 5}
P1 = {"role": "ParticipantWeb", "org_id": 1, "user_id": 9, "lesson_id": 5, "room_id": 4}


class Node:
    def __init__(self, server: RedisServer, *, background: bool = False) -> None:
        self.client = server.async_client()
        self.sockets = AsyncRecordingSockets(background=background)
        self.analytics = RecordingAnalytics()
        self.kit = AsyncPresenceKit(
            store=AsyncRedisStore(self.client),
            sockets=self.sockets,
            analytics=self.analytics,
            settings=SETTINGS,
        )

    async def ready_to_sweep(self) -> None:
        deadline = time.monotonic() + TIMEOUT + 0.2
        while time.monotonic() < deadline:
            await self.kit.heartbeat()
            await asyncio.sleep(0.05)
        await self.kit.heartbeat()

    def emitted(self, event: str) -> list[Any]:
        return [data for name, data, _to in self.sockets.emitted if name == event]

    async def close(self) -> None:
        await self.kit.aclose(timeout=1)
        await aclose_client(self.client)


async def test_async_sweep_fencing_and_reconcile(redis_server: RedisServer) -> None:
    a, b = Node(redis_server), Node(redis_server)
    try:
        await a.kit.heartbeat()
        await a.kit.handle_connect("a-t1", T1)
        await a.kit.handle_connect("a-p1", P1)
        a.sockets.connected.update({"a-t1", "a-p1"})
        await b.ready_to_sweep()  # a is stalled meanwhile
        assert await b.kit.sweep_dead_nodes() == 2
        assert b.emitted("teacher_disconnect") == [{"user_id": 1}]
        assert [e.properties["reason"] for e in b.analytics.events] == ["node lost"]
        assert await a.kit.heartbeat() is False  # fenced: registers its sockets again
        assert a.emitted("teacher_connect") == [{"user_id": 1}, {"user_id": 1}]
        assert (await a.kit.presence(1, 1)).state == "connect"
        a.sockets.connected.discard("a-p1")  # its socket is gone, its record is not
        assert await a.kit.reconcile() == 1
        assert [e.properties["reason"] for e in a.analytics.events] == ["stale connection"]
    finally:
        await a.close()
        await b.close()


async def test_async_background_and_handover(redis_server: RedisServer) -> None:
    leaving, staying = Node(redis_server, background=True), Node(redis_server)
    try:
        leaving.sockets.connected.add("l-t1")
        await leaving.kit.handle_connect("l-t1", T1)  # starts its background
        for task in list(leaving.sockets.tasks):
            assert not task.done()
        staying.sockets.connected.add("hub")
        await staying.kit.handle_connect("hub", {**T1, "role": "TeacherHub", "user_id": 50})
        await asyncio.sleep(0.3)
        await leaving.close()  # hands its connection over (swept after shutdown_grace)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not staying.emitted("teacher_disconnect"):
            await staying.kit.run_background_step()
            await asyncio.sleep(0.05)
        assert staying.emitted("teacher_disconnect") == [{"user_id": 1}]
        assert staying.kit.stats.recovered == 1
    finally:
        await staying.close()


def teacher_leaves(sockets: AsyncRecordingSockets) -> list[Any]:
    return [d["user_id"] for name, d, _to in sockets.emitted if name == "teacher_disconnect"]


async def state_of(client: Any, users: list[Any]) -> list[Any]:
    return [await client.hget(f"alive:org_1_user_{user}", "state") for user in users]


class FailingOnce(AsyncRedisStore):
    """The real store, whose ``fail_at``-th ``disconnect_many`` fails as Redis would."""

    def __init__(self, client: Any, fail_at: int) -> None:
        super().__init__(client)
        self.calls, self.fail_at = 0, fail_at

    async def disconnect_many(self, requests: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            await asyncio.sleep(0.01)  # fails while the next batch is in flight
            raise StoreError("redis failed during disconnect_many")
        return await super().disconnect_many(requests)


async def test_a_sweep_that_fails_midway_leaves_nothing_running_and_is_finished_later(
    redis_server: RedisServer, caplog: Any
) -> None:
    """The asyncio sweep keeps a batch's round trip in flight while it announces the
    last one's leaves: when a batch fails, the sweep raises once the batch in flight
    has ended (no task is left behind), and the next sweep runs the remaining leaves,
    each announced once."""
    lost = Node(redis_server)
    await lost.kit.heartbeat()
    for user in range(40):
        await lost.kit.handle_connect(f"t{user}", {**T1, "user_id": user})
    client = redis_server.async_client()
    sockets = AsyncRecordingSockets()
    sweeper = AsyncPresenceKit(
        store=FailingOnce(client, fail_at=3),
        sockets=sockets,
        settings=Settings(heartbeat_interval=0.1, node_timeout=TIMEOUT, sweep_batch=5),
    )
    await asyncio.sleep(TIMEOUT + 0.1)  # the lost node's heartbeat is now stale
    with pytest.raises(StoreError):
        await sweeper.sweep_dead_nodes()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in tasks if "disconnect_many" in repr(t.get_coro())]
    first = teacher_leaves(sockets)
    # Before the failure: the batches before it and the one in flight, all announced.
    assert 5 <= len(first) < 40
    assert await state_of(client, first) == [b"disconnect"] * len(first)
    await asyncio.sleep(TIMEOUT + 0.1)  # the sweeper's claim expires
    assert await sweeper.sweep_dead_nodes() == 40 - len(first)  # the failed batch's too
    assert sorted(teacher_leaves(sockets)) == list(range(40))  # each announced once
    assert "never retrieved" not in caplog.text
    await sweeper.aclose(timeout=1)
    await aclose_client(client)
    await lost.close()
