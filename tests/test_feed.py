"""The presence feed (Settings(feed=True), presence_kit.feed): what the scripts write,
exactly once on a standalone Redis and at least once on a Redis Cluster, and its
consumer groups. Real redis-server processes, a real local Redis Cluster, and a real
python-socketio server with real clients."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest

from presence_kit import AsyncPresenceKit, PresenceKit, Settings
from presence_kit.feed import AsyncPresenceFeed, FeedEntry, PresenceFeed, feed_shard
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.socketio import AsyncSocketIORooms
from presence_kit.testing import RecordingSockets, RequestBuilder
from tests.support.redis_servers import RedisClusterServers, RedisServer, aclose_client
from tests.support.sio_harness import eventually, running_async_server

TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 100, "lesson_id": 5}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 1,
    "user_id": "p-42",
    "lesson_id": 5,
    "room_id": "r-9",
}
FEED = Settings(
    feed=True, heartbeat_interval=30, node_timeout=60, leave_poll_interval=30,
    reconcile_interval=30,
)  # fmt: skip


def all_entries(feed: PresenceFeed) -> list[FeedEntry]:
    """Everything the group has not read yet, acknowledged."""
    entries: list[FeedEntry] = []
    while batch := feed.read(count=500, block=None):
        feed.ack(batch)
        entries += batch
    return entries


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    redis_server.flush()
    return redis_server


def test_entries_carry_every_field_with_the_ids_types(redis: RedisServer) -> None:
    kit = PresenceKit(store=RedisStore(redis.client()), sockets=RecordingSockets(), settings=FEED)
    feed = PresenceFeed(redis.client(), settings=FEED, group="g", consumer="c")
    try:
        before = time.time()
        kit.handle_connect("p1", PARTICIPANT)
        kit.handle_update("p1", {**PARTICIPANT, "lesson_id": "L-6", "room_id": 3})
        kit.handle_disconnect("p1", PARTICIPANT, reason="ping timeout")
        join, update, leave = all_entries(feed)
        assert (join.kind, update.kind, leave.kind) == ("join", "update", "leave")
        assert (join.org_id, join.user_id, join.lesson_id, join.room_id) == (1, "p-42", 5, "r-9")
        assert (update.lesson_id, update.room_id, update.version) == ("L-6", 3, None)
        assert (leave.lesson_id, leave.room_id, leave.reason) == ("L-6", 3, "ping timeout")
        assert join.role == "ParticipantWeb" and join.sid == "p1" and join.reason is None
        assert join.node == kit.node_id
        assert before - 1 < join.observed_at.timestamp() <= join.at.timestamp() < time.time() + 1
    finally:
        kit.close()


def test_a_retried_or_repeated_call_adds_nothing_twice(redis: RedisServer) -> None:
    store = RedisStore(redis.client())
    requests = RequestBuilder(settings=FEED)
    connect = requests.connect("a1", TEACHER)
    store.connect(connect)
    store.connect(connect)  # a retry whose first try ran
    update = requests.update("a1", {**TEACHER, "lesson_id": 6})
    store.update(update)
    store.update(update)
    disconnect = requests.disconnect("a1", TEACHER, "transport close")
    store.disconnect(disconnect)
    store.disconnect(disconnect)
    store.disconnect(requests.disconnect("a1", TEACHER, "client disconnect"))  # a duplicate
    feed = PresenceFeed(redis.client(), settings=FEED, group="g", consumer="c")
    kinds = [(e.kind, e.version) for e in all_entries(feed)]
    assert kinds == [("join", None), ("online", 1), ("update", 2), ("leave", None), ("offline", 3)]
    store.close()


async def test_the_feed_holds_exactly_what_the_hub_heard(redis: RedisServer) -> None:
    """A teacher on two tabs, a participant, a reconnect within the leave grace: the
    feed holds the transitions the hub heard, in version order, and one join and one
    leave per connection."""
    settings = Settings(
        feed=True, include_version=True, leave_grace=0.3, heartbeat_interval=30,
        node_timeout=60, leave_poll_interval=0.05, reconcile_interval=30,
    )  # fmt: skip
    client = redis.async_client()
    holder: dict[str, Any] = {}

    def setup(sio: Any) -> None:
        kit = holder["kit"] = AsyncPresenceKit(  # (a generous deadline: loaded CI machines)
            store=AsyncRedisStore(client, timeout=5),
            sockets=AsyncSocketIORooms(sio),
            settings=settings,
        )

        async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            await sio.save_session(sid, auth)
            await kit.handle_connect(sid, auth)

        async def disconnect(sid: str, reason: str) -> None:
            await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)

        sio.on("connect", connect)
        sio.on("disconnect", disconnect)

    try:
        async with running_async_server(setup) as srv:
            hub = await srv.connect_client(HUB)
            tab1 = await srv.connect_client(TEACHER)
            tab2 = await srv.connect_client(TEACHER)
            pupil = await srv.connect_client(PARTICIPANT)
            sids = {tab1.sid, tab2.sid, pupil.sid, hub.sid}
            await tab1.disconnect()
            await tab2.disconnect()  # the last tab: held back by the grace ...
            tab3 = await srv.connect_client(TEACHER)  # ... and cancelled by a reconnect
            sids.add(tab3.sid)
            await pupil.disconnect()
            await tab3.disconnect()
            await hub.wait_for("teacher_disconnect", timeout=20)
            await srv.barrier(hub)
            heard = [
                (name.removeprefix("teacher_"), data["version"])
                for name in ("teacher_connect", "teacher_disconnect")
                for (data,) in hub.received(name)
            ]
            await hub.disconnect()
            # (>= 5: python-socketio may call a disconnect handler twice for one sid;
            # the second call is a repeat that writes nothing)
            await eventually(lambda: holder["kit"].stats.disconnects >= 5, timeout=20)
            await holder["kit"].aclose()
        feed = AsyncPresenceFeed(client, settings=settings, group="g", consumer="c")
        entries = await feed.read(count=100, block=None)
        transitions = [(e.kind, e.version) for e in entries if e.kind in ("online", "offline")]
        assert sorted(transitions, key=lambda t: t[1]) == transitions  # version order
        assert sorted(heard, key=lambda t: t[1]) == [
            ("connect" if kind == "online" else "disconnect", v) for kind, v in transitions
        ]
        assert [kind for kind, _ in transitions] == ["online", "offline"]
        for kind in ("join", "leave"):
            assert sorted(e.sid for e in entries if e.kind == kind) == sorted(sids), kind
        assert await feed.ack(entries) == len(entries)
        assert await feed.lag() == 0
    finally:
        await aclose_client(client)


_KILLED_NODE = """
import os, signal, sys
import redis
from redis.cluster import ClusterNode, RedisCluster
from presence_kit import PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets

