# Generated from presence_kit/_async/kit.py by .ci/unasync.py: do not edit.
# Change the asyncio original, then run `make unasync`.
"""The facade: :class:`PresenceKit` (``.ci/unasync.py`` makes :class:`PresenceKit`).

Its handlers are in :mod:`.handlers`, its background steps in :mod:`.background`;
here are the queries, the lifecycle and the choice of the default store.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from presence_kit._codec import ConnectionRecord, lesson_key
from presence_kit._model import NodeInfo, OnlineCount, OnlineUser, UserPresence, group_online
from presence_kit._policies import DisconnectPolicy
from presence_kit._ports import Analytics
from presence_kit._roles import ClientRole
from presence_kit._session import Id
from presence_kit._settings import Settings
from presence_kit._sync.background import BackgroundSteps
from presence_kit._sync.ports import CountsOnline, ListsNodes, Sockets, Store
from presence_kit._synchronization import run_blocking, store_for

__all__ = ["PresenceKit"]


class PresenceKit(BackgroundSteps):
    """Presence for a blocking Socket.IO server (``socketio.Server``).

    Call :meth:`handle_connect` from the connect handler and :meth:`handle_disconnect`
    from the disconnect handler. ``store`` defaults to an in-process
    :class:`~presence_kit.memory.MemoryStore`; ``analytics`` is optional.
    ``meter_provider``: an OpenTelemetry ``MeterProvider`` for the kit's metrics
    (:mod:`presence_kit.otel`, the extra ``otel``); by default OpenTelemetry's global
    one when ``opentelemetry-api`` is installed, else none.
    """

    def __init__(
        self,
        *,
        sockets: Sockets,
        store: Store | None = None,
        analytics: Analytics | None = None,
        settings: Settings | None = None,
        policies: Mapping[str, DisconnectPolicy] | None = None,
        meter_provider: object | None = None,
    ) -> None:
        port = store_for(store)
        super().__init__(
            store=port,
            sockets=sockets,
            analytics=analytics,
            settings=settings,
            policies=policies,
            meter_provider=meter_provider,
        )
        self._node_lister = port if isinstance(port, ListsNodes) else None
        self._counter = port if isinstance(port, CountsOnline) else None

    def online_users(
        self,
        org_id: Id,
        role: str | ClientRole = ClientRole.TEACHER_APP,
        *,
        lesson_id: Id | None = None,
    ) -> list[OnlineUser]:
        """Users of ``org_id`` with live connections in ``role`` (in ``lesson_id``, if given).

        Reads one index; the cost is proportional to the answer.
        """
        query = self._core.org_query(org_id, role)
        lesson = self._core.lesson_filter(lesson_id)
        return group_online(self._store.org_connections(query), lesson)

    def count_online(
        self,
        org_id: Id,
        *,
        lesson_id: Id | None = None,
        role: str | ClientRole = ClientRole.TEACHER_APP,
    ) -> OnlineCount:
        """How many users of ``role`` are online in ``org_id`` (in ``lesson_id``, if
        given), and their live connections: what :meth:`online_users` lists, counted.

        O(1): two reads of counts the store keeps beside the index, whatever the answer
        (a teacher within ``leave_grace`` counts; a dead node's connections count until
        swept). ``TypeError`` for a third-party store without ``count_online()`` (see
        :class:`~presence_kit.CountsOnline`)."""
        query = self._core.org_query(org_id, role)
        lesson = self._core.lesson_filter(lesson_id)
        if self._counter is None:
            raise TypeError(f"{type(self._store).__name__} cannot count (no count_online())")
        return self._counter.count_online(query, None if lesson is None else lesson_key(lesson))

    def presence(
        self, org_id: Id, user_id: Id, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's state, connections, since when, and last leave reason (one round trip)."""
        alive, conns = self._core.presence_keys(org_id, user_id, role)
        return self._store.presence(alive, conns, self.settings.state_field)

    def connections(
        self, org_id: Id, user_id: Id, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> tuple[ConnectionRecord, ...]:
        """A user's live connections in ``role``."""
        return (self.presence(org_id, user_id, role)).connections

    def nodes(self) -> list[NodeInfo]:
        """Every node incarnation registered in the store (this one and the others
        sharing it): its last heartbeat (Redis clock; ``None`` while being swept), its
        connection count and what it registered. For operators; ``TypeError`` for a
        third-party store without ``nodes()`` (see :class:`~presence_kit.ListsNodes`)."""
        if self._node_lister is None:
            raise TypeError(f"{type(self._store).__name__} cannot list nodes (no nodes())")
        return self._node_lister.nodes(self._core.keys)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the background, hand this node's connections over, flush analytics
        (waiting at most ``timeout`` s) and release the store. Idempotent.

        If it is cancelled (or fails) on the way, the store is still released and
        the cancellation (or failure) then raised."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        try:
            if self._background is not None:
                self._background.stop(self._tick + 1.0)
            self._hand_over()
            if self._analytics is not None:
                run_blocking(self._analytics.close, timeout)
        finally:
            self._store.close()

    def __enter__(self) -> PresenceKit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
