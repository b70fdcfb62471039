"""Presence across several kits (server nodes) sharing one real Redis: many
connections per user, reconnects, exactly-once leaves, the grace period, hub
snapshots and queries. Each kit records what it emits (RecordingSockets)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from presence_kit import ClientRole, InvalidSessionError, PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingAnalytics, RecordingSockets
from tests.support.redis_servers import aclose_client
from tests.support.sio_harness import eventually_sync

HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 100, "lesson_id": 5}
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
OTHER = {"role": "TeacherAPP", "org_id": 1, "user_id": "t-8", "lesson_id": 6}
PARTICIPANT = {"role": "ParticipantWeb", "org_id": 1, "user_id": 42, "lesson_id": 5, "room_id": 3}


class Node:
    def __init__(self, server: Any, settings: Settings, background: bool) -> None:
        self.sockets = RecordingSockets(background=background)
        self.analytics = RecordingAnalytics()
        self.kit = PresenceKit(
            store=RedisStore(server.client()),
            sockets=self.sockets,
            analytics=self.analytics,
            settings=settings,
        )

    def events(self, name: str) -> list[Any]:
        return [data for event, data, _to in self.sockets.emitted if event == name]


@pytest.fixture(params=["standalone", "cluster"])
def backend(request: pytest.FixtureRequest) -> Any:
    """A real standalone redis-server, or a real 3-master Redis Cluster."""
    servers = request.getfixturevalue(
        "redis_server" if request.param == "standalone" else "redis_cluster"
    )
    servers.flush()
    return servers


@pytest.fixture
def make_node(backend: Any) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(*, background: bool = False, **settings: Any) -> Node:
        node = Node(backend, Settings(**settings), background)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.kit.close()


def state(server: Any, user: Any = 7) -> str | None:
    value: str | None = server.client(decode_responses=True).hget(
        f"alive:org_1_user_{user}", "state"
    )
    return value


def test_a_teacher_on_two_nodes_leaves_once_when_the_last_connection_goes(
    make_node: Any, backend: Any
) -> None:
    a, b = make_node(), make_node()
    a.kit.handle_connect("tab-a", TEACHER)
    b.kit.handle_connect("tab-b", TEACHER)
    assert len(a.events("teacher_connect") + b.events("teacher_connect")) == 1
    a.kit.handle_disconnect("tab-a", TEACHER)
    assert state(backend) == "connect"
    assert a.events("teacher_disconnect") == []
    b.kit.handle_disconnect("tab-b", TEACHER)
    assert b.events("teacher_disconnect") == [{"user_id": 7}]
    assert state(backend) == "disconnect"


def test_an_old_sids_disconnect_after_a_reconnect_changes_nothing(
    make_node: Any, backend: Any
) -> None:
    a, b = make_node(), make_node()
    a.kit.handle_connect("old", TEACHER)
    b.kit.handle_connect("new", TEACHER)  # reconnected elsewhere before the old one dropped
    a.kit.handle_disconnect("old", TEACHER, reason="ping timeout")
    a.kit.handle_disconnect("old", TEACHER, reason="ping timeout")  # delivered twice
    assert state(backend) == "connect"
    assert a.events("teacher_disconnect") + b.events("teacher_disconnect") == []
    # A late connect of the dead sid (a retried script call) must not revive it.
    assert a.kit.handle_connect("old", TEACHER).status.value == "stale"  # type: ignore[union-attr]
    assert [r.sid for r in a.kit.connections(1, 7)] == ["new"]


def test_include_version_orders_the_events(make_node: Any) -> None:
    a = make_node(include_version=True)
    a.kit.handle_connect("s1", TEACHER)
    a.kit.handle_disconnect("s1", TEACHER)
    a.kit.handle_connect("s2", TEACHER)
    assert a.events("teacher_connect") == [
        {"user_id": 7, "version": 1},
        {"user_id": 7, "version": 3},
    ]
    assert a.events("teacher_disconnect") == [{"user_id": 7, "version": 2}]


def test_a_connecting_hub_gets_a_snapshot_with_the_ids_types(make_node: Any) -> None:
    a, b = make_node(), make_node()
    a.kit.handle_connect("t1", TEACHER)
    b.kit.handle_connect("t2", OTHER)
    b.kit.handle_connect("t2-tab", OTHER)
    a.kit.handle_connect("hub", HUB)
    [snapshot] = a.events("presence_state")
    assert sorted(snapshot["user_ids"], key=str) == [7, "t-8"]
    assert [to for event, _d, to in a.sockets.emitted if event == "presence_state"] == ["hub"]
    b.kit.handle_disconnect("t2", OTHER)
    b.kit.handle_disconnect("t2-tab", OTHER)
    b.kit.handle_connect("hub2", HUB)
    assert b.events("presence_state") == [{"user_ids": [7]}]


def test_snapshot_can_be_switched_off(make_node: Any) -> None:
    a = make_node(send_presence_snapshot=False)
    a.kit.handle_connect("hub", HUB)
    assert a.sockets.emitted == []


def test_queries(make_node: Any) -> None:
    a, b = make_node(), make_node()
    a.kit.handle_connect("t1", TEACHER)
    b.kit.handle_connect("t1b", TEACHER)
    b.kit.handle_connect("t2", OTHER)
    a.kit.handle_connect("p1", PARTICIPANT)
    online = {u.user_id: u for u in a.kit.online_users(1)}
    assert set(online) == {7, "t-8"}
    assert (online[7].connections, online[7].lesson_ids) == (2, (5,))
    assert [u.user_id for u in b.kit.online_users(1, lesson_id=6)] == ["t-8"]
    assert [u.user_id for u in b.kit.online_users("1", ClientRole.PARTICIPANT_WEB)] == [42]
    assert a.kit.online_users(2) == []
    info = a.kit.presence(1, 7)
    assert (info.state, len(info.connections), info.last_reason) == ("connect", 2, None)
    assert {r.node_id for r in info.connections} == {a.kit.node_id, b.kit.node_id}
    assert info.connections[0].session.user_id == 7
    before = time.time()
    a.kit.handle_disconnect("t1", TEACHER, reason="ping timeout")
    b.kit.handle_disconnect("t1b", TEACHER, reason="transport close")
    info = b.kit.presence(1, 7)
    assert (info.state, info.connections, info.last_reason) == (
        "disconnect",
        (),
        "transport close",
    )
    assert info.since is not None and info.since >= before - 1
    assert [u.user_id for u in a.kit.online_users(1)] == ["t-8"]
    assert b.kit.connections(1, 42, "ParticipantWeb")[0].session.room_id == 3


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda kit: kit.online_users("a b"), "org_id"),
        (lambda kit: kit.online_users(1, "Janitor"), "role"),
        (lambda kit: kit.online_users(1, lesson_id="{x}"), "lesson_id"),
        (lambda kit: kit.presence(1, None), "user_id"),
        (lambda kit: kit.connections(1.5, 7), "org_id"),
    ],
)
def test_bad_query_input(make_node: Any, backend: Any, call: Any, field: str) -> None:
    with pytest.raises(InvalidSessionError) as info:
        call(make_node().kit)
    assert info.value.field == field
    assert list(backend.client().scan_iter()) == []


GRACE = 0.4


def test_grace_reconnect_on_another_node_cancels_the_leave(make_node: Any, backend: Any) -> None:
    a, b = make_node(leave_grace=GRACE), make_node(leave_grace=GRACE)
    a.kit.handle_connect("s1", TEACHER)
    outcome = a.kit.handle_disconnect("s1", TEACHER)
    assert outcome is not None and outcome.deferred
    assert state(backend) == "connect"  # held back: still online
    assert [u.user_id for u in b.kit.online_users(1)] == [7]
    resumed = b.kit.handle_connect("s2", TEACHER)
    assert resumed is not None and resumed.resumed and not resumed.first
    time.sleep(GRACE + 0.1)
    assert a.kit.run_due_leaves() + b.kit.run_due_leaves() == 0
    assert a.events("teacher_disconnect") + b.events("teacher_disconnect") == []
    assert len(a.events("teacher_connect") + b.events("teacher_connect")) == 1  # only the first
    assert state(backend) == "connect"
    assert [u.user_id for u in b.kit.online_users(1)] == [7]


def test_grace_without_reconnect_leaves_exactly_once(make_node: Any, backend: Any) -> None:
    a, b = make_node(leave_grace=GRACE), make_node(leave_grace=GRACE)
    a.kit.handle_connect("s1", TEACHER)
    a.kit.handle_disconnect("s1", TEACHER, reason="ping timeout")
    assert a.kit.run_due_leaves() == 0  # not due yet
    time.sleep(GRACE + 0.1)
    assert b.kit.run_due_leaves() == 1
    assert a.kit.run_due_leaves() == 0
    assert b.events("teacher_disconnect") == [{"user_id": 7}]
    assert a.events("teacher_disconnect") == []
    info = a.kit.presence(1, 7)
    assert (info.state, info.last_reason) == ("disconnect", "ping timeout")
    assert a.kit.online_users(1) == []
    ttl = backend.client().ttl("alive:org_1_user_7")
    assert 3590 <= ttl <= 3600


def test_a_leave_scheduled_by_a_closed_kit_is_run_by_another(make_node: Any, backend: Any) -> None:
    a = make_node(leave_grace=GRACE, leave_poll_interval=0.05, background=True)
    b = make_node(leave_grace=GRACE, leave_poll_interval=0.05, background=True)
    b.kit.handle_connect("hub", HUB)  # b is alive: its background is running
    a.kit.handle_connect("s1", TEACHER)
    a.kit.handle_disconnect("s1", TEACHER)
    a.kit.close()
    eventually_sync(lambda: b.events("teacher_disconnect") == [{"user_id": 7}], timeout=5)
    assert state(backend) == "disconnect"
    time.sleep(0.2)
    assert b.events("teacher_disconnect") == [{"user_id": 7}]


def test_participants_are_not_held_back(make_node: Any) -> None:
    a = make_node(leave_grace=GRACE)
    a.kit.handle_connect("p1", PARTICIPANT)
    a.kit.handle_disconnect("p1", PARTICIPANT)
    assert [e.distinct_id for e in a.analytics.events] == ["42"]


@pytest.mark.cluster
async def test_a_stale_cluster_index_entry_is_verified_away(redis_cluster: Any) -> None:
    """On a cluster the org index is written in its own command: a process that dies
    between it and the script leaves an entry with no connection. Reads drop it and
    delete it (sync and asyncio stores)."""
    from presence_kit import AsyncPresenceKit
    from presence_kit.redis import AsyncRedisStore
    from presence_kit.testing import AsyncRecordingSockets

    redis_cluster.flush()
    sync_kit = PresenceKit(store=RedisStore(redis_cluster.client()), sockets=RecordingSockets())
    sync_kit.handle_connect("live", TEACHER)
    index = "presence:{presence:org:1}:online:TeacherAPP"
    raw = redis_cluster.client()
    raw.hset(index, "ghost-1", "[8,5]")
    assert [u.user_id for u in sync_kit.online_users(1)] == [7]
    assert raw.hexists(index, "ghost-1") == 0
    raw.hset(index, "ghost-2", '["t-9",5]')
    client = redis_cluster.async_client()
    async_kit = AsyncPresenceKit(store=AsyncRedisStore(client), sockets=AsyncRecordingSockets())
    assert [u.user_id for u in await async_kit.online_users(1)] == [7]
    assert raw.hexists(index, "ghost-2") == 0
    await async_kit.aclose()
    await aclose_client(client)
    sync_kit.close()