kind, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
if kind == "cluster":
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports])
else:
    client = redis.Redis(port=ports[0])
settings = Settings(feed=True, heartbeat_interval=0.1, node_timeout=0.3, reconcile_interval=30)
kit = PresenceKit(store=RedisStore(client), sockets=RecordingSockets(), settings=settings)
kit.heartbeat()
kit.handle_connect("d1", {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5})
kit.handle_connect("d2", {"role": "ParticipantWeb", "org_id": 1, "user_id": "p-42",
                          "lesson_id": 5, "room_id": "r-9"})
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_a_sweep_of_a_killed_node_writes_its_leaves(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """A node SIGKILLed with two connections: the sweep's leaves are in the feed
    exactly once on a standalone Redis; on a cluster at least once, with equal
    ``(user, version)``."""
    if kind == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        ports, client = [str(server.port)], server.client
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        ports = [str(node.port) for node in cluster.startup_nodes]
        client = cluster.client
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_NODE, kind, *ports], capture_output=True, timeout=60
    )
    assert done.returncode == -9, done.stderr.decode()
    settings = Settings(feed=True, heartbeat_interval=0.1, node_timeout=0.3, reconcile_interval=30)
    sweeper = PresenceKit(
        store=RedisStore(client()), sockets=RecordingSockets(), settings=settings
    )
    try:
        time.sleep(0.4)
        assert sweeper.sweep_dead_nodes() == 2
        assert sweeper.sweep_dead_nodes() == 0
        feed = PresenceFeed(client(), settings=settings, group="g", consumer="c")
        entries = all_entries(feed)
        leaves = [(e.sid, e.kind, e.reason) for e in entries if e.kind in ("leave", "offline")]
        expected = [
            ("d1", "leave", "node lost"),
            ("d1", "offline", "node lost"),
            ("d2", "leave", "node lost"),
        ]
        if kind == "standalone":
            assert sorted(leaves) == expected
        else:
            assert sorted(set(leaves)) == expected
        offline = {(e.user_id, e.version) for e in entries if e.kind == "offline"}
        assert offline == {(7, 2)}
    finally:
        sweeper.close()


