"""Recording fakes for integrators' own tests (and ours): no server needed.

``RecordingSockets`` / ``AsyncRecordingSockets`` implement the sockets ports and keep
room membership and every emit; ``RecordingAnalytics`` keeps every tracked event.
Combine them with :class:`~presence_kit.memory.MemoryStore`::

    sockets = RecordingSockets()
    analytics = RecordingAnalytics()
    kit = PresenceKit(sockets=sockets, analytics=analytics)
    session = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
    kit.handle_connect("sid1", session)
    kit.handle_disconnect("sid1", session)
    assert sockets.emitted == [("teacher_connect", {"user_id": 7}, "org:1"),
                               ("teacher_disconnect", {"user_id": 7}, "org:1")]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._effects import Track

__all__ = ["AsyncRecordingSockets", "RecordingAnalytics", "RecordingSockets"]


class _Rooms:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rooms: dict[str, set[str]] = {}
        """Room name -> sids in it."""
        self.emitted: list[tuple[str, Any, str]] = []
        """Every emit as ``(event, data, to)``, in order."""
        self.connected: set[str] = set()
        """Sids that :meth:`local_sids` reports (set them in your test)."""

    def members(self, room: str) -> set[str]:
        """The sids in ``room``."""
        with self._lock:
            return set(self.rooms.get(room, ()))

    def rooms_of(self, sid: str) -> set[str]:
        """The rooms ``sid`` is in."""
        with self._lock:
            return {room for room, sids in self.rooms.items() if sid in sids}

    def local_sids(self) -> set[str]:
        """The sids marked connected."""
        with self._lock:
            return set(self.connected)

    def _enter(self, sid: str, room: str) -> None:
        with self._lock:
            self.rooms.setdefault(room, set()).add(sid)

    def _leave(self, sid: str, room: str) -> None:
        with self._lock:
            members = self.rooms.get(room)
            if members is not None:
                members.discard(sid)
                if not members:
                    del self.rooms[room]

    def _emit(self, event: str, data: Any, to: str) -> None:
        with self._lock:
            self.emitted.append((event, data, to))


class RecordingSockets(_Rooms):
    """A :class:`~presence_kit.Sockets` that records rooms and emits.

    By default background tasks are recorded in :attr:`pending_tasks` but never
    started, so a test drives the kit's background itself
    (:meth:`PresenceKit.run_background_step`, :meth:`~PresenceKit.run_due_leaves`,
    :meth:`~PresenceKit.sweep_dead_nodes`) with no thread racing it. With
    ``background=True`` they run in daemon threads, as under a threading server.
    """

    namespace = "/"

    def __init__(self, *, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self.pending_tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def enter_room(self, sid: str, room: str) -> None:
        """Record ``sid`` in ``room``."""
        self._enter(sid, room)

    def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room``."""
        self._leave(sid, room)

    def emit(self, event: str, data: Any, *, to: str) -> None:
        """Record the emit."""
        self._emit(event, data, to)

    def start_background_task(
        self, target: Callable[..., Any], *args: Any
    ) -> threading.Thread | None:
        """Run ``target`` in a daemon thread (or only record it, see the class)."""
        if not self.background:
            self.pending_tasks.append((target, args))
            return None
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        """``time.sleep``."""
        time.sleep(seconds)


class AsyncRecordingSockets(_Rooms):
    """An :class:`~presence_kit.AsyncSockets` that records rooms and emits; background
    tasks are recorded, or run as asyncio tasks with ``background=True``."""

    namespace = "/"

    def __init__(self, *, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self.pending_tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.tasks: set[Any] = set()
        """Background tasks started and not yet done."""

    async def enter_room(self, sid: str, room: str) -> None:
        """Record ``sid`` in ``room``."""
        self._enter(sid, room)

    async def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room``."""
        self._leave(sid, room)

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        """Record the emit."""
        self._emit(event, data, to)

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start ``target`` as an asyncio task (kept referenced in ``tasks``), or only
        record it (the default; see :class:`RecordingSockets`)."""
        import asyncio

        if not self.background:
            self.pending_tasks.append((target, args))
            return None
        task = asyncio.ensure_future(target(*args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        import asyncio

        await asyncio.sleep(seconds)


class RecordingAnalytics:
    """An :class:`~presence_kit.Analytics` that keeps every event in :attr:`events`."""

    def __init__(self) -> None:
        self.events: list[Track] = []
        self.closed = False

    def track(self, event: Track) -> None:
        """Keep ``event``."""
        self.events.append(event)

    def close(self, timeout: float | None = None) -> None:
        """Mark closed."""
        self.closed = True
