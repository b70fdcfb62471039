"""The Socket.IO adapters under a partition of the client manager's broker.

A real python-socketio server (asyncio, and threading) whose Redis client manager
reaches its redis-server through a :class:`PartitionProxy`. While the proxy holds every
byte, the disconnect handler leaves the sid's room and emits a leave: it must return
while the partition lasts (the room left locally, the emit's publish gone on in the
background and counted), never waiting for the heal.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import socketio

from presence_kit.socketio import AsyncSocketIORooms, SocketIORooms
from tests.support.partition_proxy import PartitionProxy
from tests.support.redis_servers import RedisServer
from tests.support.sio_harness import (
    eventually,
    eventually_sync,
    running_async_server,
    running_threaded_server,
)

ROOM = "presence:lesson:5"


async def test_async_handlers_never_wait_on_a_partitioned_client_manager(
    redis_server: RedisServer,
) -> None:
    proxy = PartitionProxy(redis_server.port)
    done = asyncio.Event()
    seen: dict[str, Any] = {}
    rooms: AsyncSocketIORooms | None = None

    def setup(sio: Any) -> None:
        nonlocal rooms
        rooms = AsyncSocketIORooms(sio, publish_timeout=0.2)

        async def connect(sid: str, environ: Any, auth: Any) -> None:
            assert rooms is not None
            await rooms.enter_room(sid, ROOM)

        async def disconnect(sid: str, reason: str) -> None:
            assert rooms is not None
            await rooms.leave_room(sid, ROOM)
            seen["rooms_after_leave"] = sio.rooms(sid)
            await rooms.emit("teacher_disconnect", {"user_id": 7}, to="presence:org:1")
            done.set()

        sio.on("connect", connect)
        sio.on("disconnect", disconnect)

    manager = socketio.AsyncRedisManager(proxy.url, write_only=True)  # no listener left behind
    try:
        async with running_async_server(setup, client_manager=manager) as server:
            client = await server.connect_client({})
            await server.barrier(client)  # the manager's connection is up
            proxy.hold("both")
            await client.disconnect()
            await asyncio.wait_for(done.wait(), 10)  # returned during the partition
            assert proxy.held == "both"
            assert ROOM not in seen["rooms_after_leave"]
            assert rooms is not None and (rooms.late_emits, rooms.publishing) == (1, 1)
            proxy.heal("reset")  # python-socketio publishes again on a new connection
            await eventually(lambda: rooms is not None and rooms.publishing == 0, 5)
    finally:
        proxy.close()


def test_threaded_handlers_never_wait_on_a_partitioned_client_manager(
    redis_server: RedisServer,
) -> None:

    proxy = PartitionProxy(redis_server.port)
    done = threading.Event()
    seen: dict[str, Any] = {}
    rooms: SocketIORooms | None = None

    def setup(sio: Any) -> None:
        nonlocal rooms
        rooms = SocketIORooms(sio, publish_timeout=0.2)

        def connect(sid: str, environ: Any, auth: Any) -> None:
            assert rooms is not None
            rooms.enter_room(sid, ROOM)

        def disconnect(sid: str, reason: str) -> None:
            assert rooms is not None
            rooms.leave_room(sid, ROOM)
            seen["rooms_after_leave"] = sio.rooms(sid)
            rooms.emit("teacher_disconnect", {"user_id": 7}, to="presence:org:1")
            done.set()

        sio.on("connect", connect)
        sio.on("disconnect", disconnect)

    manager = socketio.RedisManager(proxy.url, write_only=True)  # no listener left behind
    try:
        with running_threaded_server(setup, client_manager=manager) as server:
            client = server.connect_client({})
            server.barrier(client)  # the manager's connection is up
            proxy.hold("both")
            client.disconnect()
            assert done.wait(10)  # returned during the partition
            assert proxy.held == "both"
            assert ROOM not in seen["rooms_after_leave"]
            assert rooms is not None and (rooms.late_emits, rooms.publishing) == (1, 1)
            proxy.heal("reset")  # python-socketio publishes again on a new connection
            eventually_sync(lambda: rooms is not None and rooms.publishing == 0, 5)
    finally:
        proxy.close()


async def test_an_emit_that_publishes_in_time_is_not_late(redis_server: RedisServer) -> None:
    """With the broker answering, an emit through the pub/sub manager reaches the room's
    client and is not counted late."""
    proxy = PartitionProxy(redis_server.port)
    rooms: AsyncSocketIORooms | None = None

    def setup(sio: Any) -> None:
        nonlocal rooms
        rooms = AsyncSocketIORooms(sio)

        async def connect(sid: str, environ: Any, auth: Any) -> None:
            assert rooms is not None
            await rooms.enter_room(sid, ROOM)

        sio.on("connect", connect)

    try:
        manager = socketio.AsyncRedisManager(proxy.url, write_only=True)  # no listener left behind
        async with running_async_server(setup, client_manager=manager) as server:
            client = await server.connect_client({})
            await server.barrier(client)
            assert rooms is not None
            await rooms.emit("teacher_connect", {"user_id": 7}, to=ROOM)
            await eventually(lambda: client.received("teacher_connect") == [({"user_id": 7},)])
            assert (rooms.late_emits, rooms.publishing) == (0, 0)
    finally:
        proxy.close()
