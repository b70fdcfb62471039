"""A store that never blocks (the in-memory one), as an asyncio kit's store port.

:class:`~presence_kit.memory.MemoryStore` has the blocking port's plain methods, but
keeps its state in memory and never waits, so an asyncio kit may call it from the event
loop: :func:`inline_async_store` makes each of its calls awaitable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

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
    OnlineCount,
    OrgQuery,
    UpdateOutcome,
    UpdateRequest,
    UserPresence,
)
from ._ports import CountsOnline, ListsNodes, Store, Updates
from ._session import Id

__all__ = ["InlineAsyncStore", "inline_async_store"]


class InlineAsyncStore:
    """An :class:`~presence_kit.AsyncStore` that makes each call on a non-blocking
    :class:`~presence_kit.Store` at once."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection."""
        return self._store.connect(request)

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection."""
        return self._store.disconnect(request)

    async def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Queued held-back leaves whose grace has ended."""
        return self._store.due_leaves(queue_key, limit)

    async def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if it is due."""
        return self._store.finish_leave(request)

    async def presence(
        self, alive_key: str, connections_key: str, state_field: str
    ) -> UserPresence:
        """A (user, role)'s alive hash and connection records."""
        return self._store.presence(alive_key, connections_key, state_field)

    async def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """An organisation's live connections in a role."""
        return self._store.org_connections(query)

    async def disconnect_many(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        """Many disconnects at once."""
        return self._store.disconnect_many(requests)

    async def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp a node incarnation alive."""
        return self._store.heartbeat(call)

    async def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep."""
        return self._store.claim_node(keys, timeout_ms, claim_ttl_ms)

    async def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index."""
        return self._store.node_connections(index_keys)

    async def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend a sweeper's claim."""
        self._store.renew_claim(keys, member, claim_ttl_ms)

    async def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation."""
        self._store.release_node(keys, member)

    async def aclose(self) -> None:
        """Close the store."""
        self._store.close()


class _InlineLister(InlineAsyncStore):
    """The optional :class:`~presence_kit.ListsNodes` member, made awaitable."""

    _store: Any

    async def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation."""
        return cast("list[NodeInfo]", self._store.nodes(keys))


class _InlineUpdater(InlineAsyncStore):
    """The optional :class:`~presence_kit.Updates` member, made awaitable."""

    _store: Any

    async def update(self, request: UpdateRequest) -> UpdateOutcome:
        """Change a live connection's lesson, room or meta."""
        return cast("UpdateOutcome", self._store.update(request))


class _InlineCounter(InlineAsyncStore):
    """The optional :class:`~presence_kit.CountsOnline` member, made awaitable."""

    _store: Any

    async def count_online(self, query: OrgQuery, lesson: str | None) -> OnlineCount:
        """The users and connections of an org index."""
        return cast("OnlineCount", self._store.count_online(query, lesson))


_OPTIONAL = (
    (ListsNodes, _InlineLister),
    (Updates, _InlineUpdater),
    (CountsOnline, _InlineCounter),
)
_CLASSES: dict[tuple[type, ...], type[InlineAsyncStore]] = {}


def inline_async_store(store: Store) -> InlineAsyncStore:
    """``store``'s calls made awaitable (with its optional members: ``nodes``,
    ``update``, ``count_online``, those it has)."""
    bases = tuple(mixin for port, mixin in _OPTIONAL if isinstance(store, port))
    cls = _CLASSES.get(bases)
    if cls is None:
        cls = _CLASSES[bases] = type("InlineAsyncStore", (*bases, InlineAsyncStore), {})
    return cls(store)
