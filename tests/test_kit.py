"""The facades over the in-memory store and the recording fakes (no servers).

The same flows run against real Redis, python-socketio and Mixpanel in
``test_integration_*.py``; here we pin the facade's own rules: validation before any
I/O, failures that never escape ``handle_disconnect``, custom roles, closing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from presence_kit import (
    AsyncPresenceKit,
    ClientRole,
    ConnectFacts,
    DisconnectFacts,
    Effect,
    Emit,
    InvalidSessionError,
    JoinRoom,
    PresenceError,
    PresenceKit,
    Settings,
    StoreError,
    TeacherAppPolicy,
)
from presence_kit.memory import MemoryStore
from presence_kit.testing import AsyncRecordingSockets, RecordingAnalytics, RecordingSockets

TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
HUB = {"role": ClientRole.TEACHER_HUB, "org_id": 1, "user_id": 8, "lesson_id": 3}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 1,
    "user_id": 9,
    "lesson_id": 3,
    "room_id": "r-1",
}


class FailingStore:
    """A store whose backend is down."""

    blocking = False

    def __init__(self) -> None:
        self.calls = 0

    def connect(self, request: Any) -> Any:
        self.calls += 1
        raise StoreError("redis is down")

    def disconnect(self, request: Any) -> Any:
        self.calls += 1
        raise StoreError("redis is down")

    def due_leaves(self, queue_key: str, limit: int) -> Any:
        raise StoreError("redis is down")

    def finish_leave(self, request: Any) -> Any:
        raise StoreError("redis is down")

    def presence(self, alive_key: str, connections_key: str, state_field: str) -> Any:
        raise StoreError("redis is down")

    def org_connections(self, query: Any) -> Any:
        raise StoreError("redis is down")

    def close(self) -> None:
        pass


class BrokenSockets(RecordingSockets):
    """Emits fail; rooms work."""

    def emit(self, event: str, data: Any, *, to: str) -> None:
        raise RuntimeError("emit failed")


@pytest.fixture
def parts() -> tuple[PresenceKit, MemoryStore, RecordingSockets, RecordingAnalytics]:
    store, sockets, analytics = MemoryStore(), RecordingSockets(), RecordingAnalytics()
    return (
        PresenceKit(sockets=sockets, store=store, analytics=analytics),
        store,
        sockets,
        analytics,
    )


def test_spec_flows_through_the_sync_facade(parts: Any) -> None:
    kit, store, sockets, analytics = parts
    kit.handle_connect("hub", HUB)
    kit.handle_connect("t1", TEACHER)
    kit.handle_connect("p1", PARTICIPANT)
    assert sockets.rooms_of("hub") == {"org:1", "lesson:3"}
    assert sockets.rooms_of("t1") == {"lesson:3"}
    assert store.hgetall("alive:org_1_user_7")["state"] == "connect"

    kit.handle_disconnect("t1", TEACHER, reason="transport close")
    kit.handle_disconnect("p1", {**PARTICIPANT, "room_id": "ignored"}, reason="ping timeout")
    kit.handle_disconnect("hub", HUB)
    assert sockets.emitted == [
        ("presence_state", {"user_ids": []}, "hub"),
        ("teacher_connect", {"user_id": 7}, "org:1"),
        ("teacher_disconnect", {"user_id": 7}, "org:1"),
    ]
    assert store.hgetall("alive:org_1_user_7")["state"] == "disconnect"
    assert store.ttl("alive:org_1_user_7") == 3600
    [event] = analytics.events
    assert (event.event, event.distinct_id) == ("disconnect", "9")
    assert event.properties == {
        "room_id": "r-1",
        "lesson_id": 3,
        "org_id": 1,
        "reason": "ping timeout",
    }
    # The spec leaves only the lesson room; python-socketio drops the rest itself.
    assert sockets.rooms == {"org:1": {"hub"}}
    assert kit.stats.announced_offline == 1


def test_duplicate_disconnect_announces_nothing_twice(parts: Any) -> None:
    kit, _store, sockets, analytics = parts
    kit.handle_connect("t1", TEACHER)
    kit.handle_connect("p1", PARTICIPANT)
    for _ in range(2):
        kit.handle_disconnect("t1", TEACHER)
        kit.handle_disconnect("p1", PARTICIPANT)
    assert [e[0] for e in sockets.emitted].count("teacher_disconnect") == 1
    assert len(analytics.events) == 1


def test_never_connected_sid_announces_nothing(parts: Any) -> None:
    kit, store, sockets, analytics = parts
    kit.handle_disconnect("ghost", TEACHER)
    kit.handle_disconnect("ghost2", PARTICIPANT)
    assert sockets.emitted == []
    assert analytics.events == []
    assert store.keys() == []


BAD_SESSIONS = [
    ({"org_id": 1, "user_id": 2, "lesson_id": 3}, "role"),
    ({**TEACHER, "role": "Janitor"}, "role"),
    ({**TEACHER, "user_id": None}, "user_id"),
    ({**TEACHER, "user_id": True}, "user_id"),
    ({**TEACHER, "org_id": 1.0}, "org_id"),
    ({**TEACHER, "lesson_id": [3]}, "lesson_id"),
    ({**TEACHER, "user_id": "1_user_2"}, "user_id"),
    ({**TEACHER, "org_id": "*"}, "org_id"),
    ({**TEACHER, "user_id": "{x}"}, "user_id"),
    ({**TEACHER, "user_id": "a\nb"}, "user_id"),
    ({**TEACHER, "user_id": "x" * 129}, "user_id"),
    ({k: v for k, v in PARTICIPANT.items() if k != "room_id"}, "room_id"),
    ({**PARTICIPANT, "room_id": {"a": 1}}, "room_id"),
]


@pytest.mark.parametrize(("session", "field"), BAD_SESSIONS)
def test_bad_connect_raises_before_anything_is_written_or_joined(
    parts: Any, session: dict[str, Any], field: str
) -> None:
    kit, store, sockets, _analytics = parts
    with pytest.raises(InvalidSessionError) as info:
        kit.handle_connect("sid-1", session)
    assert info.value.field == field
    assert store.keys() == []
    assert sockets.rooms == {}
    assert sockets.emitted == []


@pytest.mark.parametrize(("session", "field"), [b for b in BAD_SESSIONS if b[1] != "room_id"])
def test_bad_disconnect_raises_before_anything_is_written(
    parts: Any, session: dict[str, Any], field: str
) -> None:
    kit, store, sockets, _ = parts
    kit.handle_connect("sid-1", TEACHER)
    keys, rooms = store.keys(), dict(sockets.rooms)
    with pytest.raises(InvalidSessionError) as info:
        kit.handle_disconnect("sid-1", session)
    assert info.value.field == field
    assert store.keys() == keys
    assert store.hgetall("alive:org_1_user_7")["state"] == "connect"
    assert sockets.rooms == rooms


@pytest.mark.parametrize(
    ("sid", "reason", "field"), [("bad sid", None, "sid"), (5, None, "sid"), ("ok", 5, "reason")]
)
def test_bad_sid_or_reason(parts: Any, sid: Any, reason: Any, field: str) -> None:
    kit, store, _sockets, _ = parts
    with pytest.raises(PresenceError) as info:
        kit.handle_disconnect(sid, TEACHER, reason=reason)
    assert info.value.field == field  # type: ignore[attr-defined]
    assert store.keys() == []


def test_store_failure_still_leaves_rooms_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sockets, store = RecordingSockets(), FailingStore()
    kit = PresenceKit(sockets=sockets, store=store)
    with caplog.at_level(logging.WARNING, logger="presence_kit"):
        assert kit.handle_connect("t1", TEACHER) is None
        assert sockets.rooms_of("t1") == {"lesson:3"}  # joined anyway
        assert kit.handle_disconnect("t1", TEACHER) is None
        assert kit.handle_disconnect("t2", TEACHER) is None
    assert sockets.rooms == {}  # left anyway
    assert sockets.emitted == []
    # Once an operation waits in the outbox, later ones queue behind it without
    # waiting on Redis again: only the first connect was tried.
    assert (kit.stats.store_failures, kit.stats.queued) == (1, 3)
    assert "presence store failed during connect" in caplog.text


def test_strict_connect_raises_after_joining() -> None:
    sockets = RecordingSockets()
    kit = PresenceKit(
        sockets=sockets, store=FailingStore(), settings=Settings(strict_connect=True)
    )
    with pytest.raises(StoreError):
        kit.handle_connect("t1", TEACHER)
    assert sockets.rooms_of("t1") == {"lesson:3"}


def test_a_failing_emit_does_not_stop_the_room_leave() -> None:
    sockets = BrokenSockets()
    kit = PresenceKit(sockets=sockets)
    kit.handle_connect("t1", TEACHER)
    kit.handle_disconnect("t1", TEACHER)
    assert sockets.rooms == {}
    assert kit.stats.sockets_failures == 2  # teacher_connect and teacher_disconnect


class ObserverPolicy:
    tracks_alive = False
    connect_requires: frozenset[str] = frozenset()

    def on_connect(self, facts: ConnectFacts) -> Sequence[Effect]:
        return [JoinRoom(sid=facts.sid, room=f"observers:{facts.session.org_id}")]

    def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
        if not facts.removed:
            return []
        return [
            Emit(
                event="observer_left",
                data={"user_id": facts.session.user_id},
                to=f"org:{facts.session.org_id}",
            )
        ]


def test_an_integrator_adds_a_role_without_touching_the_library() -> None:
    sockets = RecordingSockets()
    kit = PresenceKit(sockets=sockets, policies={"Observer": ObserverPolicy()})
    observer = {"role": "Observer", "org_id": 1, "user_id": "o-1", "lesson_id": 3}
    kit.handle_connect("o1", observer)
    assert sockets.rooms_of("o1") == {"observers:1"}
    kit.handle_disconnect("o1", observer)
    kit.handle_disconnect("o1", observer)
    assert sockets.emitted == [("observer_left", {"user_id": "o-1"}, "org:1")]
    other = PresenceKit(sockets=RecordingSockets())
    other.register_policy("Observer", ObserverPolicy())
    other.handle_connect("o2", observer)


def test_close_flushes_analytics_once_and_context_manager(parts: Any) -> None:
    kit, _store, _sockets, analytics = parts
    with kit:
        pass
    assert analytics.closed
    kit.close()


class HeartbeatLog(MemoryStore):
    """A MemoryStore that records each heartbeat's score offset (0, or the handover's)."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets: list[int] = []
        self.closed = False

    def heartbeat(self, call: Any) -> bool:
        self.offsets.append(call.offset_ms)
        return super().heartbeat(call)

    def close(self) -> None:
        self.closed = True


