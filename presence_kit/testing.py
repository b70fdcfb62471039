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

``RequestBuilder`` makes the store requests a kit would send, to test a store (your
own adapter, say) without a kit::

    requests = RequestBuilder()
    store = MemoryStore()
    outcome = store.connect(requests.connect("sid1", session))
    assert outcome.status is ConnectStatus.NEW and outcome.first
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ._effects import Track
from ._model import (
    ConnectRequest,
    DisconnectRequest,
    FinishLeaveRequest,
    OrgQuery,
    UpdateRequest,
)
from ._policies import DisconnectPolicy
from ._requests import KitRequests
from ._settings import Settings

__all__ = ["AsyncRecordingSockets", "RecordingAnalytics", "RecordingSockets", "RequestBuilder"]


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


class RequestBuilder:
    """The store requests a kit would send: to test a store without a kit.

    Each request is the one :class:`~presence_kit.PresenceKit` builds for the same
    call, with the same ``settings``, ``policies`` (added to the spec's roles) and
    socket ``namespace``: the same key names and values, and a new attempt id per
    request (send one request twice to repeat a call, as a retry does). Sessions are
    validated as the kit validates them (an invalid one raises
    :class:`~presence_kit.InvalidSessionError`). The builder is one node incarnation,
    :attr:`member`; :meth:`new_incarnation` makes it the next one, as a kit does when it
    learns it was swept while alive.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        policies: Mapping[str, DisconnectPolicy] | None = None,
        namespace: str = "/",
    ) -> None:
        self._kit = KitRequests(settings=settings, policies=policies, namespace=namespace)

    @property
    def settings(self) -> Settings:
        """The settings the requests are built with."""
        return self._kit.settings

    @property
    def member(self) -> str:
        """This node incarnation, ``node_id/incarnation``, as records and indexes name it."""
        return self._kit.member

    def new_incarnation(self) -> None:
        """Become a new incarnation of the same node (records then name it)."""
        self._kit.new_incarnation()

    def node_index_key(self, sid: str) -> str:
        """The key of this incarnation's node index that holds connection ``sid``."""
        return self._kit.node_index_key(sid)

    def connect(self, sid: str, session: Mapping[str, Any]) -> ConnectRequest:
        """The request of a connect handler call of ``sid`` with ``session``."""
        return self._kit.prepare_connect(sid, session).request

    def update(
        self, sid: str, session: Mapping[str, Any], *, previous: Mapping[str, Any] | None = None
    ) -> UpdateRequest:
        """The request of an update handler call of ``sid`` to ``session`` (a new
        sequence number each: the later request is the newer update). With ``previous``
        (the session the connection had), an identity change is refused as the kit
        refuses it."""
        before = None if previous is None else self._kit.parse_session(previous)[0]
        return self._kit.prepare_update(sid, session, before).request

    def disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectRequest:
        """The request of a disconnect handler call (``reason`` as python-socketio gives
        it; ``None``: not given)."""
        return self._kit.prepare_disconnect(sid, session, reason).request

    def sweep(
        self,
        sid: str,
        session: Mapping[str, Any],
        *,
        member: str | None = None,
        reason: str | None = None,
    ) -> DisconnectRequest:
        """The removal of connection ``sid`` by a sweep of node incarnation ``member``
        (by default this one), which wrote its record: a lost node's, with
        ``Settings.lost_reason`` and a soft tombstone; or, with ``reason``, a
        reconcile's of a record whose socket is gone (a tombstone like a handler's)."""
        prepared = self._kit.prepare_disconnect(sid, session, reason)
        entry = prepared.request.keys.queue_member  # the node index's entry: the same text
        request = self._kit.sweep_request(
            member or self.member,
            prepared.sid,
            entry,
            reason=None if reason is None else prepared.request.reason,
        )
        assert request is not None  # the session was validated above
        return request

    def org_query(self, org_id: Any, role: Any = "TeacherAPP") -> OrgQuery:
        """The query of an organisation's index of connections in ``role`` (what
        ``online_users`` and ``count_online`` read)."""
        return self._kit.org_query(org_id, role)

    def finish(self, session: Mapping[str, Any]) -> FinishLeaveRequest:
        """The request that finishes the held-back leave of ``session``'s (user, role)."""
        parsed, policy = self._kit.parse_session(session)
        keys = self._kit.user_keys(parsed, policy)
        request = self._kit.finish_request(keys.queue_member)
        assert request is not None  # the session was validated above
        return request