def test_a_paused_redis_replays_each_entry_once(fresh_redis_server: RedisServer) -> None:
    store = RedisStore(fresh_redis_server.client(), timeout=0.1)
    kit = PresenceKit(store=store, sockets=RecordingSockets(), settings=FEED)
    try:
        kit.handle_connect("a1", TEACHER)
        fresh_redis_server.pause()
        try:
            kit.handle_update("a1", {**TEACHER, "lesson_id": 6})
            kit.handle_disconnect("a1", TEACHER)
            assert kit.pending == 2
        finally:
            fresh_redis_server.resume()
        assert kit.replay_outbox() == 2
        feed = PresenceFeed(fresh_redis_server.client(), settings=FEED, group="g", consumer="c")
        entries = all_entries(feed)
        assert [e.kind for e in entries] == ["join", "online", "update", "leave", "offline"]
        update = entries[2]
        assert update.observed_at < update.at  # seen at the call, written at the replay
    finally:
        kit.close()


def test_a_consumer_killed_before_its_ack_leaves_the_entries_to_another(
    redis: RedisServer,
) -> None:
    kit = PresenceKit(store=RedisStore(redis.client()), sockets=RecordingSockets(), settings=FEED)
    try:
        kit.handle_connect("a1", TEACHER)
        first = PresenceFeed(
            redis.client(), settings=FEED, group="g", consumer="w1", claim_idle=0.2
        )
        taken = first.read(count=10, block=None)
        assert [e.kind for e in taken] == ["join", "online"]
        del first  # killed: never acknowledged
        other = PresenceFeed(
            redis.client(), settings=FEED, group="g", consumer="w2", claim_idle=0.2
        )
        assert other.read(count=10, block=None) == []  # not idle long enough yet
        time.sleep(0.3)
        claimed = other.read(count=10, block=None)
        assert [e.id for e in claimed] == [e.id for e in taken]
        assert other.ack(claimed) == 2
        assert other.lag() == 0
        assert other.read(count=10, block=None) == []
    finally:
        kit.close()


