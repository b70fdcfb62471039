"""Ports: the small interfaces the facades drive. Adapters implement them.

Each is a :class:`typing.Protocol`, so an adapter needs no base class: any object
with these methods fits. The sync facade (:class:`~presence_kit.PresenceKit`) uses the
plain ports, the asyncio facade the ``Async`` ones (written once, in
:mod:`presence_kit._async.ports`; the blocking ones are made from them);
:class:`Analytics` is shared, since ``track`` only enqueues and never blocks.

A port's optional members are small Protocols of their own (:class:`ListsNodes`,
:class:`Updates`, :class:`CountsOnline`, :class:`DeclaresBlocking`,
:class:`HasNamespace`, :class:`ListsLocalSids`): the kit checks for them with
``isinstance`` and does without them when they are missing. Only their presence is
checked (and that ``blocking`` is exactly ``False``), so an adapter needs no base
class for them either.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._async.ports import AsyncCountsOnline, AsyncSockets, AsyncStore, AsyncUpdates
from ._effects import Track
from ._sync.ports import CountsOnline, ListsNodes, Sockets, Store, Updates

__all__ = [
    "Analytics",
    "AsyncCountsOnline",
    "AsyncSockets",
    "AsyncStore",
    "AsyncUpdates",
    "CountsOnline",
    "DeclaresBlocking",
    "HasNamespace",
    "ListsLocalSids",
    "ListsNodes",
    "Sockets",
    "Store",
    "Updates",
]


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
