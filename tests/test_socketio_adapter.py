"""presence_kit.socketio against real python-socketio servers and clients over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import flask
import flask_socketio
import pytest
import socketio

from presence_kit._errors import BackendError, InvalidInputError, SocketsError
from presence_kit._ports import AsyncSockets, Sockets
from presence_kit.socketio import AsyncSocketIORooms, SocketIORooms
from tests.support.redis_servers import aclose_client
from tests.support.sio_harness import (
    connect_async_client,
    eventually,
    eventually_sync,
    running_async_server,
    running_threaded_server,
)

ROOM = "lesson:1"


# --------------------------------------------------------------------------- asyncio


async def test_async_adapter_fits_the_port() -> None:
    assert isinstance(AsyncSocketIORooms(socketio.AsyncServer()), AsyncSockets)


async def test_async_room_emit_reaches_exactly_the_members_and_leave_stops_it() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        a, b, c = [await srv.connect_client({"n": i}) for i in range(3)]
        await rooms.enter_room(a.sid, ROOM)
        await rooms.enter_room(b.sid, ROOM)

        await rooms.emit("presence", {"v": 1}, to=ROOM)
        assert await a.wait_for("presence") == ({"v": 1},)
        assert await b.wait_for("presence") == ({"v": 1},)
        await srv.barrier(a, b, c)
        assert c.names() == []

        await rooms.leave_room(b.sid, ROOM)
        await rooms.emit("presence", {"v": 2}, to=ROOM)
        assert await a.wait_for("presence") == ({"v": 2},)
        await srv.barrier(a, b, c)
        assert b.received("presence") == [({"v": 1},)]
        assert c.names() == []


async def test_async_emit_to_a_sid_reaches_one_client() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        a, b = await srv.connect_client(), await srv.connect_client()
        await rooms.emit("kick", "bye", to=b.sid)
        assert await b.wait_for("kick") == ("bye",)
        await srv.barrier(a, b)
        assert a.names() == []
        assert b.names() == ["kick"]


async def test_async_connect_handler_with_auth_joins_and_disconnect_handler_leaves() -> None:
    seen: dict[str, Any] = {}

    def setup(sio: socketio.AsyncServer) -> None:
        rooms = AsyncSocketIORooms(sio)

        @sio.event
        async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            seen["during_connect"] = sid in rooms.local_sids()
            await rooms.enter_room(sid, f"user:{auth['user']}")

        @sio.event
        async def disconnect(sid: str, reason: str) -> None:
            seen["reason"] = reason
            await rooms.leave_room(sid, "user:u1")  # the sid is going: still no error
            seen["left"] = sid

    async with running_async_server(setup) as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        a = await srv.connect_client({"user": "u1"})
        b = await srv.connect_client({"user": "u2"})
        assert seen["during_connect"] is True  # local_sids includes pending connects
        await rooms.emit("hello", 1, to="user:u1")
        assert await a.wait_for("hello") == (1,)
        await srv.barrier(a, b)
        assert b.names() == []

        sid = a.sid
        await a.disconnect()
        await eventually(lambda: seen.get("left") == sid)
        assert seen["reason"] in {
            srv.sio.reason.CLIENT_DISCONNECT,
            srv.sio.reason.TRANSPORT_CLOSE,
        }


async def test_async_local_sids_lists_connected_and_drops_disconnected() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        assert rooms.local_sids() == set()
        a, b = await srv.connect_client(), await srv.connect_client()
        assert rooms.local_sids() == {a.sid, b.sid}
        gone = a.sid
        await a.disconnect()
        await eventually(lambda: gone not in rooms.local_sids())
        assert rooms.local_sids() == {b.sid}


async def test_async_local_sids_is_per_namespace() -> None:
    async with running_async_server(namespaces=["/", "/chat"]) as srv:
        default, chat = AsyncSocketIORooms(srv.sio), AsyncSocketIORooms(srv.sio, "/chat")
        a = await srv.connect_client(namespaces=["/chat"])
        assert default.local_sids() == set()
        assert chat.local_sids() == {a.client.get_sid("/chat")}


async def test_async_background_task_and_sleep() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        done: list[str] = []

        async def job(tag: str) -> str:
            await rooms.sleep(0.01)
            done.append(tag)
            return tag

        task = rooms.start_background_task(job, "x")
        assert isinstance(task, asyncio.Task)
        assert await asyncio.wait_for(task, 2) == "x"
        assert done == ["x"]


async def test_async_leave_room_for_unknown_or_departed_sid_is_a_noop() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        await rooms.leave_room("never-connected", ROOM)  # no namespace state yet
        a, b = await srv.connect_client(), await srv.connect_client()
        await rooms.enter_room(a.sid, ROOM)
        gone = a.sid
        await a.disconnect()
        await eventually(lambda: gone not in rooms.local_sids())
        await rooms.leave_room(gone, ROOM)
        await rooms.leave_room("never-connected", ROOM)
        await rooms.leave_room(b.sid, "a-room-b-never-joined")
        await rooms.emit("x", 1, to=gone)  # emitting to a departed sid is silent too
        await srv.barrier(b)
        assert b.names() == []


async def test_async_enter_room_for_unknown_sid_raises_sockets_error() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        with pytest.raises(SocketsError) as empty_ns:  # nobody connected: ValueError
            await rooms.enter_room("ghost", ROOM)
        assert isinstance(empty_ns.value.__cause__, ValueError)
        await srv.connect_client()
        with pytest.raises(SocketsError) as busy_ns:  # namespace known, sid not: KeyError
            await rooms.enter_room("ghost", ROOM)
        assert isinstance(busy_ns.value.__cause__, KeyError)


async def test_async_backend_failures_become_sockets_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sio = socketio.AsyncServer()
    rooms = AsyncSocketIORooms(sio)
    boom = ConnectionError("pub/sub down")

    async def fail(*args: Any, **kwargs: Any) -> None:
        raise boom

    def fail_sync(*args: Any, **kwargs: Any) -> Any:
        raise boom

    for name in ("enter_room", "leave_room", "emit"):
        monkeypatch.setattr(sio.manager, name, fail)
    monkeypatch.setattr(sio.manager, "get_participants", fail_sync)
    monkeypatch.setattr(sio.eio, "start_background_task", fail_sync)

    for call in (
        rooms.enter_room("s", ROOM),
        rooms.leave_room("s", ROOM),
        rooms.emit("e", 1, to=ROOM),
    ):
        with pytest.raises(SocketsError) as info:
            await call
        assert info.value.__cause__ is boom
        assert isinstance(info.value, BackendError)
    with pytest.raises(SocketsError) as info:
        rooms.local_sids()
    assert info.value.__cause__ is boom
    with pytest.raises(SocketsError) as info:
        rooms.start_background_task(asyncio.sleep, 0)
    assert info.value.__cause__ is boom


async def test_async_emit_refuses_an_empty_target_instead_of_broadcasting() -> None:
    async with running_async_server() as srv:
        rooms = AsyncSocketIORooms(srv.sio)
        a = await srv.connect_client()
        with pytest.raises(InvalidInputError):
            await rooms.emit("all", 1, to="")
        await srv.barrier(a)
        assert a.names() == []


def test_constructors_refuse_the_wrong_kind_of_server() -> None:
    with pytest.raises(TypeError):
        AsyncSocketIORooms(socketio.Server())
    with pytest.raises(TypeError):
        SocketIORooms(socketio.AsyncServer())
    with pytest.raises(TypeError):
        SocketIORooms(object())
    with pytest.raises(TypeError):
        AsyncSocketIORooms(flask_socketio.SocketIO())


async def test_async_harness_leaves_no_tasks_behind() -> None:
    before = asyncio.all_tasks()
    async with running_async_server() as srv:
        a = await srv.connect_client()
        await srv.connect_client()
        await a.disconnect()
    assert asyncio.all_tasks() == before


# ------------------------------------------------------- asyncio + a pub/sub manager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(5)


@contextlib.asynccontextmanager
async def _stop_manager(sio: Any) -> AsyncIterator[None]:
    # AsyncRedisManager has no close(): its listener task and Redis connections outlive
    # sio.shutdown(). Stop and close them ourselves.
    try:
        yield
    finally:
        manager = sio.manager
        task = getattr(manager, "thread", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for resource in (getattr(manager, "pubsub", None), getattr(manager, "redis", None)):
            if resource is not None:
                await aclose_client(resource)


async def test_local_sids_with_a_redis_manager_are_this_nodes_only(redis_url: str) -> None:
    import redis.asyncio as aioredis

    channel = f"sio-{_free_port()}"
    mgr = {"client_manager": socketio.AsyncRedisManager(redis_url, channel=channel)}
    mgr2 = {"client_manager": socketio.AsyncRedisManager(redis_url, channel=channel)}
    async with (
        running_async_server(**mgr) as node1,
        running_async_server(**mgr2) as node2,
        _stop_manager(node1.sio),
        _stop_manager(node2.sio),
    ):
        rooms1, rooms2 = AsyncSocketIORooms(node1.sio), AsyncSocketIORooms(node2.sio)
        a = await node1.connect_client()
        b = await node2.connect_client()
        assert rooms1.local_sids() == {a.sid}
        assert rooms2.local_sids() == {b.sid}

        # Pub/sub is at-most-once: wait until both listeners are subscribed.
        r = aioredis.from_url(redis_url)
        try:

            async def subscribers() -> int:
                return int((await r.pubsub_numsub(channel))[0][1])

            deadline = time.monotonic() + 3
            while await subscribers() < 2:
                assert time.monotonic() < deadline, "listeners never subscribed"
                await asyncio.sleep(0.01)
        finally:
            await aclose_client(r)

        await rooms1.enter_room(a.sid, ROOM)
        await rooms2.enter_room(b.sid, ROOM)
        await rooms1.emit("cross", "hi", to=ROOM)  # node1 reaches node2's member too
        assert await a.wait_for("cross") == ("hi",)
        assert await b.wait_for("cross") == ("hi",)
        await rooms1.emit("direct", 1, to=b.sid)  # a sid on the other node
        assert await b.wait_for("direct") == (1,)
        # a sid of the other node: published, not an error
        await rooms1.leave_room(b.sid, "elsewhere")


# --------------------------------------------------------------------------- sync


def test_sync_adapter_fits_the_port() -> None:
    assert isinstance(SocketIORooms(socketio.Server()), Sockets)


def test_sync_room_emit_to_sid_leave_and_local_sids() -> None:
    joined: dict[str, str] = {}

    def setup(sio: socketio.Server) -> None:
        rooms = SocketIORooms(sio)

        @sio.event
        def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            if auth.get("join"):
                rooms.enter_room(sid, ROOM)
                joined[sid] = ROOM

    with running_threaded_server(setup) as srv:
        rooms = SocketIORooms(srv.sio)
        a = srv.connect_client({"join": True})
        b = srv.connect_client({"join": True})
        c = srv.connect_client({"join": False})
        assert set(joined) == {a.sid, b.sid}
        assert rooms.local_sids() == {a.sid, b.sid, c.sid}

        rooms.emit("presence", {"v": 1}, to=ROOM)
        assert a.wait_for("presence") == ({"v": 1},)
        assert b.wait_for("presence") == ({"v": 1},)
        rooms.emit("kick", "bye", to=c.sid)
        assert c.wait_for("kick") == ("bye",)
        srv.barrier(a, b, c)
        assert c.names() == ["kick"]
        assert a.names() == b.names() == ["presence"]

        rooms.leave_room(b.sid, ROOM)
        rooms.emit("presence", {"v": 2}, to=ROOM)
        assert a.wait_for("presence") == ({"v": 2},)
        srv.barrier(a, b)
        assert b.received("presence") == [({"v": 1},)]

        gone = a.sid
        a.disconnect()
        eventually_sync(lambda: gone not in rooms.local_sids())
        assert rooms.local_sids() == {b.sid, c.sid}
        rooms.leave_room(gone, ROOM)  # departed sid: no-op
        rooms.leave_room("never-connected", ROOM)
        with pytest.raises(SocketsError):
            rooms.enter_room(gone, ROOM)


async def test_sync_adapter_on_the_threaded_server_over_websocket() -> None:
    with running_threaded_server() as srv:
        rooms = SocketIORooms(srv.sio)
        a = await connect_async_client(srv.url)  # Werkzeug + simple-websocket upgrade
        try:
            assert a.client.transport() == "websocket"
            rooms.enter_room(a.sid, ROOM)
            rooms.emit("presence", "ws", to=ROOM)  # a queue put: fine from the loop
            assert await a.wait_for("presence") == ("ws",)
            assert rooms.local_sids() == {a.sid}
        finally:
            await a.disconnect()
        await eventually(lambda: rooms.local_sids() == set())


def test_sync_background_task_and_sleep() -> None:
    with running_threaded_server() as srv:
        rooms = SocketIORooms(srv.sio)
        done: list[str] = []

        def job(tag: str) -> None:
            rooms.sleep(0.01)
            done.append(tag)

        handle = rooms.start_background_task(job, "t")
        assert isinstance(handle, threading.Thread)
        handle.join(2)
        assert done == ["t"]


def test_sync_backend_failure_becomes_sockets_error() -> None:
    class BrokenServer(socketio.Server):  # type: ignore[misc]
        def enter_room(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("message queue down")

        def emit(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("socket gone")

    rooms = SocketIORooms(BrokenServer())
    with pytest.raises(SocketsError) as info:
        rooms.enter_room("s", ROOM)
    assert isinstance(info.value.__cause__, ConnectionError)
    with pytest.raises(SocketsError) as info:
        rooms.emit("e", 1, to=ROOM)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(InvalidInputError):
        rooms.emit("e", 1, to="")


def test_threaded_harness_leaves_no_threads_behind() -> None:
    before = set(threading.enumerate())
    with running_threaded_server() as srv:
        a = srv.connect_client()
        srv.connect_client()
        a.disconnect()
    eventually_sync(lambda: set(threading.enumerate()) <= before, timeout=3)


# --------------------------------------------------------------------------- Flask


def test_flask_socketio_server_is_resolved_lazily() -> None:
    # Pinned: with eventlet or gevent installed (the test extra has both, for the
    # server-mode tests) Flask-SocketIO would pick that mode, unpatched here.
    sockio = flask_socketio.SocketIO(async_mode="threading")
    rooms = SocketIORooms(sockio)  # before init_app: fine to build
    with pytest.raises(SocketsError, match="init_app"):
        rooms.local_sids()
    with pytest.raises(SocketsError, match="init_app"):
        rooms.enter_room("s", ROOM)

    sids: list[str] = []

    @sockio.on("connect")
    def on_connect(auth: dict[str, Any]) -> None:
        sid = flask.request.sid  # type: ignore[attr-defined]
        sids.append(sid)
        rooms.enter_room(sid, f"user:{auth['user']}")

    app = flask.Flask(__name__)
    sockio.init_app(app)
    assert rooms.server is sockio.server

    one = sockio.test_client(app, auth={"user": "u1"})
    two = sockio.test_client(app, auth={"user": "u2"})
    try:
        assert rooms.local_sids() == set(sids)
        rooms.emit("hello", {"n": 1}, to="user:u1")
        assert one.get_received() == [{"name": "hello", "args": [{"n": 1}], "namespace": "/"}]
        assert two.get_received() == []

        rooms.leave_room(sids[0], "user:u1")
        rooms.emit("hello", {"n": 2}, to="user:u1")
        assert one.get_received() == []
        rooms.emit("direct", 3, to=sids[1])
        assert [m["name"] for m in two.get_received()] == ["direct"]

        done: list[int] = []
        rooms.start_background_task(done.append, 1).join(2)
        rooms.sleep(0)
        assert done == [1]
    finally:
        one.disconnect()
        two.disconnect()
    assert rooms.local_sids() == set()
    rooms.leave_room(sids[0], ROOM)  # departed: no-op
