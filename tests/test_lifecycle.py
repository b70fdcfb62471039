"""Closing a kit: what ``aclose()`` / ``close()`` release, even when interrupted."""

from __future__ import annotations

import asyncio

import pytest

from presence_kit import AsyncPresenceKit, Settings
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets

from .support.redis_servers import RedisServer

SESSION = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}


class _SlowToStopSockets(AsyncRecordingSockets):
    """Sockets whose background sleep takes its time to end when cancelled (a loop
    finishing a step): ``aclose()`` has to wait for it."""

    async def sleep(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            await asyncio.sleep(5)
            raise


def _clients_named(server: RedisServer, name: str) -> int:
    return sum(1 for c in server.client().client_list() if c.get("name") == name)


async def test_a_cancelled_aclose_releases_the_store_then_raises_the_cancellation(
    redis_server: RedisServer,
) -> None:
    client = redis_server.async_client(client_name="cancelled-aclose")
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client),
        sockets=_SlowToStopSockets(background=True),
        settings=Settings(node_id="node-a"),
    )
    await kit.handle_connect("sid-1", SESSION)  # starts the background loop
    await asyncio.sleep(0.05)  # the loop has run a step and sleeps
    assert _clients_named(redis_server, "cancelled-aclose") >= 1

    closing = asyncio.ensure_future(kit.aclose())
    await asyncio.sleep(0.1)  # aclose() waits for the loop to end
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert _clients_named(redis_server, "cancelled-aclose") == 0  # the store was released
    await kit.aclose()  # idempotent: nothing more to do
    await client.connection_pool.disconnect()
