"""The fakes we ship for integrators' tests behave like the ports they stand for."""

from __future__ import annotations

import asyncio
import threading

from presence_kit import AsyncSockets, Sockets
from presence_kit.memory import MemoryStore
from presence_kit.testing import AsyncRecordingSockets, RecordingAnalytics, RecordingSockets


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
    from presence_kit._core import KitCore

    core = KitCore(settings=None, policies=None, namespace="/")
    session = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
    store.connect(core.prepare_connect("s1", session)[3])
    store.disconnect(core.prepare_disconnect("s1", session, None)[3])
    assert store.ttl("alive:org_1_user_2") == 3600
    assert store.get("presence:{alive:org_1_user_2}:gone:s1") is not None
    assert store.get("alive:org_1_user_2") is None  # a hash, not a string
    now[0] += 601
    assert store.get("presence:{alive:org_1_user_2}:gone:s1") is None
    now[0] += 3000
    assert store.keys() == []
    assert store.ttl("alive:org_1_user_2") == -2