class NoTimeoutJoin:
    """A task handle like engine.io's eventlet ``EventletThread``: ``join()`` takes no
    timeout (a call with one raises ``TypeError``)."""

    def __init__(self, thread: threading.Thread | None) -> None:
        self.thread = thread

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


class GreenSockets(RecordingSockets):
    """Background tasks run in threads, handed back as :class:`NoTimeoutJoin` handles;
    with ``run=False`` the task never runs (a greenlet that is never scheduled)."""

    def __init__(self, *, run: bool = True) -> None:
        super().__init__()
        self.run = run
        self.handles: list[NoTimeoutJoin] = []

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> NoTimeoutJoin:
        thread = None
        if self.run:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
        self.handles.append(NoTimeoutJoin(thread))
        return self.handles[-1]


FAST = Settings(heartbeat_interval=0.05, leave_poll_interval=0.05)
HANDOVER_MS = round((FAST.shutdown_grace - FAST.node_timeout) * 1000)


def test_close_waits_for_the_loop_whatever_join_takes() -> None:
    """Issue 11: under eventlet ``close()`` called ``join(timeout)`` on a handle whose
    ``join`` takes none, and raised before the handover. It now waits for the loop
    through the port's ``sleep`` and never passes the handle a timeout."""
    store, sockets, analytics = HeartbeatLog(), GreenSockets(), RecordingAnalytics()
    kit = PresenceKit(sockets=sockets, store=store, analytics=analytics, settings=FAST)
    kit.handle_connect("t1", TEACHER)
    (handle,) = sockets.handles
    deadline = time.monotonic() + 10
    while 0 not in store.offsets:  # the loop runs: its first heartbeat
        assert time.monotonic() < deadline, "the background loop did not beat"
        time.sleep(0.01)
    kit.close()
    assert handle.thread is not None
    handle.thread.join(10)
    assert not handle.thread.is_alive()  # the loop stopped ...
    assert store.offsets[-1] == HANDOVER_MS  # ... before the handover, which is last
    assert HANDOVER_MS not in store.offsets[:-1]
    assert analytics.closed and store.closed
    kit.close()  # idempotent
    assert store.offsets.count(HANDOVER_MS) == 1


