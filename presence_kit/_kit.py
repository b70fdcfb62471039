"""The facades: :class:`PresenceKit` (blocking) and :class:`AsyncPresenceKit` (asyncio).

Each handler call is: validate (raises :class:`~presence_kit.InvalidSessionError`
before any I/O) -> one store transition -> the role's pure policy -> the effects,
through the ports. The two classes differ only in whether they await the ports; the
steps themselves live in :mod:`presence_kit._core`.

Backend failures never escape ``handle_disconnect``: python-socketio runs its own room
cleanup only after the disconnect handler returns, so raising there would leave the
sid in every room. They are logged and counted (:attr:`PresenceKit.stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from ._core import KitCore, KitStats, group_online, port_call
from ._effects import Effect
from ._errors import StoreError
from ._model import (
    ConnectionRecord,
    ConnectOutcome,
    DisconnectOutcome,
    FinishLeaveOutcome,
    OnlineUser,
    UserPresence,
)
from ._policies import DisconnectPolicy
from ._ports import Analytics, AsyncSockets, AsyncStore, Sockets, Store
from ._roles import ClientRole
from ._settings import Settings

__all__ = ["AsyncPresenceKit", "PresenceKit"]

logger = logging.getLogger("presence_kit")


def _default_store() -> Store:
    from .memory import MemoryStore

    return MemoryStore()


def _namespace(sockets: object) -> str:
    namespace = getattr(sockets, "namespace", "/")
    return namespace if isinstance(namespace, str) else "/"


def _log_store_failure(operation: str, sid: str, exc: BaseException) -> None:
    logger.warning(
        "presence store failed during %s; continuing without it",
        operation,
        exc_info=exc,
        extra={"presence_operation": operation, "presence_sid": sid},
    )


def _log_background_failure(exc: BaseException) -> None:
    logger.warning("presence background step failed; retrying later", exc_info=exc)


def _log_effect_failure(effect: Effect, exc: BaseException) -> None:
    logger.warning(
        "presence effect %s failed",
        type(effect).__name__,
        exc_info=exc,
        extra={"presence_effect": type(effect).__name__},
    )


class _BaseKit:
    """What both facades share: the core, the policies, the counters."""

    def __init__(
        self,
        *,
        sockets: object,
        analytics: Analytics | None,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
    ) -> None:
        self._core = KitCore(settings=settings, policies=policies, namespace=_namespace(sockets))
        self._analytics = analytics
        self._closed = False
        self._background: Any = None
        self._stopping = False

    @property
    def _needs_background(self) -> bool:
        return self.settings.leave_grace > 0 and self._background is None and not self._closed

    def _finished(self, finished: FinishLeaveOutcome) -> Sequence[Effect]:
        effects = self._core.finished_leave_effects(finished)
        return effects

    @property
    def settings(self) -> Settings:
        """The kit's settings."""
        return self._core.settings

    @property
    def node_id(self) -> str:
        """This kit's node id (from :attr:`Settings.node_id` or generated)."""
        return self._core.node_id

    @property
    def stats(self) -> KitStats:
        """Counters: handled connects/disconnects, announcements, backend failures."""
        return self._core.stats()

    def register_policy(self, role: str, policy: DisconnectPolicy) -> None:
        """Handle sessions of ``role`` with ``policy`` (adds a role or replaces one)."""
        self._core.policies.register(role, policy)

    def _track(self, effect: Effect) -> None:
        call = port_call(effect)
        if self._analytics is not None:
            getattr(self._analytics, call.method)(*call.args, **call.kwargs)

    def _close_analytics(self, timeout: float | None) -> None:
        if self._analytics is not None:
            self._analytics.close(timeout)


