"""Faults end to end: Mixpanel outages seen from the kit, secrets kept out of logs, many
kits in threads (or tasks) hammering the same users, and a redis-server killed
mid-storm."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import mixpanel
import pytest

from presence_kit import AsyncPresenceKit, PresenceKit
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingAnalytics, RecordingSockets
from tests.support.mixpanel_endpoint import MixpanelEndpoint
from tests.support.redis_servers import RedisServer, aclose_client

TOKEN = "mp-token-DO-NOT-LOG-123"


def participant(n: int) -> dict[str, Any]:
    return {"role": "ParticipantWeb", "org_id": 1, "user_id": n, "lesson_id": 5, "room_id": 3}


def teacher(n: int) -> dict[str, Any]:
    return {"role": "TeacherAPP", "org_id": 1, "user_id": n, "lesson_id": 5}


def test_a_mixpanel_outage_loses_and_duplicates_nothing(
    redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    """300 participants leave while Mixpanel answers 500: the handlers are not slowed,
    and once it recovers every event arrives once, under its own $insert_id."""
    client = mixpanel.Mixpanel(TOKEN, consumer=mixpanel.Consumer(events_url=mixpanel_endpoint.url))
    analytics = MixpanelAnalytics(
        client, flush_interval=0.05, backoff=0.05, max_backoff=0.2, max_retries=50
    )
    kit = PresenceKit(
        store=RedisStore(redis_server.client()), sockets=RecordingSockets(), analytics=analytics
    )
    for n in range(300):
        kit.handle_connect(f"p{n}", participant(n))
    mixpanel_endpoint.set_mode("error500")
    started = time.monotonic()
    for n in range(300):
        kit.handle_disconnect(f"p{n}", participant(n))
    handlers = time.monotonic() - started
    time.sleep(0.5)
    mixpanel_endpoint.set_mode("ok")
    events = mixpanel_endpoint.wait_for(300, timeout=15)
    kit.close(timeout=5)
    ids = [e["properties"]["$insert_id"] for e in events]
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert sorted(e["properties"]["distinct_id"] for e in events) == sorted(
        str(n) for n in range(300)
    )
    assert analytics.stats.dropped == 0
    assert analytics.stats.retried > 0
    assert handlers < 5  # 300 handlers; one blocking Mixpanel call each would take far longer


def test_logs_carry_no_secret_and_user_ids_only_at_debug(
    fresh_redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    mixpanel_endpoint: MixpanelEndpoint,
) -> None:
    """Redis down, Mixpanel failing: what the library logs at any level never holds the
    Mixpanel token or the Redis password, and user ids appear only at DEBUG."""
    fresh_redis_server.admin("CONFIG", "SET", "requirepass", "redis-PASSWORD-secret")
    url = f"redis://:redis-PASSWORD-secret@127.0.0.1:{fresh_redis_server.port}/0"
    import redis as redis_py

    mixpanel_endpoint.set_mode("reject400")
    client = mixpanel.Mixpanel(TOKEN, consumer=mixpanel.Consumer(events_url=mixpanel_endpoint.url))
    analytics = MixpanelAnalytics(client, flush_interval=0.05)
    kit = PresenceKit(
        store=RedisStore(redis_py.Redis.from_url(url), timeout=0.1),
        sockets=RecordingSockets(),
        analytics=analytics,
    )
    user_id = 987654321
    with caplog.at_level(logging.DEBUG, logger="presence_kit"):
        kit.handle_connect("p1", participant(user_id))
        kit.handle_disconnect("p1", participant(user_id))
        mixpanel_endpoint.wait_for_requests(1)
        time.sleep(0.2)
        fresh_redis_server.pause()
        try:
            kit.handle_connect("p2", participant(user_id))
            kit.handle_disconnect("p2", participant(user_id))
        finally:
            fresh_redis_server.resume()
        kit.close(timeout=2)
    assert caplog.records, "the failures were logged"
    for record in caplog.records:
        text = record.getMessage() + str(record.__dict__) + (caplog.text or "")
        assert TOKEN not in text
        assert "redis-PASSWORD-secret" not in text
        if record.levelno > logging.DEBUG:
            assert str(user_id) not in record.getMessage() + str(record.__dict__)


def assert_every_teacher_left_once_per_join(
    kits: Sequence[Any], sockets: Sequence[Any], redis_server: RedisServer, *, users: int
) -> None:
    """After random interleavings that end with every connection closed: per user, as
    many leaves as joins were announced, no record is left, and the version counts the
    transitions (equal joins and leaves: an even version)."""
    joins: Counter[int] = Counter()
    leaves: Counter[int] = Counter()
    for recorded in sockets:
        for event, data, _to in recorded.emitted:
            (joins if event == "teacher_connect" else leaves)[data["user_id"]] += 1
    assert joins == leaves
    assert sum(joins.values()) >= users
    raw = redis_server.client(decode_responses=True)
    for user in range(users):
        alive = raw.hgetall(f"alive:org_1_user_{user}")
        assert alive.get("state") in ("disconnect", None)
        assert "n" not in alive and not any(field.startswith("c:") for field in alive)
        assert int(alive.get("version", 0)) == joins[user] + leaves[user]
    assert sum(k.stats.store_failures for k in kits) == 0


def test_many_kits_in_threads_on_the_same_users(redis_server: RedisServer) -> None:
    """Four kits (nodes), eight threads, twelve teachers: random interleavings of
    connects, disconnects and reconnects. Per user, announcements alternate (never two
    joins or two leaves in a row overall), every user ends offline with no record,
    and the counts of joins and leaves match."""
    sockets = [RecordingSockets() for _ in range(4)]
    kits = [PresenceKit(store=RedisStore(redis_server.client()), sockets=s) for s in sockets]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        live: list[tuple[PresenceKit, str, int]] = []
        try:
            for step in range(150):
                if live and rng.random() < 0.5:
                    kit, sid, user = live.pop(rng.randrange(len(live)))
                    kit.handle_disconnect(sid, teacher(user))
                else:
                    user, kit = rng.randrange(12), rng.choice(kits)
                    sid = f"w{seed}-{step}"
                    kit.handle_connect(sid, teacher(user))
                    live.append((kit, sid, user))
            for kit, sid, user in live:
                kit.handle_disconnect(sid, teacher(user))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_every_teacher_left_once_per_join(kits, sockets, redis_server, users=12)


async def test_many_tasks_on_async_kits_batch_the_same_users_correctly(
    redis_server: RedisServer,
) -> None:
    """The asyncio counterpart: four kits on one event loop, forty tasks, twelve
    teachers. Calls made while another is in flight are batched, so one batch often
    holds a connect and a disconnect of the same user, or of the same sid: they must
    run in order. The same invariants as with threads."""
    clients = [redis_server.async_client() for _ in range(4)]
    sockets = [AsyncRecordingSockets() for _ in clients]
    kits = [
        AsyncPresenceKit(store=AsyncRedisStore(client), sockets=s)
        for client, s in zip(clients, sockets, strict=True)
    ]

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        live: list[tuple[AsyncPresenceKit, str, int]] = []
        for step in range(60):
            if live and rng.random() < 0.5:
                kit, sid, user = live.pop(rng.randrange(len(live)))
                await kit.handle_disconnect(sid, teacher(user))
            else:
                user, kit = rng.randrange(12), rng.choice(kits)
                sid = f"a{seed}-{step}"
                await kit.handle_connect(sid, teacher(user))
                live.append((kit, sid, user))
        for kit, sid, user in live:
            await kit.handle_disconnect(sid, teacher(user))

    admin = redis_server.client()
    admin.config_resetstat()
    await asyncio.gather(*(worker(seed) for seed in range(40)))
    calls = sum(k.stats.connects + k.stats.disconnects for k in kits)
    assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] < calls  # some batched
    assert_every_teacher_left_once_per_join(kits, sockets, redis_server, users=12)
    for kit in kits:
        await kit.aclose()
    for client in clients:
        await aclose_client(client)


def test_redis_killed_mid_storm_converges_after_restart(tmp_path: Any) -> None:
    """A redis-server with an fsynced AOF is SIGKILLed in the middle of a storm of
    connects and disconnects from three kits, and restarted: after the outboxes
    replay, Redis matches the truth (everyone who left is offline, everyone still
    connected is online) and every leave is announced once."""
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    try:
        sockets = [RecordingSockets() for _ in range(3)]
        kits = [
            PresenceKit(
                store=RedisStore(server.client(), timeout=0.1),
                sockets=s,
                analytics=RecordingAnalytics(),
            )
            for s in sockets
        ]
        online: dict[int, tuple[PresenceKit, str]] = {}
        for n in range(300):
            kit = kits[n % 3]
            kit.handle_connect(f"s{n}", teacher(n))
            online[n] = (kit, f"s{n}")
        killer = threading.Timer(0.05, server.kill)
        killer.start()
        gone = []
        for n in range(300):
            if n % 3 == 0:
                continue  # these stay connected
            kit, sid = online.pop(n)
            kit.handle_disconnect(sid, teacher(n))
            gone.append(n)
            time.sleep(0.0005)
        killer.join()
        server.restart()
        for kit in kits:
            kit.replay_outbox()
        raw = server.client(decode_responses=True)
        for n in gone:
            assert raw.hget(f"alive:org_1_user_{n}", "state") == "disconnect", n
        for n in online:
            assert raw.hget(f"alive:org_1_user_{n}", "state") == "connect", n
        leaves: Counter[int] = Counter()
        for recorded in sockets:
            for event, data, _to in recorded.emitted:
                if event == "teacher_disconnect":
                    leaves[data["user_id"]] += 1
        assert leaves == Counter(gone)
        assert sum(k.stats.store_failures for k in kits) > 0  # the kill did hit the storm
        for kit in kits:
            kit.close()
    finally:
        server.close()


@pytest.mark.cluster
def test_a_cluster_master_failover_converges(redis_cluster_with_replicas: Any) -> None:
    """A master of the local Redis Cluster is killed and its replica promoted (whose
    script cache is empty: NOSCRIPT): calls that fail meanwhile are replayed, the
    scripts are loaded again, and every leave is announced once."""
    cluster = redis_cluster_with_replicas
    sockets = RecordingSockets()
    kit = PresenceKit(store=RedisStore(cluster.client(), timeout=0.5), sockets=sockets)
    users = range(60)
    for n in users:
        kit.handle_connect(f"s{n}", teacher(n))
    master = cluster.master_for_key("alive:org_1_user_0")
    cluster.kill_master_and_wait_failover(master, timeout=20)
    for n in users:
        kit.handle_disconnect(f"s{n}", teacher(n))
    deadline = time.monotonic() + 10
    while kit.pending and time.monotonic() < deadline:
        try:
            kit.replay_outbox()
        except Exception:
            time.sleep(0.2)  # the client is still learning the new topology
    assert kit.pending == 0
    leaves = Counter(d["user_id"] for e, d, _to in sockets.emitted if e == "teacher_disconnect")
    assert leaves == Counter(users)
    raw = cluster.client(decode_responses=True)
    assert {raw.hget(f"alive:org_1_user_{n}", "state") for n in users} == {"disconnect"}
    kit.close()


def _process_worker(redis_url: str, seed: int) -> list[tuple[str, Any]]:
    """One server process: its own kit, random connects and disconnects of shared users."""
    import redis as redis_py

    sockets = RecordingSockets()
    kit = PresenceKit(store=RedisStore(redis_py.Redis.from_url(redis_url)), sockets=sockets)
    rng = random.Random(seed)
    live: list[tuple[str, int]] = []
    for step in range(200):
        if live and rng.random() < 0.5:
            sid, user = live.pop(rng.randrange(len(live)))
            kit.handle_disconnect(sid, teacher(user))
        else:
            user, sid = rng.randrange(6), f"proc{seed}-{step}"
            kit.handle_connect(sid, teacher(user))
            live.append((sid, user))
    for sid, user in live:
        kit.handle_disconnect(sid, teacher(user))
    assert kit.stats.store_failures == 0
    kit.close()
    return [(event, data["user_id"]) for event, data, _to in sockets.emitted]


def test_many_kits_in_processes_on_the_same_users(redis_server: RedisServer) -> None:
    """Three processes, each a node, on six shared teachers: joins and leaves match per
    user, and every alive key ends offline."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_process_worker, [(redis_server.url, seed) for seed in range(3)])
    joins: Counter[Any] = Counter()
    leaves: Counter[Any] = Counter()
    for emitted in results:
        for event, user in emitted:
            (joins if event == "teacher_connect" else leaves)[user] += 1
    assert joins == leaves
    assert sum(joins.values()) >= 6
    raw = redis_server.client(decode_responses=True)
    for user in range(6):
        fields = raw.hgetall(f"alive:org_1_user_{user}")
        assert fields["state"] == "disconnect"
        assert int(fields["version"]) == joins[user] + leaves[user]
        assert "n" not in fields