def test_close_does_not_wait_forever_for_a_loop_that_never_ran(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, sockets = HeartbeatLog(), GreenSockets(run=False)
    kit = PresenceKit(sockets=sockets, store=store, settings=FAST)
    kit.handle_connect("t1", TEACHER)
    kit.heartbeat()  # registered, so there is something to hand over
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="presence_kit"):
        kit.close()
    assert time.monotonic() - started < 10  # bounded (by tick + 1 s)
    assert "presence background did not stop" in caplog.text
    assert store.offsets == [0, HANDOVER_MS] and store.closed


def test_announce_connect_off() -> None:
    sockets = RecordingSockets()
    kit = PresenceKit(sockets=sockets, settings=Settings(announce_connect=False))
    kit.handle_connect("t1", TEACHER)
    assert sockets.emitted == []


def test_node_id_from_settings_or_generated() -> None:
    assert (
        PresenceKit(sockets=RecordingSockets(), settings=Settings(node_id="node-a")).node_id
        == "node-a"
    )
    generated = PresenceKit(sockets=RecordingSockets()).node_id
    assert generated != PresenceKit(sockets=RecordingSockets()).node_id


def test_settings_must_be_settings() -> None:
    with pytest.raises(TypeError):
        PresenceKit(sockets=RecordingSockets(), settings={"offline_ttl": 5})  # type: ignore[arg-type]


