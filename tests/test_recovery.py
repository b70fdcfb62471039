"""Crash recovery in-process: kits (nodes) on one real Redis, driven step by step with
short timings. The same with real server processes and SIGKILL is in
``test_recovery_processes.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from presence_kit import AsyncPresenceKit, KeySchema, PresenceKit, Settings, StoreError
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingAnalytics, RecordingSockets
from tests.support.redis_servers import RedisServer, aclose_client

TIMEOUT = 0.4
FAST = {"heartbeat_interval": 0.1, "node_timeout": TIMEOUT, "shutdown_grace": 0.6}
T1 = {"role": "TeacherAPP", "org_id": 1, "user_id": 1, "lesson_id": 5}
T2 = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 5}
P1 = {"role": "ParticipantWeb", "org_id": 1, "user_id": 9, "lesson_id": 5, "room_id": "r-1"}
HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 100, "lesson_id": 5}


class _ReplyLosingStore(RedisStore):
    """A real RedisStore whose next ``lose`` calls of the named operations run, but
    whose replies are lost (as if they timed out after Redis ran them)."""

    lose: dict[str, int]

    def _maybe_lose(self, operation: str, outcome: Any) -> Any:
        if self.lose.get(operation):
            self.lose[operation] -= 1
            raise StoreError(f"timed out after {operation} ran")
        return outcome

    def connect(self, request: Any) -> Any:
        return self._maybe_lose("connect", super().connect(request))

    def disconnect_many(self, requests: Any) -> Any:
        return self._maybe_lose("disconnect_many", super().disconnect_many(requests))


class Node:
    def __init__(self, server: Any, **settings: Any) -> None:
        self.sockets = RecordingSockets()
        self.analytics = RecordingAnalytics()
        self.store = _ReplyLosingStore(server.client())
        self.store.lose = {}
        self.kit = PresenceKit(
            store=self.store,
            sockets=self.sockets,
            analytics=self.analytics,
            settings=Settings(**{**FAST, **settings}),
        )

    def leaves(self) -> list[Any]:
        return [d["user_id"] for e, d, _to in self.sockets.emitted if e == "teacher_disconnect"]

    def ready_to_sweep(self) -> None:
        """Heartbeat until this node has seen Redis answer for longer than node_timeout."""
        deadline = time.monotonic() + TIMEOUT + 0.2
        while time.monotonic() < deadline:
            self.kit.heartbeat()
            time.sleep(0.05)
        self.kit.heartbeat()


@pytest.fixture
def make_node(redis_server: RedisServer) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(server: Any = redis_server, **settings: Any) -> Node:
        node = Node(server, **settings)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.kit.close(timeout=1)


def state(server: RedisServer, user: int) -> str | None:
    value: str | None = server.client(decode_responses=True).hget(
        f"alive:org_1_user_{user}", "state"
    )
    return value


def test_a_dead_nodes_connections_are_recovered_once(
    make_node: Any, redis_server: RedisServer
) -> None:
    a, b = make_node(), make_node()
    a.kit.heartbeat()
    a.kit.handle_connect("a-t1", T1)
    a.kit.handle_connect("a-t2", T2)
    a.kit.handle_connect("a-p1", P1)
    b.kit.handle_connect("b-t2", T2)  # teacher 2 is also on node b
    b.ready_to_sweep()  # node a stops heartbeating: it "died"
    assert b.kit.sweep_dead_nodes() == 3
    assert b.leaves() == [1]
    assert (state(redis_server, 1), state(redis_server, 2)) == ("disconnect", "connect")
    [event] = b.analytics.events
    assert (event.distinct_id, event.properties["room_id"], event.properties["reason"]) == (
        "9",
        "r-1",
        "node lost",
    )
    assert b.kit.sweep_dead_nodes() == 0
    [alive] = b.kit.nodes()  # the swept node is forgotten: only b's incarnation is left
    assert alive.member == f"{b.kit.node_id}/{b.kit.incarnation}"
    assert b.kit.presence(1, 2).connections[0].sid == "b-t2"
    assert b.kit.stats.recovered == 3


def test_two_racing_sweepers_announce_each_leave_once(make_node: Any) -> None:
    a, b, c = make_node(), make_node(), make_node()
    a.kit.heartbeat()
    for n in range(40):
        a.kit.handle_connect(f"a-{n}", {**T1, "user_id": n})
    threading.Thread(target=b.ready_to_sweep).start()
    c.ready_to_sweep()
    time.sleep(0.1)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda k=k: results.append(k.kit.sweep_dead_nodes()))
        for k in (b, c)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 40
    assert sorted(b.leaves() + c.leaves()) == list(range(40))


def test_a_sweeper_that_dies_midway_is_taken_over(
    make_node: Any, redis_server: RedisServer
) -> None:
    a, b, c = make_node(), make_node(), make_node()
    a.kit.heartbeat()
    a.kit.handle_connect("a-t1", T1)
    b.ready_to_sweep()
    settings = b.kit.settings
    keys = KeySchema(alive_template=settings.alive_key, prefix=settings.key_prefix)
    # b claims node a and then dies before sweeping it.
    assert b.store.claim_node(keys, int(TIMEOUT * 1000), 300) is not None
    c.ready_to_sweep()
    assert c.kit.sweep_dead_nodes() == 1  # the claim expired: c took it over
    assert c.leaves() == [1]
    assert state(redis_server, 1) == "disconnect"


def test_a_stalled_node_is_fenced_and_registers_its_sockets_again(
    make_node: Any, redis_server: RedisServer
) -> None:
    a, b = make_node(), make_node()
    a.kit.heartbeat()
    a.kit.handle_connect("hub", HUB)
    b.kit.handle_connect("b-hub", HUB)
    a.kit.handle_connect("a-t1", T1)
    a.sockets.connected.update({"hub", "a-t1"})  # what its Socket.IO server still holds
    b.ready_to_sweep()  # a is "stalled" meanwhile
    assert b.kit.sweep_dead_nodes() == 2
    assert b.leaves() == [1]
    old = a.kit.incarnation
    assert a.kit.heartbeat() is False  # a wakes up: it learns it was swept
    assert a.kit.incarnation != old
    assert a.kit.stats.fenced == 1
    assert state(redis_server, 1) == "connect"
    [record] = a.kit.connections(1, 1)
    assert (record.sid, record.incarnation) == ("a-t1", a.kit.incarnation)
    # The hubs are told the teacher is back.
    connects = [d for e, d, _ in a.sockets.emitted if e == "teacher_connect"]
    assert connects == [{"user_id": 1}, {"user_id": 1}]
    assert a.kit.heartbeat() is True


def test_records_written_after_a_sweep_move_to_the_new_incarnation(
    make_node: Any, redis_server: RedisServer
) -> None:
    """Node a is cut off and swept while it still serves three teachers. Healed, its
    reconcile writes their records with its old, released incarnation before a
    heartbeat tells it it was fenced (as a replay or a handler call can). Once fenced,
    the records move to its new incarnation and the old index is cleared, so when a
    then dies, its sweep takes every teacher offline: no ghost, no key left behind,
    and each transition announced once."""
    a, b = make_node(), make_node()
    a.kit.heartbeat()
    teachers = {f"a-t{n}": {**T1, "user_id": n} for n in (1, 2, 3)}
    for sid, session in teachers.items():
        a.kit.handle_connect(sid, session)
        a.sockets.connected.add(sid)
    b.ready_to_sweep()  # a is cut off meanwhile
    assert b.kit.sweep_dead_nodes() == 3
    assert a.kit.reconcile() == 3  # healed: recorded again, under the old incarnation
    assert a.kit.heartbeat() is False  # fenced: a new incarnation, the records move
    assert a.kit.stats.fenced == 1
    assert [(r.sid, r.incarnation) for r in a.kit.connections(1, 2)] == [
        ("a-t2", a.kit.incarnation)
    ]
    raw = redis_server.client(decode_responses=True)
    assert [
        n.connections for n in b.kit.nodes() if n.member == a.kit.node_id + "/" + a.kit.incarnation
    ] == [3]
    b.ready_to_sweep()  # a dies (it never beats again)
    assert b.kit.sweep_dead_nodes() == 3
    assert [state(redis_server, n) for n in (1, 2, 3)] == ["disconnect"] * 3
    assert b.kit.online_users(1) == []
    assert list(raw.scan_iter("presence:{presence:node:*")) == []
    assert [
        k for k in raw.scan_iter("*") if raw.ttl(k) == -1 and "{presence:nodes}" not in k
    ] == []
    connects = sorted(d["user_id"] for e, d, _ in a.sockets.emitted if e == "teacher_connect")
    assert connects == [1, 1, 2, 2, 3, 3]  # online, then back online after the sweep
    assert sorted(b.leaves()) == [1, 1, 2, 2, 3, 3]  # "node lost" twice: a died twice


def test_a_fenced_node_hands_its_former_incarnation_to_the_sweepers(
    make_node: Any, redis_server: RedisServer
) -> None:
    """a is swept while it serves teacher 1; back, before it learns it was fenced, a
    connect of teacher 2 runs under its old incarnation but the reply is lost (queued).
    Fenced, a registers the old incarnation as a dead node, and b sweeps it before a
    replays: the replay then writes as a's new incarnation, so nothing of the old one
    stays in Redis, and every version of teacher 2 is announced once."""
    a, b = make_node(include_version=True), make_node(include_version=True)
    a.kit.heartbeat()
    a.kit.handle_connect("a-t1", T1)
    a.sockets.connected.add("a-t1")
    b.ready_to_sweep()
    assert b.kit.sweep_dead_nodes() == 1
    old = f"{a.kit.node_id}/{a.kit.incarnation}"
    a.store.lose["connect"] = 1
    a.kit.handle_connect("a-t2", T2)  # ran under the old incarnation; reply lost
    a.sockets.connected.add("a-t2")
    assert a.kit.heartbeat() is False  # fenced: its re-registrations queue behind a-t2
    assert old in [n.member for n in b.kit.nodes()]  # handed over, as a dead node
    assert b.kit.sweep_dead_nodes() == 1  # a-t2's record, not moved yet: "node lost"
    assert a.kit.replay_outbox() == 3  # a-t2, then both re-registrations
    raw = redis_server.client(decode_responses=True)
    assert list(raw.scan_iter(f"presence:{{presence:node:{old}}}*")) == []
    assert old not in [n.member for n in b.kit.nodes()]
    assert {(r.sid, r.incarnation) for r in a.kit.connections(1, 2)} == {
        ("a-t2", a.kit.incarnation)
    }
    assert (state(redis_server, 1), state(redis_server, 2)) == ("connect", "connect")
    heard = sorted(
        (d["user_id"], d["version"], e)
        for node in (a, b)
        for e, d, _ in node.sockets.emitted
        if e.startswith("teacher") and d["user_id"] == 2
    )
    assert heard == [
        (2, 1, "teacher_connect"),  # the lost reply's, announced by its replay
        (2, 2, "teacher_disconnect"),  # the sweep of the old incarnation
        (2, 3, "teacher_connect"),  # recorded again as the new incarnation's
    ]


def test_a_sweep_whose_reply_was_lost_announces_each_leave_once(
    make_node: Any, redis_server: RedisServer
) -> None:
    """b's sweep of dead node a runs in Redis, but its reply is lost: the leaves are
    not known yet. b's next sweep makes the same removals again (the same attempts),
    learns that its own try made them, and announces each leave once."""
    a, b = make_node(), make_node()
    a.kit.heartbeat()
    a.kit.handle_connect("a-t1", T1)
    a.kit.handle_connect("a-p1", P1)
    b.ready_to_sweep()
    b.store.lose["disconnect_many"] = 1
    with pytest.raises(StoreError):
        b.kit.sweep_dead_nodes()
    assert state(redis_server, 1) == "disconnect"  # it ran
    assert b.leaves() == []
    assert b.kit.sweep_dead_nodes() == 2  # the lost removals, confirmed
    assert b.leaves() == [1]
    assert [e.properties["reason"] for e in b.analytics.events] == ["node lost"]
    assert b.kit.sweep_dead_nodes() == 0
    assert b.leaves() == [1]


def test_a_replayed_connect_swept_meanwhile_announces_its_first_try(
    make_node: Any, redis_server: RedisServer
) -> None:
    """a's connect brings teacher 1 online (version 1), but its reply is lost: queued.
    a is cut off and swept, and b announces the leave (version 2). Back, a's replay
    records the connection again (version 3) and announces its first try's coming
    online too: every version Redis counted is announced once, in any order a hub can
    sort by version."""
    a, b = make_node(include_version=True), make_node(include_version=True)
    a.kit.heartbeat()
    a.store.lose["connect"] = 1
    a.kit.handle_connect("a-t1", T1)
    a.sockets.connected.add("a-t1")
    b.ready_to_sweep()
    assert b.kit.sweep_dead_nodes() == 1
    assert a.kit.replay_outbox() == 1
    assert a.kit.heartbeat() is False  # fenced: registers a-t1 again, nothing to announce
    assert a.kit.reconcile() == 0

    def announced(node: Node) -> list[tuple[str, int]]:
        return [(e, d["version"]) for e, d, _ in node.sockets.emitted if e.startswith("teacher")]

    assert announced(b) == [("teacher_disconnect", 2)]
    assert announced(a) == [("teacher_connect", 1), ("teacher_connect", 3)]
    assert state(redis_server, 1) == "connect"


def test_reconciles_whose_replies_were_lost_announce_once(
    make_node: Any, redis_server: RedisServer
) -> None:
    """A reconcile's removal of a stale record, and its repair of an unrecorded live
    socket, run in Redis but their replies are lost: the removal is confirmed by the
    next reconcile and the repair by the replay, each announced once."""
    a = make_node()
    a.kit.handle_connect("gone", T1)  # its socket is gone: a stale record
    a.store.lose["connect"] = 1
    a.kit.handle_connect("live", T2)  # its reply is lost: queued, and replayed
    assert a.kit.replay_outbox() == 1
    raw = redis_server.client()
    raw.delete("alive:org_1_user_2")  # as if its connect had been forced out of the outbox
    for index in raw.scan_iter("presence:{presence:node:*"):
        raw.hdel(index, "live")
    a.sockets.connected.add("live")
    a.store.lose = {"disconnect_many": 1, "connect": 1}
    with pytest.raises(StoreError):
        a.kit.reconcile()  # the removal ran, its reply is lost
    with pytest.raises(StoreError):
        a.kit.reconcile()  # confirmed; the repair ran, its reply is lost: queued
    assert a.leaves() == [1]
    assert a.kit.pending == 1
    assert a.kit.replay_outbox() == 1
    connects = [d["user_id"] for e, d, _ in a.sockets.emitted if e == "teacher_connect"]
    assert connects == [1, 2, 2]  # the handler calls' and the repair's, once each
    assert a.kit.reconcile() == 0
    assert (state(redis_server, 1), state(redis_server, 2)) == ("disconnect", "connect")


def test_a_node_restarted_under_the_same_id_is_a_new_incarnation(
    make_node: Any, redis_server: RedisServer
) -> None:
    first = make_node(node_id="web-1")
    first.kit.heartbeat()
    first.kit.handle_connect("old-sid", T1)
    restarted, watcher = make_node(node_id="web-1"), make_node()
    restarted.kit.heartbeat()
    restarted.kit.handle_connect("new-sid", T2)
    restarted_ready = threading.Thread(target=restarted.ready_to_sweep)
    restarted_ready.start()
    watcher.ready_to_sweep()
    restarted_ready.join()
    assert watcher.kit.sweep_dead_nodes() == 1  # only the old incarnation's connection
    assert watcher.leaves() == [1]
    assert state(redis_server, 2) == "connect"


def test_graceful_shutdown_hands_connections_over(
    make_node: Any, redis_server: RedisServer
) -> None:
    leaving, staying = make_node(shutdown_grace=1.5), make_node()
    leaving.kit.heartbeat()
    leaving.kit.handle_connect("l-t1", T1)
    leaving.kit.handle_connect("l-t2", T2)
    leaving.kit.close()
    closed_at = time.monotonic()
    staying.kit.handle_connect("s-t2", T2)  # teacher 2 reconnected to the staying node
    staying.ready_to_sweep()
    assert staying.kit.sweep_dead_nodes() == 0  # still within shutdown_grace
    time.sleep(max(0.0, closed_at + 1.6 - time.monotonic()))
    staying.kit.heartbeat()
    assert staying.kit.sweep_dead_nodes() == 2
    assert staying.leaves() == [1]  # teacher 2 never looked offline
    assert state(redis_server, 2) == "connect"


def test_a_redis_pause_sweeps_nobody(make_node: Any, fresh_redis_server: RedisServer) -> None:
    a, b = make_node(fresh_redis_server), make_node(fresh_redis_server)
    a.kit.heartbeat()
    a.kit.handle_connect("a-t1", T1)
    a.sockets.connected.add("a-t1")
    b.ready_to_sweep()
    fresh_redis_server.pause()
    time.sleep(TIMEOUT + 0.3)
    fresh_redis_server.resume()
    # Both run their background as they would; b must not sweep a, whose heartbeats
    # were stopped by the same outage as its own.
    until = time.monotonic() + 2 * TIMEOUT
    while time.monotonic() < until:
        b.kit.run_background_step()
        a.kit.run_background_step()
        time.sleep(0.02)
    assert b.leaves() == []
    assert (a.kit.stats.fenced, b.kit.stats.recovered) == (0, 0)
    assert state(fresh_redis_server, 1) == "connect"


def test_reconcile_leaves_records_without_a_live_socket(
    make_node: Any, redis_server: RedisServer
) -> None:
    a = make_node()
    a.kit.handle_connect("live", T1)
    a.kit.handle_connect("gone", T2)  # the integrator's connect handler failed after this
    a.sockets.connected.update({"live"})
    assert a.kit.reconcile() == 1
    assert a.leaves() == [2]
    assert (state(redis_server, 1), state(redis_server, 2)) == ("connect", "disconnect")
    assert a.kit.reconcile() == 0


async def test_nodes_lists_every_incarnation_with_heartbeat_and_connections(
    redis_server: RedisServer,
) -> None:
    """kit.nodes() (sync and asyncio, one listing for both stores): every registered
    incarnation sharing the Redis, with its Redis-clock heartbeat and connections."""
    sync_kit = PresenceKit(
        store=RedisStore(redis_server.client()),
        sockets=RecordingSockets(),
        settings=Settings(node_id="sync-node"),
    )
    client = redis_server.async_client()
    async_kit = AsyncPresenceKit(
        store=AsyncRedisStore(client),
        sockets=AsyncRecordingSockets(),
        settings=Settings(node_id="async-node"),
    )
    teacher = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
    for n in range(3):
        sync_kit.handle_connect(f"s{n}", teacher)
    await async_kit.handle_connect("a0", teacher)
    assert sync_kit.heartbeat() and await async_kit.heartbeat()
    listed = {n.member.split("/")[0]: n for n in sync_kit.nodes()}
    assert listed.keys() == {"sync-node", "async-node"}
    assert (listed["sync-node"].connections, listed["async-node"].connections) == (3, 1)
    for node in listed.values():
        assert node.last_heartbeat is not None
        assert abs(node.last_heartbeat - time.time()) < 60  # the Redis clock, in seconds
    assert await async_kit.nodes() == sync_kit.nodes()
    sync_kit.close()
    await async_kit.aclose()
    await aclose_client(client)


class FailingOnce(RedisStore):
    """The real store, whose ``fail_at``-th ``disconnect_many`` fails as Redis would."""

    def __init__(self, client: Any, fail_at: int) -> None:
        super().__init__(client)
        self.calls, self.fail_at = 0, fail_at

    def disconnect_many(self, requests: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise StoreError("redis failed during disconnect_many")
        return super().disconnect_many(requests)


def test_a_sweep_that_fails_midway_is_finished_later_each_leave_once(
    make_node: Any, redis_server: RedisServer
) -> None:
    lost = make_node()
    lost.kit.heartbeat()
    for user in range(40):
        lost.kit.handle_connect(f"t{user}", {**T1, "user_id": user})
    sockets = RecordingSockets()
    sweeper = PresenceKit(
        store=FailingOnce(redis_server.client(), fail_at=3),
        sockets=sockets,
        settings=Settings(**{**FAST, "sweep_batch": 5}),
    )
    time.sleep(TIMEOUT + 0.1)
    with pytest.raises(StoreError):
        sweeper.sweep_dead_nodes()
    first = [d["user_id"] for e, d, _to in sockets.emitted if e == "teacher_disconnect"]
    assert 5 <= len(first) < 40
    assert all(state(redis_server, user) == "disconnect" for user in first)
    time.sleep(TIMEOUT + 0.1)  # the sweeper's claim expires
    assert sweeper.sweep_dead_nodes() == 40 - len(first)
    leaves = [d["user_id"] for e, d, _to in sockets.emitted if e == "teacher_disconnect"]
    assert sorted(leaves) == list(range(40))
    sweeper.close()