def test_a_group_behind_the_retention_is_told_it_missed_entries(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Trimming is approximate (whole stream nodes): small nodes let a test see it.
    fresh_redis_server.client().config_set("stream-node-max-entries", 2)
    settings = Settings(
        feed=True, feed_retention=1, heartbeat_interval=30, node_timeout=60, reconcile_interval=30
    )
    kit = PresenceKit(
        store=RedisStore(fresh_redis_server.client()),
        sockets=RecordingSockets(),
        settings=settings,
    )
    feed = PresenceFeed(fresh_redis_server.client(), settings=settings, group="g", consumer="c")
    try:
        assert feed.read(block=None) == []  # the group exists, at the start
        for n in range(6):
            kit.handle_connect(f"p{n}", {**PARTICIPANT, "user_id": n})
        time.sleep(1.2)
        kit.handle_connect("late", PARTICIPANT)  # its write trims the old entries
        with caplog.at_level(logging.WARNING, logger="presence_kit.feed"):
            entries = all_entries(feed)
        assert [e.sid for e in entries][-1] == "late"
        assert "p0" not in {e.sid for e in entries}
        assert feed.missed >= 1
        assert any("missed" in r.getMessage() for r in caplog.records)
        reported = feed.missed
        assert feed.read(block=None) == [] and feed.missed == reported  # counted once
    finally:
        kit.close()


def test_a_malformed_entry_is_reported_and_skipped(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    kit = PresenceKit(store=RedisStore(redis.client()), sockets=RecordingSockets(), settings=FEED)
    try:
        stream = PresenceFeed(redis.client(), settings=FEED, group="g", consumer="c").streams[0]
        bogus = redis.client().xadd(stream, {"schema": "1", "kind": "join", "org_id": "x"})
        kit.handle_connect("a1", TEACHER)
        feed = PresenceFeed(redis.client(), settings=FEED, group="g", consumer="c")
        with caplog.at_level(logging.WARNING, logger="presence_kit.feed"):
            entries = all_entries(feed)
        assert [e.kind for e in entries] == ["join", "online"]
        assert any(bogus.decode() in r.getMessage() for r in caplog.records)
        assert feed.lag() == 0
    finally:
        kit.close()


def test_a_group_following_one_org_reads_its_shard_only(redis: RedisServer) -> None:
    settings = Settings(
        feed=True, feed_shards=4, heartbeat_interval=30, node_timeout=60, reconcile_interval=30
    )
    kit = PresenceKit(
        store=RedisStore(redis.client()), sockets=RecordingSockets(), settings=settings
    )
    try:
        orgs = [1, 2, 3, 4, 5, 6, 7, 8]
        for org in orgs:
            kit.handle_connect(f"t{org}", {**TEACHER, "org_id": org})
        assert len({feed_shard(org, 4) for org in orgs}) > 1
        one = PresenceFeed(
            redis.client(), settings=settings, group="org-3", consumer="c", org_id=3
        )
        assert {e.org_id for e in all_entries(one)} == {3}
        every = PresenceFeed(redis.client(), settings=settings, group="all", consumer="c")
        assert {e.org_id for e in all_entries(every)} == set(orgs)
    finally:
        kit.close()


def test_bad_consumer_arguments_are_refused(redis: RedisServer) -> None:
    from presence_kit import InvalidInputError

    for kwargs in ({"group": ""}, {"consumer": 5}, {"claim_idle": -1}):
        with pytest.raises(InvalidInputError):
            PresenceFeed(redis.client(), **{"group": "g", "consumer": "c", **kwargs})
    with pytest.raises(InvalidInputError):
        PresenceFeed(redis.client(), group="g", consumer="c").read(count=0)
    assert list(redis.client().scan_iter()) == []


# --- a Redis Cluster: at least once, whatever dies when ----------------------------------

_DYING_NODE = """
import os, sys
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from presence_kit import PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets

ports = [int(p) for p in sys.argv[1:]]
_queue = ClusterPipeline.execute_command

def execute_command(self, *args, **kwargs):
    if args[0] == "ZSCORE":  # the user's script ran; its entries are not moved yet
        os._exit(9)
    return _queue(self, *args, **kwargs)

ClusterPipeline.execute_command = execute_command

client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports])
settings = Settings(feed=True, heartbeat_interval=30, node_timeout=60, reconcile_interval=30)
kit = PresenceKit(store=RedisStore(client, timeout=None), sockets=RecordingSockets(),
                  settings=settings)
kit.handle_connect("c-1", {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5})
sys.exit(3)
"""


def test_on_a_cluster_a_kit_killed_before_the_move_loses_nothing(
    redis_cluster: RedisClusterServers,
) -> None:
    redis_cluster.flush()
    settings = Settings(feed=True, heartbeat_interval=0.1, node_timeout=0.3, reconcile_interval=30)
    kit = PresenceKit(
        store=RedisStore(redis_cluster.client()), sockets=RecordingSockets(), settings=settings
    )
    feed = PresenceFeed(redis_cluster.client(), settings=settings, group="g", consumer="c")
    try:
        kit.handle_connect("a-1", {**TEACHER, "user_id": 8})  # a kit that lives: moved at once
        assert [e.kind for e in all_entries(feed)] == ["join", "online"]
        ports = [str(node.port) for node in redis_cluster.startup_nodes]
        done = subprocess.run(
            [sys.executable, "-c", _DYING_NODE, *ports], capture_output=True, timeout=60
        )
        assert done.returncode == 9, done.stderr.decode()
        assert all_entries(feed) == []  # queued in the user's slot, not in the stream yet
        assert kit.move_stale_feeds() == 0  # not stale yet: its kit may still move them
        time.sleep(0.4)
        assert kit.move_stale_feeds() == 2
        entries = all_entries(feed)
        assert [(e.kind, e.sid, e.version) for e in entries] == [
            ("join", "c-1", None),
            ("online", "c-1", 1),
        ]
        assert kit.move_stale_feeds() == 0
    finally:
        kit.close()


async def test_on_a_cluster_the_asyncio_consumer_reads_every_shard(
    redis_cluster: RedisClusterServers,
) -> None:
    redis_cluster.flush()
    settings = Settings(
        feed=True, feed_shards=3, heartbeat_interval=30, node_timeout=60, reconcile_interval=30
    )
    client = redis_cluster.async_client()
    await client.initialize()  # the topology, before the first call's deadline
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client), sockets=RecordingSockets(), settings=settings
    )
    try:
        for org in range(6):
            await kit.handle_connect(f"t{org}", {**TEACHER, "org_id": org})
            await kit.handle_disconnect(f"t{org}", {**TEACHER, "org_id": org})
        feed = AsyncPresenceFeed(client, settings=settings, group="g", consumer="c")
        entries: list[FeedEntry] = []
        while batch := await feed.read(count=7, block=0.05):
            entries += batch
            await feed.ack(batch)
        assert len(entries) == 6 * 4
        for org in range(6):
            mine = [e.kind for e in entries if e.org_id == org]
            assert mine == ["join", "online", "leave", "offline"]
        assert await feed.lag() == 0
    finally:
        await kit.aclose()
        await aclose_client(client)


def test_a_new_group_on_an_untrimmed_stream_missed_nothing(redis: RedisServer) -> None:
    kit = PresenceKit(store=RedisStore(redis.client()), sockets=RecordingSockets(), settings=FEED)
    try:
        kit.handle_connect("a1", TEACHER)
        feed = PresenceFeed(redis.client(), settings=FEED, group="late", consumer="c")
        assert [e.kind for e in all_entries(feed)] == ["join", "online"]
        assert feed.missed == 0
    finally:
        kit.close()
