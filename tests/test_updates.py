"""handle_update and count_online end to end: a real python-socketio AsyncServer with
real clients over loopback, a real redis-server (and a real local Redis Cluster).

The test server's ``move`` event stands for the integrator's own code that decides a
connection changed lesson: it updates the session it keeps and calls ``handle_update``.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from presence_kit import (
    AsyncPresenceKit,
    InvalidSessionError,
    OnlineCount,
    PresenceKit,
    Settings,
    UpdateStatus,
)
from presence_kit.memory import MemoryStore
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.socketio import AsyncSocketIORooms
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_servers import RedisClusterServers, RedisServer, aclose_client
from tests.support.sio_harness import AsyncServerHandle, eventually, running_async_server

HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 100, "lesson_id": 5}
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 1,
    "user_id": 42,
    "lesson_id": 5,
    "room_id": "r-9",
}
QUIET = Settings(  # no background step during a test but those it drives
    heartbeat_interval=30, node_timeout=60, leave_poll_interval=30, reconcile_interval=30
)


@dataclass
class Node:
    srv: AsyncServerHandle
    kit: AsyncPresenceKit
    outcomes: list[Any] = field(default_factory=list)
    rooms_after: dict[str, list[str]] = field(default_factory=dict)


@asynccontextmanager
async def update_server(
    client: Any,
    *,
    settings: Settings = QUIET,
    timeout: float = 0.5,
    save_updates: bool = True,
) -> AsyncIterator[Node]:
    """A server whose ``move`` event updates the session (saving it unless
    ``save_updates`` is false: its disconnect then gets the stale one)."""
    holder: dict[str, Any] = {}

    def setup(sio: Any) -> None:
        kit = AsyncPresenceKit(
            store=AsyncRedisStore(client, timeout=timeout),
            sockets=AsyncSocketIORooms(sio),
            settings=settings,
        )
        holder["kit"] = kit

        async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            await sio.save_session(sid, auth)
            await kit.handle_connect(sid, auth)

        async def move(sid: str, changes: dict[str, Any]) -> None:
            session = {**await sio.get_session(sid), **changes}
            outcome = await kit.handle_update(sid, session)
            if save_updates:
                await sio.save_session(sid, session)
            holder["node"].outcomes.append(outcome)

        async def disconnect(sid: str, reason: str) -> None:
            await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)
            holder["node"].rooms_after[sid] = sio.rooms(sid)

        sio.on("connect", connect)
        sio.on("move", move)
        sio.on("disconnect", disconnect)

    async with running_async_server(setup) as srv:
        node = holder["node"] = Node(srv=srv, kit=holder["kit"])
        try:
            yield node
        finally:
            await node.kit.aclose()


async def moved(node: Node, client: Any, changes: dict[str, Any]) -> Any:
    """Ask the server to update ``client``'s connection; its outcome."""
    n = len(node.outcomes)
    await client.client.emit("move", changes)
    await eventually(lambda: len(node.outcomes) > n)
    return node.outcomes[-1]