async def test_async_facade_runs_the_same_flows() -> None:
    sockets, analytics = AsyncRecordingSockets(), RecordingAnalytics()
    async with AsyncPresenceKit(sockets=sockets, analytics=analytics) as kit:
        await kit.handle_connect("hub", HUB)
        await kit.handle_connect("t1", TEACHER)
        await kit.handle_connect("p1", PARTICIPANT)
        await kit.handle_disconnect("t1", TEACHER, reason="client disconnect")
        await kit.handle_disconnect("p1", PARTICIPANT)
        with pytest.raises(InvalidSessionError):
            await kit.handle_connect("x", {**TEACHER, "user_id": None})
    assert sockets.emitted == [
        ("presence_state", {"user_ids": []}, "hub"),
        ("teacher_connect", {"user_id": 7}, "org:1"),
        ("teacher_disconnect", {"user_id": 7}, "org:1"),
    ]
    assert [e.properties["reason"] for e in analytics.events] == ["unknown"]
    assert sockets.rooms_of("hub") == {"org:1", "lesson:3"}
    assert analytics.closed


async def test_async_facade_survives_a_failing_store() -> None:
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(sockets=sockets, store=FailingStore())
    await kit.handle_connect("t1", TEACHER)
    assert await kit.handle_disconnect("t1", TEACHER) is None
    assert sockets.rooms == {}
    kit_strict = AsyncPresenceKit(
        sockets=sockets, store=FailingStore(), settings=Settings(strict_connect=True)
    )
    with pytest.raises(StoreError):
        await kit_strict.handle_connect("t2", TEACHER)
    await kit.aclose()
    await kit.aclose()


