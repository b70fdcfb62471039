"""Ports: the small interfaces the facades drive. Adapters implement them.

Each is a :class:`typing.Protocol`, so an adapter needs no base class: any object
with these methods fits. The sync facade (:class:`~presence_kit.PresenceKit`) uses the
plain ports, the asyncio facade the ``Async`` ones; :class:`Analytics` is shared,
since ``track`` only enqueues and never blocks.

A port's optional members are small Protocols of their own (:class:`ListsNodes`,
:class:`DeclaresBlocking`, :class:`HasNamespace`, :class:`ListsLocalSids`): the kit
checks for them with ``isinstance`` and does without them when they are missing. Only
their presence is checked (and that ``blocking`` is exactly ``False``), so an adapter
needs no base class for them either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ._effects import Track
from ._keys import KeySchema
from ._model import (
    ConnectOutcome,
    ConnectRequest,
    DisconnectOutcome,
    DisconnectRequest,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    NodeInfo,
    OrgQuery,
    UserPresence,
)
from ._session import Id

__all__ = [
    "Analytics",
    "AsyncSockets",
    "AsyncStore",
    "DeclaresBlocking",
    "HasNamespace",
    "ListsLocalSids",
    "ListsNodes",
    "Sockets",
    "Store",
]


@runtime_checkable
class Store(Protocol):
    """Presence storage, blocking. Each method is one atomic transition.

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
class AsyncStore(Protocol):
    """Presence storage for asyncio; the same contract as :class:`Store`."""

    async def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection."""
        ...

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection."""
        ...

    async def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Up to ``limit`` queued held-back leaves whose grace has ended."""
        ...

    async def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if it is due; only one caller ever gets its outcome."""
        ...

    async def presence(
        self, alive_key: str, connections_key: str, state_field: str
    ) -> UserPresence:
        """A (user, role)'s alive hash and connection records."""
        ...

    async def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's live connections in a role."""
        ...

    async def disconnect_many(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        """Many disconnects at once (a sweep)."""
        ...

    async def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp a node incarnation alive; ``False`` if it was fenced."""
        ...

    async def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Atomically claim one dead node incarnation to sweep."""
        ...

    async def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index."""
        ...

    async def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend a sweeper's claim."""
        ...

    async def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a node incarnation whose connections were all swept."""
        ...

    async def aclose(self) -> None:
        """Release what the store opened itself."""
        ...


@runtime_checkable
class Sockets(Protocol):
    """Room membership, emits and background tasks of a blocking Socket.IO server."""

    def enter_room(self, sid: str, room: str) -> None:
        """Add ``sid`` to ``room``."""
        ...

    def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room``."""
        ...

    def emit(self, event: str, data: Any, *, to: str) -> None:
        """Send ``event`` to a room or a sid."""
        ...

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> Any:
        """Run ``target(*args)`` in the server's concurrency model (thread, greenlet)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Sleep the way the server's concurrency model wants."""
        ...


@runtime_checkable
class AsyncSockets(Protocol):
    """Room membership, emits and background tasks of an asyncio Socket.IO server."""

    async def enter_room(self, sid: str, room: str) -> None:
        """Add ``sid`` to ``room``."""
        ...

    async def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room``."""
        ...

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        """Send ``event`` to a room or a sid."""
        ...

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start ``target(*args)`` as a task; return it (the caller keeps a reference)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep without blocking the loop."""
        ...


@runtime_checkable
class Analytics(Protocol):
    """An analytics sink. ``track`` must return at once and never raise."""

    def track(self, event: Track) -> None:
        """Enqueue ``event`` for delivery."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Flush what is queued (waiting at most ``timeout`` seconds), then stop."""
        ...


# --- optional members -----------------------------------------------------------------


@runtime_checkable
class ListsNodes(Protocol):
    """A store that lists the node registry: :meth:`PresenceKit.nodes
    <presence_kit.PresenceKit.nodes>` needs it (``TypeError`` without it).

    An :class:`AsyncStore`'s ``nodes`` is a coroutine function with the same signature.
    """

    def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation."""
        ...


@runtime_checkable
class DeclaresBlocking(Protocol):
    """A store that says whether its calls block.

    A :class:`Store` (plain methods) that sets ``blocking = False``, exactly ``False``,
    never blocks: it keeps its state in memory, as
    :class:`~presence_kit.memory.MemoryStore` does. :class:`~presence_kit.AsyncPresenceKit`
    may then call it from the event loop.
    """

    blocking: bool


@runtime_checkable
class HasNamespace(Protocol):
    """Sockets of one Socket.IO namespace: each connection record keeps its name (a
    ``str``; ``"/"`` without it)."""

    namespace: str


@runtime_checkable
class ListsLocalSids(Protocol):
    """Sockets that list the sids this server process holds (never other nodes').

    With it a kit reconciles its records with its live sockets, both ways, and after
    being fenced registers again only the sockets still connected. A plain method in
    the sync and the asyncio ports alike: it reads the server's own state, no I/O.
    """

    def local_sids(self) -> set[str]:
        """The sids connected to this process."""
        ...