class PresenceKit(_BaseKit):
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
        super().__init__(
            sockets=sockets, analytics=analytics, settings=settings, policies=policies
        )
        self._store = store if store is not None else _default_store()
        self._sockets = sockets

    def handle_connect(self, sid: str, session: Mapping[str, Any]) -> ConnectOutcome | None:
        """Record connection ``sid`` and join its rooms.

        Raises :class:`~presence_kit.InvalidSessionError` (a ``ValueError``) before
        anything is written or joined. On a store failure the rooms are still joined and
        ``None`` is returned (or :class:`~presence_kit.StoreError` raised with
        ``Settings.strict_connect``).
        """
        sid, parsed, policy, request = self._core.prepare_connect(sid, session)
        self._start_background()
        outcome: ConnectOutcome | None = None
        failure: Exception | None = None
        try:
            outcome = self._store.connect(request)
        except Exception as exc:
            failure = exc
            self._core.count("store_failures")
            _log_store_failure("connect", sid, exc)
        self._run(self._core.connect_effects(sid, parsed, policy, outcome))
        if failure is not None and self.settings.strict_connect:
            raise StoreError("presence store failed during connect") from failure
        return outcome

    def handle_disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectOutcome | None:
        """Remove connection ``sid``, announce a real leave once, and leave its rooms.

        Raises only :class:`~presence_kit.InvalidSessionError`, before any I/O; a
        backend failure is logged and counted, the rooms are left, and ``None`` is
        returned.
        """
        sid, parsed, policy, request = self._core.prepare_disconnect(sid, session, reason)
        self._start_background()
        outcome: DisconnectOutcome | None = None
        try:
            outcome = self._store.disconnect(request)
        except Exception as exc:
            self._core.count("store_failures")
            _log_store_failure("disconnect", sid, exc)
        self._run(self._core.disconnect_effects(sid, parsed, policy, outcome, request.reason))
        return outcome

    def run_due_leaves(self, limit: int = 100) -> int:
        """One step of the grace scheduler: run the held-back leaves that are due.

        Any kit may run any node's leaves; each runs exactly once. Returns how many this
        call announced. The background does this every ``leave_poll_interval``; tests
        call it directly instead of sleeping.
        """
        announced = 0
        for member in self._store.due_leaves(self._core.keys.leave_queue(), limit):
            request = self._core.finish_request(member)
            if request is None:
                continue
            finished = self._store.finish_leave(request)
            if finished.outcome is not None:
                announced += 1
            self._run(self._finished(finished))
        return announced

    def _start_background(self) -> None:
        if self._needs_background:
            self._background = self._sockets.start_background_task(self._background_loop)

    def _background_loop(self) -> None:
        while not self._stopping:
            try:
                self.run_due_leaves()
            except Exception as exc:
                _log_background_failure(exc)
            self._sockets.sleep(self.settings.leave_poll_interval)

    def online_users(
        self,
        org_id: Any,
        role: str | ClientRole = ClientRole.TEACHER_APP,
        *,
        lesson_id: Any = None,
    ) -> list[OnlineUser]:
        """Users of ``org_id`` with live connections in ``role`` (in ``lesson_id``, if given).

        Reads one index; the cost is proportional to the answer.
        """
        query = self._core.org_query(org_id, role)
        lesson = self._core.lesson_filter(lesson_id)
        return group_online(self._store.org_connections(query), lesson)

    def presence(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's state, connections, since when, and last leave reason (one round trip)."""
        alive, conns = self._core.presence_keys(org_id, user_id, role)
        return self._store.presence(alive, conns, self.settings.state_field)

    def connections(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> tuple[ConnectionRecord, ...]:
        """A user's live connections in ``role``."""
        return self.presence(org_id, user_id, role).connections

    def _run(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            call = port_call(effect)
            try:
                if call.port == "analytics":
                    self._track(effect)
                else:
                    getattr(self._sockets, call.method)(*call.args, **call.kwargs)
            except Exception as exc:
                self._core.count("sockets_failures")
                _log_effect_failure(effect, exc)

    def close(self, timeout: float | None = 5.0) -> None:
        """Flush analytics (waiting at most ``timeout`` s) and release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        join = getattr(self._background, "join", None)
        if callable(join):
            join(self.settings.leave_poll_interval + 1.0)
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


class _InlineAsyncStore:
    """Runs a non-blocking sync store (the in-memory one) from the event loop."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def connect(self, request: Any) -> ConnectOutcome:
        return self._store.connect(request)

    async def disconnect(self, request: Any) -> DisconnectOutcome:
        return self._store.disconnect(request)

    async def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        return self._store.due_leaves(queue_key, limit)

    async def finish_leave(self, request: Any) -> FinishLeaveOutcome:
        return self._store.finish_leave(request)

    async def presence(self, alive_key: str, connections_key: str, state_field: str) -> Any:
        return self._store.presence(alive_key, connections_key, state_field)

    async def org_connections(self, query: Any) -> Any:
        return self._store.org_connections(query)

    async def aclose(self) -> None:
        self._store.close()


def _as_async_store(store: AsyncStore | Store | None) -> AsyncStore:
    if store is None:
        return _InlineAsyncStore(_default_store())
    if isinstance(store, AsyncStore) and asyncio.iscoroutinefunction(store.connect):
        return store
    if getattr(store, "blocking", True) is False and isinstance(store, Store):
        return _InlineAsyncStore(store)
    raise TypeError(
        f"{type(store).__name__} blocks; AsyncPresenceKit needs an async store "
        "(presence_kit.redis.AsyncRedisStore) or the in-memory MemoryStore"
    )


class AsyncPresenceKit(_BaseKit):
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
        super().__init__(
            sockets=sockets, analytics=analytics, settings=settings, policies=policies
        )
        self._store = _as_async_store(store)
        self._sockets = sockets

    async def handle_connect(self, sid: str, session: Mapping[str, Any]) -> ConnectOutcome | None:
        """Record connection ``sid`` and join its rooms (as :meth:`PresenceKit.handle_connect`)."""
        sid, parsed, policy, request = self._core.prepare_connect(sid, session)
        self._start_background()
        outcome: ConnectOutcome | None = None
        failure: Exception | None = None
        try:
            outcome = await self._store.connect(request)
        except Exception as exc:
            failure = exc
            self._core.count("store_failures")
            _log_store_failure("connect", sid, exc)
        await self._run(self._core.connect_effects(sid, parsed, policy, outcome))
        if failure is not None and self.settings.strict_connect:
            raise StoreError("presence store failed during connect") from failure
        return outcome

    async def handle_disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectOutcome | None:
        """Remove connection ``sid`` (see :meth:`PresenceKit.handle_disconnect`)."""
        sid, parsed, policy, request = self._core.prepare_disconnect(sid, session, reason)
        self._start_background()
        outcome: DisconnectOutcome | None = None
        try:
            outcome = await self._store.disconnect(request)
        except Exception as exc:
            self._core.count("store_failures")
            _log_store_failure("disconnect", sid, exc)
        await self._run(
            self._core.disconnect_effects(sid, parsed, policy, outcome, request.reason)
        )
        return outcome

    async def run_due_leaves(self, limit: int = 100) -> int:
        """One step of the grace scheduler (see :meth:`PresenceKit.run_due_leaves`)."""
        announced = 0
        for member in await self._store.due_leaves(self._core.keys.leave_queue(), limit):
            request = self._core.finish_request(member)
            if request is None:
                continue
            finished = await self._store.finish_leave(request)
            if finished.outcome is not None:
                announced += 1
            await self._run(self._finished(finished))
        return announced

    def _start_background(self) -> None:
        if self._needs_background:
            self._background = self._sockets.start_background_task(self._background_loop)

    async def _background_loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_due_leaves()
            except Exception as exc:
                _log_background_failure(exc)
            await self._sockets.sleep(self.settings.leave_poll_interval)

    async def online_users(
        self,
        org_id: Any,
        role: str | ClientRole = ClientRole.TEACHER_APP,
        *,
        lesson_id: Any = None,
    ) -> list[OnlineUser]:
        """Users with live connections (see :meth:`PresenceKit.online_users`)."""
        query = self._core.org_query(org_id, role)
        lesson = self._core.lesson_filter(lesson_id)
        return group_online(await self._store.org_connections(query), lesson)

    async def presence(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's presence (see :meth:`PresenceKit.presence`)."""
        alive, conns = self._core.presence_keys(org_id, user_id, role)
        return await self._store.presence(alive, conns, self.settings.state_field)

    async def connections(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> tuple[ConnectionRecord, ...]:
        """A user's live connections in ``role``."""
        return (await self.presence(org_id, user_id, role)).connections

    async def _run(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            call = port_call(effect)
            try:
                if call.port == "analytics":
                    self._track(effect)
                else:
                    await getattr(self._sockets, call.method)(*call.args, **call.kwargs)
            except Exception as exc:
                self._core.count("sockets_failures")
                _log_effect_failure(effect, exc)

    async def aclose(self, timeout: float | None = 5.0) -> None:
        """Flush analytics (in a thread, at most ``timeout`` s) and release the store."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        task = self._background
        if isinstance(task, asyncio.Future) and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self._close_analytics, timeout)
        await self._store.aclose()

    async def __aenter__(self) -> AsyncPresenceKit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