def test_async_facade_refuses_a_blocking_store() -> None:
    class Blocking(FailingStore):
        blocking = True

    with pytest.raises(TypeError, match="AsyncRedisStore"):
        AsyncPresenceKit(sockets=AsyncRecordingSockets(), store=Blocking())


# --- a disconnect reuses what its connect validated, only for the same values ---------


def test_a_disconnect_reads_the_session_as_it_is_now(parts: Any) -> None:
    """The disconnect of a session whose ids changed since its connect is made for the
    ids it has now (as it always was), not for those its connect validated; equal
    values in a new dict are the same session."""
    kit, store, sockets, _ = parts
    session = dict(TEACHER)
    kit.handle_connect("t1", session)
    session["user_id"] = 8  # changed by the application after the connect
    assert kit.handle_disconnect("t1", session) is not None
    assert store.hgetall("alive:org_1_user_7")["state"] == "connect"  # user 7 untouched
    assert [e[0] for e in sockets.emitted].count("teacher_disconnect") == 0
    kit.handle_connect("t2", dict(TEACHER))
    kit.handle_disconnect("t2", dict(TEACHER))  # equal values, another dict
    assert store.hgetall("alive:org_1_user_7")["state"] == "connect"  # t1 still holds it
    kit.handle_disconnect("t1", dict(TEACHER))
    assert store.hgetall("alive:org_1_user_7")["state"] == "disconnect"
    assert [e[0] for e in sockets.emitted].count("teacher_disconnect") == 1


@pytest.mark.parametrize(("reason", "sid"), [(5, "t1"), ("ok", "t 1")])
def test_a_bad_reason_or_sid_after_a_connect_is_refused_before_anything_is_written(
    parts: Any, reason: Any, sid: str
) -> None:
    kit, store, sockets, _ = parts
    kit.handle_connect("t1", TEACHER)
    keys, rooms = store.keys(), dict(sockets.rooms)
    with pytest.raises(PresenceError):
        kit.handle_disconnect(sid, TEACHER, reason=reason)
    assert store.keys() == keys
    assert store.hgetall("alive:org_1_user_7")["state"] == "connect"
    assert sockets.rooms == rooms


def test_a_policy_registered_after_the_connect_decides_its_disconnect(parts: Any) -> None:
    kit, _store, sockets, _ = parts
    kit.handle_connect("t1", TEACHER)

    class Quiet(TeacherAppPolicy):
        def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
            return [Emit(event="quiet_leave", data={"user_id": facts.session.user_id}, to="org:1")]

    kit.register_policy("TeacherAPP", Quiet())
    kit.handle_disconnect("t1", TEACHER)
    assert sockets.emitted[-1] == ("quiet_leave", {"user_id": 7}, "org:1")
    assert [e[0] for e in sockets.emitted].count("teacher_disconnect") == 0


def test_a_session_that_is_not_a_dict_is_validated_at_each_call(parts: Any) -> None:
    """Only a plain dict's values are kept from the connect; any other mapping (read
    only, say) is read again at its disconnect, with the same result."""
    from types import MappingProxyType

    kit, store, sockets, _ = parts
    session = MappingProxyType(dict(TEACHER))
    kit.handle_connect("t1", session)
    assert kit.handle_disconnect("t1", session) is not None
    assert store.hgetall("alive:org_1_user_7")["state"] == "disconnect"
    kit.handle_connect("t2", dict(TEACHER))
    assert kit.handle_disconnect("t2", MappingProxyType(dict(TEACHER))) is not None
    assert [e[0] for e in sockets.emitted].count("teacher_disconnect") == 2