@pytest.fixture(params=["standalone", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()  # (a fixture asked for by name is not flushed for us)
        redis_client = server.async_client()
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        redis_client = cluster.async_client()
        await redis_client.initialize()  # the topology, before the first call's deadline
    try:
        yield redis_client
    finally:
        await aclose_client(redis_client)


async def test_rooms_move_and_the_hub_hears_the_update_once(client: Any) -> None:
    async with update_server(client) as node:
        srv, kit = node.srv, node.kit
        hub = await srv.connect_client(HUB)
        teacher = await srv.connect_client(TEACHER)
        await hub.wait_for("teacher_connect")
        outcome = await moved(node, teacher, {"lesson_id": 10, "meta": {"slide": 3}})
        assert (outcome.status, outcome.lesson_changed) == (UpdateStatus.UPDATED, True)
        assert await hub.wait_for("teacher_update") == ({"user_id": 7, "lesson_id": 10},)
        # an emit to the new lesson room reaches the socket; one to the old does not
        await srv.sio.emit("to_new", 1, to="lesson:10")
        await srv.sio.emit("to_old", 1, to="lesson:5")
        await srv.barrier(teacher, hub)
        assert teacher.received("to_new") == [(1,)] and teacher.received("to_old") == []
        assert hub.received("to_old") == [(1,)]  # the hub stayed where it was
        # the same values again: unchanged, nothing announced
        again = await moved(node, teacher, {"lesson_id": 10})
        assert again.status is UpdateStatus.UNCHANGED
        await srv.barrier(hub)
        assert len(hub.received("teacher_update")) == 1
        # the queries follow
        [online] = await kit.online_users(1, lesson_id=10)
        assert (online.user_id, online.connections) == (7, 1)
        assert await kit.online_users(1, lesson_id=5) == []
        assert await kit.count_online(1, lesson_id=10) == OnlineCount(users=1, connections=1)
        assert await kit.count_online(1, lesson_id=5) == OnlineCount(users=0, connections=0)
        [record] = await kit.connections(1, 7)
        assert (record.session.lesson_id, record.meta) == (10, {"slide": 3})
        presence = await kit.presence(1, 7)
        assert presence.connections == (record,)


async def test_a_disconnect_with_the_stale_session_leaves_everything_clean(client: Any) -> None:
    """The server never saves the updated session: its disconnect hands the kit the
    one of the connect. The kit still leaves the room the connection is in now, and
    removes the right entries (no index entry, no count left)."""
    async with update_server(client, save_updates=False) as node:
        srv, kit = node.srv, node.kit
        hub = await srv.connect_client(HUB)
        teacher = await srv.connect_client(TEACHER)
        pupil = await srv.connect_client(PARTICIPANT)
        await moved(node, teacher, {"lesson_id": 10})
        await moved(node, pupil, {"lesson_id": 11, "room_id": "r-10"})
        sids = teacher.sid, pupil.sid
        await teacher.disconnect()
        await pupil.disconnect()
        await eventually(lambda: all(sid in node.rooms_after for sid in sids))
        assert "lesson:10" not in node.rooms_after[sids[0]]
        assert "lesson:11" not in node.rooms_after[sids[1]]
        assert await hub.wait_for("teacher_disconnect") == ({"user_id": 7},)
        for role in ("TeacherAPP", "ParticipantWeb"):
            assert await kit.online_users(1, role) == []
            assert await kit.count_online(1, role=role) == OnlineCount(users=0, connections=0)
            for lesson in (5, 10, 11):
                counted = await kit.count_online(1, lesson_id=lesson, role=role)
                assert counted == OnlineCount(users=0, connections=0)


async def test_updates_during_a_redis_pause_replay_in_order(
    fresh_redis_server: RedisServer,
) -> None:
    client = fresh_redis_server.async_client()
    try:
        async with update_server(client, timeout=0.1) as node:
            srv, kit = node.srv, node.kit
            hub = await srv.connect_client(HUB)
            teacher = await srv.connect_client(TEACHER)
            await hub.wait_for("teacher_connect")
            fresh_redis_server.pause()
            try:
                for lesson in (11, 12, 13):
                    outcome = await moved(node, teacher, {"lesson_id": lesson})
                    assert outcome is None  # queued
                # the rooms moved at once, to the last lesson
                assert "lesson:13" in srv.sio.rooms(teacher.sid)
                assert not {"lesson:5", "lesson:11", "lesson:12"} & set(srv.sio.rooms(teacher.sid))
                assert kit.pending == 3
            finally:
                fresh_redis_server.resume()
            assert await kit.replay_outbox() == 3
            [record] = await kit.connections(1, 7)
            assert record.session.lesson_id == 13
            await srv.barrier(hub)
            lessons = [data["lesson_id"] for (data,) in hub.received("teacher_update")]
            assert lessons == [11, 12, 13]
            assert await kit.count_online(1, lesson_id=13) == OnlineCount(users=1, connections=1)
    finally:
        await aclose_client(client)


BAD_UPDATES = [
    ({"role": "TeacherHub"}, "role"),
    ({"org_id": 2}, "org_id"),
    ({"user_id": "7"}, "user_id"),
    ({"meta": ["a"]}, "meta"),
    ({"meta": {f"k{n}": n for n in range(17)}}, "meta"),
    ({"meta": {"k" * 65: 1}}, "meta"),
    ({"meta": {"": 1}}, "meta"),
    ({"meta": {"nested": {"a": 1}}}, "meta"),
    ({"meta": {"list": [1]}}, "meta"),
    ({"meta": {"nan": float("nan")}}, "meta"),
    ({"meta": {"big": "x" * 1100}}, "meta"),
    ({"lesson_id": "has space"}, "lesson_id"),
]


@pytest.mark.parametrize(("changes", "field_name"), BAD_UPDATES)
def test_a_bad_update_is_refused_before_anything_is_written(
    redis_server: RedisServer, changes: dict[str, Any], field_name: str
) -> None:
    sockets = RecordingSockets()
    kit = PresenceKit(store=RedisStore(redis_server.client()), sockets=sockets, settings=QUIET)
    try:
        kit.handle_connect("sid-1", {**TEACHER, "meta": {"slide": 1}})
        raw = redis_server.client()
        before = {key: raw.dump(key) for key in raw.scan_iter()}
        rooms, emitted = sockets.rooms_of("sid-1"), list(sockets.emitted)
        with pytest.raises(InvalidSessionError) as caught:
            kit.handle_update("sid-1", {**TEACHER, **changes})
        assert caught.value.field == field_name
        assert {key: raw.dump(key) for key in raw.scan_iter()} == before
        assert sockets.rooms_of("sid-1") == rooms and sockets.emitted == emitted
        assert kit.pending == 0
    finally:
        kit.close()


def test_meta_at_connect_has_the_same_limits(redis_server: RedisServer) -> None:
    sockets = RecordingSockets()
    kit = PresenceKit(store=RedisStore(redis_server.client()), sockets=sockets, settings=QUIET)
    try:
        with pytest.raises(InvalidSessionError) as caught:
            kit.handle_connect("sid-1", {**TEACHER, "meta": {"x": object()}})
        assert caught.value.field == "meta"
        assert list(redis_server.client().scan_iter()) == []
        assert sockets.rooms_of("sid-1") == set()
        kit.handle_connect("sid-1", {**TEACHER, "meta": {"x": 1.5, "y": None, "z": True}})
        [record] = kit.connections(1, 7)
        assert record.meta == {"x": 1.5, "y": None, "z": True}
    finally:
        kit.close()


# --- races: an update and a disconnect of the same sid, on one node or two --------------


async def _race(kits: list[AsyncPresenceKit], rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    for n in range(rounds):
        sid = f"race-{seed}-{n}"
        owner, other = rng.sample(kits, 2) if len(kits) > 1 else (kits[0], kits[0])
        await owner.handle_connect(sid, TEACHER)
        update = owner.handle_update(sid, {**TEACHER, "lesson_id": 10 + n % 3})
        leave = other.handle_disconnect(sid, TEACHER)
        pair = [update, leave] if rng.random() < 0.5 else [leave, update]
        if rng.random() < 0.5:
            await asyncio.gather(*pair)
        else:  # one after the other, in the drawn order
            for call in pair:
                await call


@pytest.mark.parametrize("nodes", [1, 2])
async def test_updates_racing_disconnects_never_resurrect(client: Any, nodes: int) -> None:
    kits = [
        AsyncPresenceKit(
            store=AsyncRedisStore(client), sockets=AsyncRecordingSockets(), settings=QUIET
        )
        for _ in range(nodes)
    ]
    try:
        await _race(kits, 60, seed=nodes)
        for kit in kits:
            assert await kit.online_users(1) == []
            assert await kit.count_online(1) == OnlineCount(users=0, connections=0)
            for lesson in (5, 10, 11, 12):
                assert await kit.count_online(1, lesson_id=lesson) == OnlineCount(
                    users=0, connections=0
                )
            assert (await kit.presence(1, 7)).connections == ()
    finally:
        for kit in kits:
            await kit.aclose()


# --- count_online = online_users, under churn ---------------------------------------------


def _churn(
    kits: list[PresenceKit],
    rng: random.Random,
    steps: int,
    live: dict[str, tuple[PresenceKit, dict[str, Any]]],
    round_: int,
) -> None:
    for step in range(steps):
        roll = rng.random()
        if roll < 0.45 or not live:
            kit = rng.choice(kits)
            role = rng.choice(["TeacherAPP", "ParticipantWeb"])
            session: dict[str, Any] = {
                "role": role,
                "org_id": 1,
                "user_id": rng.choice([1, 2, 3, "4", "u-5"]),
                "lesson_id": rng.choice([5, 6, "7"]),
                "room_id": "r-1",
            }
            sid = f"s{round_}-{step}"
            kit.handle_connect(sid, session)
            live[sid] = (kit, session)
        elif roll < 0.75:
            sid = rng.choice(sorted(live))
            kit, session = live[sid]
            session = {**session, "lesson_id": rng.choice([5, 6, "7"])}
            kit.handle_update(sid, session)
            live[sid] = (kit, session)
        else:
            sid = rng.choice(sorted(live))
            kit, session = live.pop(sid)
            kit.handle_disconnect(sid, session)  # its node's handler


def _assert_counts_match(kit: PresenceKit) -> None:
    for role in ("TeacherAPP", "ParticipantWeb"):
        for lesson in (None, 5, 6, "7"):
            listed = kit.online_users(1, role, lesson_id=lesson)
            counted = kit.count_online(1, lesson_id=lesson, role=role)
            assert counted == OnlineCount(
                users=len(listed), connections=sum(u.connections for u in listed)
            ), (role, lesson)


@pytest.mark.parametrize("kind", ["memory", "standalone", "cluster"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_count_online_equals_online_users_under_churn(
    request: pytest.FixtureRequest, kind: str, seed: int
) -> None:
    """Two nodes connect, update and disconnect at random (with a leave grace, so held
    leaves count too); whenever nothing is in flight, the O(1) count equals what the
    index lists."""
    settings = Settings(
        heartbeat_interval=30, node_timeout=60, reconcile_interval=30, leave_grace=30
    )
    if kind == "memory":
        shared = MemoryStore()
        stores: list[Any] = [shared, shared]
    elif kind == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        stores = [RedisStore(server.client()), RedisStore(server.client())]
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        stores = [RedisStore(cluster.client()), RedisStore(cluster.client())]
    kits = [
        PresenceKit(store=store, sockets=RecordingSockets(), settings=settings) for store in stores
    ]
    try:
        rng = random.Random(seed)
        live: dict[str, tuple[PresenceKit, dict[str, Any]]] = {}
        for round_ in range(4):
            _churn(kits, rng, 60, live, round_)
            _assert_counts_match(kits[0])
    finally:
        for kit in kits:
            kit.close()


# --- a Redis Cluster: a kit killed between the user's script and the org's call ---------

_DYING_KIT = """
import os, sys
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from presence_kit import PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets

phase, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
ran = {"scripts": 0}

class DyingCluster(RedisCluster):
    # The process dies (SIGKILL-like: no cleanup, no replay) at the chosen point.
    def execute_command(self, *args, **kwargs):
        if phase == "connect" and args[0] == "EVALSHA":
            os._exit(9)  # the org's call made (pipelined before), the user's not
        reply = super().execute_command(*args, **kwargs)
        if args[0] == "EVALSHA":
            ran["scripts"] += 1
        return reply

_execute = ClusterPipeline.execute

def execute(self, *args, **kwargs):
    if phase == "disconnect" and ran["scripts"] == 1:
        os._exit(9)  # the user's script ran, the org's call (pipelined after) not
    return _execute(self, *args, **kwargs)

ClusterPipeline.execute = execute

# timeout=None: the store uses this client itself (not a copy with its own deadlines)
client = DyingCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports])
quiet = Settings(heartbeat_interval=30, node_timeout=60, reconcile_interval=30)
store = RedisStore(client, timeout=None)
kit = PresenceKit(store=store, sockets=RecordingSockets(), settings=quiet)
session = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
if phase == "connect":
    kit.handle_connect("c-1", session)
else:
    kit.handle_disconnect("d-1", session)
sys.exit(3)  # not reached: it died on the way
"""


@pytest.mark.parametrize("phase", ["connect", "disconnect"])
def test_counts_converge_after_a_kit_dies_between_the_calls(
    redis_cluster: RedisClusterServers, phase: str
) -> None:
    """On a cluster a connect writes the org's index entry and counts first (its slot),
    then the user's record; a disconnect removes the record, then the entry. A kit
    killed in between leaves the index (and so the counts) a superset: one connection
    too many. The next ``online_users`` read verifies the entries against the records,
    removes the dead one through the same script, and the count is exact again."""
    redis_cluster.flush()
    kit = PresenceKit(
        store=RedisStore(redis_cluster.client()), sockets=RecordingSockets(), settings=QUIET
    )
    try:
        # (the scripts are loaded where they run: the dying kit's calls fail no NOSCRIPT)
        kit.handle_connect("warm", {**TEACHER, "user_id": 99})
        kit.handle_disconnect("warm", {**TEACHER, "user_id": 99})
        if phase == "disconnect":
            kit.handle_connect("d-1", TEACHER)
        ports = [str(node.port) for node in redis_cluster.startup_nodes]
        done = subprocess.run(
            [sys.executable, "-c", _DYING_KIT, phase, *ports], capture_output=True, timeout=60
        )
        assert done.returncode == 9, done.stderr.decode()
        assert kit.count_online(1) == OnlineCount(users=1, connections=1)  # one too many
        assert kit.presence(1, 7).connections == ()  # no record
        assert kit.online_users(1) == []  # verified: the dead entry goes ...
        assert kit.count_online(1) == OnlineCount(users=0, connections=0)  # ... and its count
        assert kit.count_online(1, lesson_id=5) == OnlineCount(users=0, connections=0)
    finally:
        kit.close()


# --- the hub's snapshot with meta (Settings.snapshot_meta) -------------------------------


@pytest.mark.parametrize("kind", ["memory", "standalone", "cluster"])
def test_the_hub_snapshot_carries_meta_only_when_asked(
    request: pytest.FixtureRequest, kind: str
) -> None:
    def store() -> Any:
        if kind == "memory":
            return shared
        if kind == "standalone":
            return RedisStore(request.getfixturevalue("redis_server").client())
        return RedisStore(request.getfixturevalue("redis_cluster").client())

    shared = MemoryStore()
    if kind == "standalone":
        request.getfixturevalue("redis_server").flush()
    elif kind == "cluster":
        request.getfixturevalue("redis_cluster").flush()
    for snapshot_meta in (False, True):
        settings = Settings(
            heartbeat_interval=30,
            node_timeout=60,
            reconcile_interval=30,
            snapshot_meta=snapshot_meta,
        )
        sockets = RecordingSockets()
        kit = PresenceKit(store=store(), sockets=sockets, settings=settings)
        try:
            teacher = f"t-{snapshot_meta}"
            kit.handle_connect(teacher, {**TEACHER, "meta": {"slide": 1}})
            kit.handle_update(teacher, {**TEACHER, "lesson_id": 6, "meta": {"slide": 2}})
            kit.handle_connect(f"hub-{snapshot_meta}", HUB)
            [(_event, data, _to)] = [e for e in sockets.emitted if e[0] == "presence_state"]
            assert data["user_ids"] == [7]
            if snapshot_meta:
                assert data["connections"] == [
                    {"user_id": 7, "lesson_id": 6, "meta": {"slide": 2}}
                ]
            else:
                assert "connections" not in data
            kit.handle_disconnect(teacher, TEACHER)
        finally:
            kit.close()
