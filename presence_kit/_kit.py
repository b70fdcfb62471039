"""The facades: :class:`PresenceKit` (blocking) and :class:`AsyncPresenceKit` (asyncio).

Every operation is a flow of :mod:`presence_kit._flows`, written once; a facade only
drives it. :class:`PresenceKit` makes each port call a flow yields and sends the result
back; :class:`AsyncPresenceKit` awaits it first. A failing call is thrown into the flow
at its ``yield``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar, cast

from ._calls import Flow
from ._codec import ConnectionRecord
from ._flows import DUE_LEAVES_PER_STEP, KitFlows, logger
from ._model import (
    ConnectOutcome,
    DisconnectOutcome,
    NodeInfo,
    OnlineUser,
    UserPresence,
)
from ._policies import DisconnectPolicy
from ._ports import (
    Analytics,
    AsyncSockets,
    AsyncStore,
    DeclaresBlocking,
    ListsNodes,
    Sockets,
    Store,
)
from ._roles import ClientRole
from ._session import Id
from ._settings import Settings

__all__ = ["AsyncPresenceKit", "PresenceKit"]

T = TypeVar("T")

_CLOSE_POLL_INTERVAL = 0.01
"""Seconds between looks at the background loop's done flag while ``close()`` waits."""


def _default_store() -> Store:
    from .memory import MemoryStore

    return MemoryStore()


