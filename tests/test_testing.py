"""The fakes we ship for integrators' tests behave like the ports they stand for."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from presence_kit import (
    AsyncSockets,
    ConnectRequest,
    ConnectStatus,
    DisconnectRequest,
    DisconnectStatus,
    FinishLeaveStatus,
    InvalidSessionError,
    PresenceKit,
    Settings,
    Sockets,
)
from presence_kit.memory import MemoryStore
from presence_kit.testing import (
    AsyncRecordingSockets,
    RecordingAnalytics,
    RecordingSockets,
    RequestBuilder,
)


def test_recording_sockets_implement_the_port() -> None:
    sockets = RecordingSockets(background=True)
    assert isinstance(sockets, Sockets)
    sockets.enter_room("a", "r")
    sockets.enter_room("b", "r")
    sockets.leave_room("a", "r")
    sockets.leave_room("a", "missing")
    assert sockets.members("r") == {"b"}
    sockets.connected.add("b")
    assert sockets.local_sids() == {"b"}
    ran = threading.Event()
    sockets.start_background_task(ran.set).join(timeout=2)
    assert ran.is_set()
    sockets.sleep(0)


async def test_async_recording_sockets_implement_the_port() -> None:
    sockets = AsyncRecordingSockets(background=True)
    assert isinstance(sockets, AsyncSockets)
    await sockets.enter_room("a", "r")
    await sockets.emit("e", {"x": 1}, to="r")
    assert sockets.emitted == [("e", {"x": 1}, "r")]
    done = asyncio.Event()

    async def work() -> None:
        await sockets.sleep(0)
        done.set()

    task = sockets.start_background_task(work)
    assert task in sockets.tasks
    await asyncio.wait_for(done.wait(), 2)
    await task
    assert sockets.tasks == set()


def test_background_tasks_are_only_recorded_by_default() -> None:
    sockets = RecordingSockets()
    assert sockets.start_background_task(print, "never") is None
    assert sockets.pending_tasks == [(print, ("never",))]


def test_recording_analytics() -> None:
    analytics = RecordingAnalytics()
    analytics.close()
    assert analytics.closed


def test_memory_store_expiry_follows_its_clock() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    requests = RequestBuilder()
    session = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
    store.connect(requests.connect("s1", session))
    store.disconnect(requests.disconnect("s1", session))
    assert store.ttl("alive:org_1_user_2") == 3600
    assert store.get("presence:{alive:org_1_user_2}:gone:s1") is not None
    assert store.get("alive:org_1_user_2") is None  # a hash, not a string
    now[0] += 601
    assert store.get("presence:{alive:org_1_user_2}:gone:s1") is None
    now[0] += 3000
    assert store.keys() == []
    assert store.ttl("alive:org_1_user_2") == -2


TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}


class CapturingStore(MemoryStore):
    """A memory store that keeps every request it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def connect(self, request: ConnectRequest) -> Any:
        self.requests.append(request)
        return super().connect(request)

    def disconnect(self, request: DisconnectRequest) -> Any:
        self.requests.append(request)
        return super().disconnect(request)


def test_the_request_builder_builds_what_a_kit_sends() -> None:
    settings = Settings(node_id="node-1", leave_grace=5)
    store = CapturingStore()
    kit = PresenceKit(store=store, sockets=RecordingSockets(), settings=settings)
    kit.handle_connect("s1", TEACHER)
    kit.handle_disconnect("s1", TEACHER, reason="ping timeout")
    sent_connect, sent_disconnect = store.requests
    requests = RequestBuilder(settings=settings)
    connect = requests.connect("s1", TEACHER)
    disconnect = requests.disconnect("s1", TEACHER, "ping timeout")
    for sent, built in ((sent_connect, connect), (sent_disconnect, disconnect)):
        assert (built.keys, built.tombstone_key, built.layout, built.tracks_alive) == (
            sent.keys,
            sent.tombstone_key,
            sent.layout,
            sent.tracks_alive,
        )
        assert built.attempt and built.attempt != sent.attempt  # a call of its own
    assert (connect.index_entry, connect.record.session) == (
        sent_connect.index_entry,
        sent_connect.record.session,
    )
    assert connect.record.node_id == "node-1"
    assert (disconnect.reason, disconnect.remember, disconnect.owner) == (
        "ping timeout",
        True,
        "",
    )
    assert requests.settings is settings
    kit.close()


def test_the_request_builder_drives_a_store() -> None:
    requests = RequestBuilder(settings=Settings(leave_grace=0.001))
    store = MemoryStore()
    connect = requests.connect("s1", TEACHER)
    assert store.connect(connect).status is ConnectStatus.NEW
    assert store.connect(connect).status is ConnectStatus.REPEAT  # the same call again
    old = requests.member
    requests.new_incarnation()
    assert requests.member != old and requests.member.split("/")[0] == old.split("/")[0]
    assert requests.node_index_key("s1") != connect.node_index_key
    swept = requests.sweep("s1", TEACHER, member=old)
    assert (swept.owner, swept.remember, swept.reason) == (old, False, "node lost")
    assert store.disconnect(swept).status is DisconnectStatus.REMOVED
    reconciled = requests.sweep("s1", TEACHER, reason="stale connection")
    assert (reconciled.owner, reconciled.remember) == (requests.member, True)
    finish = requests.finish(TEACHER)
    assert finish.keys.queue_member == connect.keys.queue_member
    assert store.finish_leave(finish).status in (FinishLeaveStatus.LATER, FinishLeaveStatus.LEFT)


def test_the_request_builder_validates_sessions() -> None:
    with pytest.raises(InvalidSessionError):
        RequestBuilder().connect("s1", {**TEACHER, "user_id": "1_user_2"})
