# Generated from presence_kit/_async/ports.py by .ci/unasync.py: do not edit.
# Change the asyncio original, then run `make unasync`.
"""The store and sockets ports of :class:`~presence_kit.PresenceKit` (the blocking
ones, :class:`~presence_kit.Store` and :class:`~presence_kit.Sockets`, are made from
these by ``.ci/unasync.py``). Each is a :class:`typing.Protocol`: an adapter needs no
base class, any object with these methods fits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from presence_kit._keys import KeySchema
from presence_kit._model import (
    ConnectOutcome,
    ConnectRequest,
    DisconnectOutcome,
    DisconnectRequest,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    NodeInfo,
    OnlineCount,
    OrgQuery,
    UpdateOutcome,
    UpdateRequest,
    UserPresence,
)
from presence_kit._session import Id

__all__ = [
    "CountsOnline",
    "ListsNodes",
    "MovesFeeds",
    "Sockets",
    "Store",
    "Updates",
]


@runtime_checkable
class Store(Protocol):
    """Presence storage. Each method is one atomic transition.

    Implementations raise :class:`~presence_kit.StoreError` on any backend failure and
    must be idempotent per ``(sid, operation)``: a repeat returns the first outcome.
    """

    def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection (see :class:`~presence_kit.ConnectRequest`)."""
        ...

    def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection (see :class:`~presence_kit.DisconnectRequest`)."""
        ...

    def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Up to ``limit`` queued held-back leaves whose grace has ended."""
        ...

    def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if it is due; only one caller ever gets its outcome."""
        ...

    def presence(self, alive_key: str, connections_key: str, state_field: str) -> UserPresence:
        """A (user, role)'s alive hash and connection records."""
        ...

    def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's live connections in a role."""
        ...

    def disconnect_many(self, requests: Sequence[DisconnectRequest]) -> list[DisconnectOutcome]:
        """Many disconnects at once (a sweep); each as :meth:`disconnect`."""
        ...

    def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp a node incarnation alive; ``False`` if it was fenced (swept meanwhile)."""
        ...

    def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Atomically claim one dead node incarnation (or an expired claim) to sweep."""
        ...

    def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry ``sid -> node entry`` of these buckets of a node's index."""
        ...

    def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend a sweeper's claim."""
        ...

    def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a node incarnation whose connections were all swept."""
        ...

    def close(self) -> None:
        """Release what the store opened itself (never the integrator's client)."""
        ...


@runtime_checkable
class Sockets(Protocol):
    """Room membership, emits and background tasks of a Socket.IO server."""

    def enter_room(self, sid: str, room: str) -> None:
        """Add ``sid`` to ``room``."""
        ...

    def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room``."""
        ...

    def emit(self, event: str, data: Any, *, to: str) -> None:
        """Send ``event`` to a room or a sid."""
        ...

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> object:
        """Run ``target(*args)`` the server's way (a task, a thread, a greenlet); return
        its handle (the kit keeps a reference)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Sleep the way the server's concurrency model wants."""
        ...


@runtime_checkable
class ListsNodes(Protocol):
    """A store that lists the node registry: :meth:`PresenceKit.nodes
    <presence_kit.PresenceKit.nodes>` needs it (``TypeError`` without it). An optional
    member: the kit checks for it with ``isinstance``."""

    def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation."""
        ...


@runtime_checkable
class Updates(Protocol):
    """A store that changes a live connection's lesson, room or meta:
    :meth:`PresenceKit.handle_update <presence_kit.PresenceKit.handle_update>` needs it
    (``TypeError`` without it). An optional member, like :class:`~presence_kit.ListsNodes`."""

    def update(self, request: UpdateRequest) -> UpdateOutcome:
        """Change connection ``request.sid`` atomically; idempotent per (sid, update), and
        never recording a connection that has none (``UNKNOWN``)."""
        ...


@runtime_checkable
class CountsOnline(Protocol):
    """A store that counts an organisation's online users in O(1):
    :meth:`PresenceKit.count_online <presence_kit.PresenceKit.count_online>` needs it
    (``TypeError`` without it). An optional member, like :class:`~presence_kit.ListsNodes`."""

    def count_online(self, query: OrgQuery, lesson: str | None) -> OnlineCount:
        """The users and connections of ``query``'s index (in ``lesson``, if given:
        :func:`str` of the lesson id), from counts kept beside it."""
        ...


@runtime_checkable
class MovesFeeds(Protocol):
    """A store whose presence feed may hold entries a dead kit left queued (the Redis
    stores on a Redis Cluster): the background moves them. An optional member."""

    def move_stale_feeds(
        self, keys: KeySchema, older_than_ms: int, retention_ms: int, limit: int = 100
    ) -> int:
        """Move the feed entries queued longer than ``older_than_ms`` ago."""
        ...