class PresenceKit(KitFlows):
    """Presence for a blocking Socket.IO server (``socketio.Server``, Flask-SocketIO).

    Call :meth:`handle_connect` from the connect handler and :meth:`handle_disconnect`
    from the disconnect handler. ``store`` defaults to an in-process
    :class:`~presence_kit.memory.MemoryStore`; ``analytics`` is optional.
    """

    def __init__(
        self,
        *,
        sockets: Sockets,
        store: Store | None = None,
        analytics: Analytics | None = None,
        settings: Settings | None = None,
        policies: Mapping[str, DisconnectPolicy] | None = None,
    ) -> None:
        store = store if store is not None else _default_store()
        super().__init__(
            store=store,
            sockets=sockets,
            node_lister=store if isinstance(store, ListsNodes) else None,
            analytics=analytics,
            settings=settings,
            policies=policies,
        )
        self._background_done = False

    @staticmethod
    def _begin(
        fn: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
    ) -> object:
        """Make a started call now: its result, or its failure for :meth:`_finish`."""
        try:
            return (True, fn(*args, **kwargs))
        except Exception as exc:
            return (False, exc)

    @staticmethod
    def _finish(handle: object) -> object:
        made, result = cast(tuple[bool, object], handle)
        if not made:
            raise cast(Exception, result)
        return result

    def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                fn, args, kwargs, _awaited = step
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                except Exception as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value  # what the flow returned
            return value

    def handle_connect(self, sid: str, session: Mapping[str, Any]) -> ConnectOutcome | None:
        """Record connection ``sid`` and join its rooms.

        Raises :class:`~presence_kit.InvalidSessionError` (a ``ValueError``) before
        anything is written or joined. On a store failure the rooms are still joined,
        ``None`` is returned and the connect is queued for replay (or
        :class:`~presence_kit.StoreError` raised with ``Settings.strict_connect``).
        """
        return self._drive(self._connect_flow(sid, session))

    def handle_disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectOutcome | None:
        """Remove connection ``sid``, announce a real leave once, and leave its rooms.

        Raises only :class:`~presence_kit.InvalidSessionError`, before any I/O; a
        backend failure is logged and counted, the rooms are left, ``None`` is returned,
        and the operation is queued for the background to replay once Redis answers.
        """
        return self._drive(self._disconnect_flow(sid, session, reason))

    def replay_outbox(self) -> int:
        """Make the store operations that failed, in order, and announce what they grant.

        Stops at the first failure (Redis still down) and keeps the rest; returns how
        many were made. The background calls it every step; idempotent scripts make a
        replay of an operation that had in fact run harmless.
        """
        return self._drive(self._replay_flow())

    def run_due_leaves(self, limit: int = DUE_LEAVES_PER_STEP) -> int:
        """One step of the grace scheduler: run the held-back leaves that are due.

        Any kit may run any node's leaves; each runs exactly once. Returns how many this
        call announced. The background does this every ``leave_poll_interval``; tests
        call it directly instead of sleeping.
        """
        return self._drive(self._due_leaves_flow(limit))

    def heartbeat(self) -> bool:
        """Stamp this node alive (the background does it every ``heartbeat_interval``).

        Returns ``False`` when this node had been presumed dead and swept (it stalled,
        or lost Redis for longer than ``node_timeout``): it then takes a new incarnation
        and registers the sockets it still serves again.
        """
        return self._drive(self._heartbeat_flow())

    def sweep_dead_nodes(self) -> int:
        """Claim dead nodes and run the leave of each of their connections, exactly once.

        Returns how many connections this call recovered. The background calls it every
        ``heartbeat_interval``, but only while Redis has answered this node continuously
        for longer than ``node_timeout``; a direct call (an operator's) sweeps at once.
        """
        return self._drive(self._sweep_flow())

    def reconcile(self) -> int:
        """Compare this node's records with its live sockets, both ways; returns how
        many it fixed. A record with no live socket gets its leave run; a live socket
        with no record (its connect was lost, say forced out of a full outbox) is
        recorded again from the session it connected with (a teacher who was unknown
        to Redis then comes online: ``teacher_connect``).

        Needs ``local_sids()`` on the sockets port (the python-socketio adapters have it).
        """
        return self._drive(self._reconcile_flow())

    def run_background_step(self) -> None:
        """One pass of the background: heartbeat, replay, due leaves, sweeps and
        reconciling when due. Failures are logged, never raised."""
        self._drive(self._background_step_flow())

    def _background_loop(self) -> None:
        try:
            while not self._stopping:
                self.run_background_step()
                self._sockets.sleep(self._tick)
        finally:
            self._background_done = True

    def _wait_for_background(self, bound: float) -> None:
        # Wait (at most ``bound`` s) for the loop to exit, by polling its done flag with
        # the port's own sleep: a thread's handle takes ``join(timeout)``, but
        # engine.io's eventlet handle only ``join()`` (unbounded), and a bare sleep is
        # the one primitive every concurrency model gives us cooperatively. No handle
        # (the port started nothing, e.g. RecordingSockets): nothing to wait for.
        if self._background is None:
            return
        deadline = time.monotonic() + bound
        while not self._background_done:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("presence background did not stop within %.1fs", bound)
                return
            self._sockets.sleep(min(_CLOSE_POLL_INTERVAL, left))

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
        return self._drive(self._online_users_flow(org_id, role, lesson_id))

    def presence(
        self, org_id: Id, user_id: Id, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's state, connections, since when, and last leave reason (one round trip)."""
        return self._drive(self._presence_flow(org_id, user_id, role))

    def connections(
        self, org_id: Id, user_id: Id, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> tuple[ConnectionRecord, ...]:
        """A user's live connections in ``role``."""
        return self.presence(org_id, user_id, role).connections

    def nodes(self) -> list[NodeInfo]:
        """Every node incarnation registered in the store (this one and the others
        sharing it): its last heartbeat (Redis clock; ``None`` while being swept), its
        connection count and what it registered. For operators; ``TypeError`` for a
        third-party store without ``nodes()`` (see :class:`~presence_kit.ListsNodes`)."""
        return self._drive(self._nodes_flow())

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the background, hand this node's connections over, flush analytics
        (waiting at most ``timeout`` s) and release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wait_for_background(self._tick + 1.0)
        self._drive(self._handover_flow())
        self._close_analytics(timeout)
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


def _as_async_store(store: AsyncStore | Store) -> AsyncStore:
    from .memory import _InlineAsyncStore

    if isinstance(store, AsyncStore) and asyncio.iscoroutinefunction(store.connect):
        return store
    if isinstance(store, DeclaresBlocking) and store.blocking is False:
        return cast(AsyncStore, _InlineAsyncStore(cast(Store, store)))
    raise TypeError(
        f"{type(store).__name__} blocks; AsyncPresenceKit needs an async store "
        "(presence_kit.redis.AsyncRedisStore) or the in-memory MemoryStore"
    )


class AsyncPresenceKit(KitFlows):
    """Presence for an asyncio Socket.IO server (``socketio.AsyncServer``).

    The same behaviour as :class:`PresenceKit`, with awaitable methods.
    """

    def __init__(
        self,
        *,
        sockets: AsyncSockets,
        store: AsyncStore | Store | None = None,
        analytics: Analytics | None = None,
        settings: Settings | None = None,
        policies: Mapping[str, DisconnectPolicy] | None = None,
    ) -> None:
        given = store if store is not None else _default_store()
        async_store = _as_async_store(given)
        # The flows are typed against the blocking ports; this facade's driver awaits
        # what each of their calls returns, so the Async ports (the same methods, as
        # coroutines) stand in for them: the one place that says so. (``nodes`` is
        # looked for on the store as given: a wrapped MemoryStore forwards it.)
        super().__init__(
            store=cast(Store, async_store),
            sockets=cast(Sockets, sockets),
            node_lister=cast(ListsNodes, async_store) if isinstance(given, ListsNodes) else None,
            analytics=analytics,
            settings=settings,
            policies=policies,
        )
        self._async_store = async_store
        self._async_sockets = sockets

    @staticmethod
    def _begin(
        fn: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
    ) -> object:
        """Schedule a started call (a coroutine of an Async port) as a task."""
        return asyncio.ensure_future(cast(Awaitable[object], fn(*args, **kwargs)))

    @staticmethod
    def _finish(handle: object) -> object:
        return handle  # the task: the driver awaits it

    async def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                fn, args, kwargs, awaited = step
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    if awaited:
                        # A method of an Async port: a coroutine. (Not typing.cast: a
                        # function call per port call, 1-2 % of a handler's time.)
                        result = await result  # type: ignore[misc]
                except Exception as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value  # what the flow returned
            return value

    async def handle_connect(self, sid: str, session: Mapping[str, Any]) -> ConnectOutcome | None:
        """Record connection ``sid`` and join its rooms (as :meth:`PresenceKit.handle_connect`)."""
        return await self._drive(self._connect_flow(sid, session))

    async def handle_disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectOutcome | None:
        """Remove connection ``sid`` (see :meth:`PresenceKit.handle_disconnect`)."""
        return await self._drive(self._disconnect_flow(sid, session, reason))

    async def replay_outbox(self) -> int:
        """Make the queued store operations (see :meth:`PresenceKit.replay_outbox`)."""
        return await self._drive(self._replay_flow())

    async def run_due_leaves(self, limit: int = DUE_LEAVES_PER_STEP) -> int:
        """One step of the grace scheduler (see :meth:`PresenceKit.run_due_leaves`)."""
        return await self._drive(self._due_leaves_flow(limit))

    async def heartbeat(self) -> bool:
        """Stamp this node alive (see :meth:`PresenceKit.heartbeat`)."""
        return await self._drive(self._heartbeat_flow())

    async def sweep_dead_nodes(self) -> int:
        """Recover dead nodes' connections (see :meth:`PresenceKit.sweep_dead_nodes`)."""
        return await self._drive(self._sweep_flow())

    async def reconcile(self) -> int:
        """Leave this node's records that have no live socket (see
        :meth:`PresenceKit.reconcile`)."""
        return await self._drive(self._reconcile_flow())

    async def run_background_step(self) -> None:
        """One pass of the background (see :meth:`PresenceKit.run_background_step`)."""
        await self._drive(self._background_step_flow())

    async def _background_loop(self) -> None:
        while not self._stopping:
            await self.run_background_step()
            await self._async_sockets.sleep(self._tick)

    async def online_users(
        self,
        org_id: Id,
        role: str | ClientRole = ClientRole.TEACHER_APP,
        *,
        lesson_id: Id | None = None,
    ) -> list[OnlineUser]:
        """Users with live connections (see :meth:`PresenceKit.online_users`)."""
        return await self._drive(self._online_users_flow(org_id, role, lesson_id))

    async def presence(
        self, org_id: Id, user_id: Id, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's presence (see :meth:`PresenceKit.presence`)."""
        return await self._drive(self._presence_flow(org_id, user_id, role))

    async def connections(
        self, org_id: Id, user_id: Id, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> tuple[ConnectionRecord, ...]:
        """A user's live connections in ``role``."""
        return (await self.presence(org_id, user_id, role)).connections

    async def nodes(self) -> list[NodeInfo]:
        """Every registered node incarnation (as :meth:`PresenceKit.nodes`)."""
        return await self._drive(self._nodes_flow())

    async def aclose(self, timeout: float | None = 5.0) -> None:
        """Stop the background, hand this node's connections over, flush analytics (in
        a thread, at most ``timeout`` s) and release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        task = self._background
        if isinstance(task, asyncio.Future) and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drive(self._handover_flow())
        await asyncio.to_thread(self._close_analytics, timeout)
        await self._async_store.aclose()

    async def __aenter__(self) -> AsyncPresenceKit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
