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
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

from ._core import KitCore, KitStats, PendingOperation, group_online, port_call
from ._effects import Effect
from ._errors import StoreError
from ._model import (
    ConnectionRecord,
    ConnectOutcome,
    ConnectRequest,
    DisconnectOutcome,
    DisconnectStatus,
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


class _RateLimit:
    """Lets one event through per ``interval`` seconds (thread-safe enough for logs)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


def _log_store_failure(limit: _RateLimit, operation: str, sid: str, exc: BaseException) -> None:
    # An outage fails every handler: one warning with the traceback per 5 s, the rest
    # at DEBUG (the counters in kit.stats keep the exact numbers).
    extra = {"presence_operation": operation, "presence_sid": sid}
    if limit.ready():
        logger.warning(
            "presence store failed during %s; queued for replay (%s)",
            operation,
            type(exc).__name__,
            exc_info=exc,
            extra=extra,
        )
    else:
        logger.debug("presence store failed during %s: %s", operation, exc, extra=extra)


_BUCKETS_PER_READ = 32
"""Node-index buckets read per round trip during a sweep."""

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


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
        self._sockets_port = sockets
        self._analytics = analytics
        self._closed = False
        self._background: Any = None
        self._failure_logs = _RateLimit(5.0)
        self._background_started = False
        self._stopping = False

    @property
    def _needs_background(self) -> bool:
        if self._background_started or self._closed:
            return False
        self._background_started = True
        return True

    @property
    def _tick(self) -> float:
        s = self.settings
        return min(s.heartbeat_interval, s.leave_poll_interval)

    @property
    def _claim_ttl_ms(self) -> int:
        return self._core.node_timeout_ms

    def _due_steps(self) -> tuple[bool, bool]:
        """(heartbeat, reconcile) due now."""
        now, live, s = time.monotonic(), self._core.liveness, self.settings
        beat = now >= live.next_beat
        if beat:
            live.next_beat = now + s.heartbeat_interval
        reconcile = now >= live.next_reconcile
        if reconcile:
            live.next_reconcile = now + s.reconcile_interval
        return beat, reconcile

    def _may_sweep(self) -> bool:
        # Decided after this step's heartbeat: only with Redis answering continuously.
        return self._core.liveness.may_sweep(time.monotonic(), self.settings.node_timeout)

    def _local_sids(self) -> set[str] | None:
        local_sids = getattr(self._sockets_port, "local_sids", None)
        return set(local_sids()) if callable(local_sids) else None

    def _stale_requests(self, entries: Mapping[str, str], live: set[str]) -> list[Any]:
        core = self._core
        requests = [
            core.sweep_request(core.member, sid, entry, reason="stale connection")
            for sid, entry in entries.items()
            if sid not in live
        ]
        return [r for r in requests if r is not None]

    @property
    def _batch(self) -> int:
        return self.settings.sweep_batch

    def _sweep_requests(self, member: str, entries: Mapping[str, str]) -> list[Any]:
        requests = (self._core.sweep_request(member, sid, e) for sid, e in entries.items())
        return [r for r in requests if r is not None]

    def _shutdown_offset_ms(self) -> int:
        s = self.settings
        return round((s.shutdown_grace - s.node_timeout) * 1000)

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
        pending = PendingOperation("connect", sid, parsed, policy, request)
        if len(self._core.outbox) and not self.settings.strict_connect:
            self._core.queue(pending)  # Redis failed lately: keep the order, don't wait
        else:
            try:
                outcome = self._store.connect(request)
            except Exception as exc:
                failure = exc
                self._core.count("store_failures")
                _log_store_failure(self._failure_logs, "connect", sid, exc)
                if not self.settings.strict_connect:
                    self._core.queue(pending)
        self._core.local_sessions[sid] = session
        self._run(self._core.connect_effects(sid, parsed, policy, outcome))
        if failure is not None and self.settings.strict_connect:
            raise StoreError("presence store failed during connect") from failure
        return outcome

    def handle_disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectOutcome | None:
        """Remove connection ``sid``, announce a real leave once, and leave its rooms.

        Raises only :class:`~presence_kit.InvalidSessionError`, before any I/O; a
        backend failure is logged and counted, the rooms are left, ``None`` is returned,
        and the operation is queued for the background to replay once Redis answers.
        """
        sid, parsed, policy, request = self._core.prepare_disconnect(sid, session, reason)
        self._start_background()
        self._core.local_sessions.pop(sid, None)
        outcome: DisconnectOutcome | None = None
        pending = PendingOperation("disconnect", sid, parsed, policy, request)
        if len(self._core.outbox):
            # Redis failed lately and the replay has not caught up: queue behind it,
            # in order, instead of waiting on Redis again.
            self._core.queue(pending)
        else:
            try:
                outcome = self._store.disconnect(request)
            except Exception as exc:
                self._core.count("store_failures")
                _log_store_failure(self._failure_logs, "disconnect", sid, exc)
                self._core.queue(pending)
        self._run(self._core.disconnect_effects(sid, parsed, policy, outcome, request.reason))
        return outcome

    def replay_outbox(self) -> int:
        """Make the store operations that failed, in order, and announce what they grant.

        Stops at the first failure (Redis still down) and keeps the rest; returns how
        many were made. The background calls it every step; idempotent scripts make a
        replay of an operation that had in fact run harmless.
        """
        replayed, outbox = 0, self._core.outbox
        while (op := outbox.peek()) is not None:
            if isinstance(op.request, ConnectRequest):
                outcome: Any = self._store.connect(op.request)
            else:
                outcome = self._store.disconnect(op.request)
            outbox.pop()
            replayed += 1
            self._run(self._core.replayed_effects(op, outcome))
        return replayed

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
            self._run(self._core.finished_leave_effects(finished))
        return announced

    def heartbeat(self) -> bool:
        """Stamp this node alive (the background does it every ``heartbeat_interval``).

        Returns ``False`` when this node had been presumed dead and swept (it stalled,
        or lost Redis for longer than ``node_timeout``): it then takes a new incarnation
        and registers the sockets it still serves again.
        """
        live = self._core.liveness
        try:
            ok = self._store.heartbeat(self._core.heartbeat_call(first=not live.registered))
        except Exception:
            live.failed()
            raise
        live.answered(time.monotonic(), self.settings.node_timeout)
        live.registered = True
        if not ok:
            self._register_again()
        return ok

    def _register_again(self) -> None:
        core = self._core
        core.count("fenced")
        logger.warning("this node was presumed dead and swept; registering its sockets again")
        core.new_incarnation()
        core.liveness.registered = False
        self.heartbeat()
        live = self._local_sids()
        for sid, session in list(core.local_sessions.items()):
            if live is None or sid in live:
                self.handle_connect(sid, session)

    def sweep_dead_nodes(self) -> int:
        """Claim dead nodes and run the leave of each of their connections, exactly once.

        Returns how many connections this call recovered. The background calls it every
        ``heartbeat_interval``, but only while Redis has answered this node continuously
        for longer than ``node_timeout``; a direct call (an operator's) sweeps at once.
        """
        core, recovered = self._core, 0
        while True:
            member = self._store.claim_node(core.keys, core.node_timeout_ms, self._claim_ttl_ms)
            if member is None:
                return recovered
            for buckets in _chunks(core.keys.node_indexes(member), _BUCKETS_PER_READ):
                entries = self._store.node_connections(buckets)
                for batch in _chunks(self._sweep_requests(member, entries), self._batch):
                    recovered += self._recover(batch)
                    self._store.renew_claim(core.keys, member, self._claim_ttl_ms)
            self._store.release_node(core.keys, member)
            logger.info("swept a lost node", extra={"presence_node": member})

    def reconcile(self) -> int:
        """Run the leave of this node's records that have no live socket; returns how many.

        Needs ``local_sids()`` on the sockets port (the python-socketio adapters have it).
        """
        if self._local_sids() is None:
            return 0
        entries = self._store.node_connections(self._core.keys.node_indexes(self._core.member))
        # Read the sockets after the records: a record is written after its socket
        # joined the server, so a record whose socket is missing now really is stale.
        live = self._local_sids() or set()
        return self._recover(self._stale_requests(entries, live))

    def _recover(self, requests: Sequence[Any]) -> int:
        if not requests:
            return 0
        recovered = 0
        for request, outcome in zip(requests, self._store.disconnect_many(requests), strict=True):
            if outcome.status is DisconnectStatus.REMOVED:
                recovered += 1
                self._run(self._core.recovered_effects(outcome, request.reason))
        self._core.count("recovered", recovered)
        return recovered

    def _start_background(self) -> None:
        if self._needs_background:
            self._background = self._sockets.start_background_task(self._background_loop)

    def _background_loop(self) -> None:
        while not self._stopping:
            self.run_background_step()
            self._sockets.sleep(self._tick)

    def run_background_step(self) -> None:
        """One pass of the background: heartbeat, due leaves, sweeps and reconciling
        when due. Failures are logged, never raised."""
        beat, reconcile = self._due_steps()
        steps: list[Callable[[], object]] = [self.heartbeat] if beat else []
        if len(self._core.outbox):
            steps.append(self.replay_outbox)
        steps.append(self.run_due_leaves)
        if beat:
            steps.append(lambda: self._may_sweep() and self.sweep_dead_nodes())
        if reconcile:
            steps.append(self.reconcile)
        for step in steps:
            try:
                step()
            except Exception as exc:
                _log_background_failure(exc)

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
            join(self._tick + 1.0)
        if self._core.liveness.registered:
            # Hand the connections over: they are swept after shutdown_grace, unless
            # their clients reconnect elsewhere first.
            try:
                self._store.heartbeat(
                    self._core.heartbeat_call(first=False, offset_ms=self._shutdown_offset_ms())
                )
            except Exception as exc:
                _log_background_failure(exc)
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
    """Runs a non-blocking sync store (the in-memory one) from the event loop: each of
    its port methods, awaited."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call

    async def aclose(self) -> None:
        self._store.close()


def _as_async_store(store: AsyncStore | Store | None) -> AsyncStore:
    if store is None:
        return cast(AsyncStore, _InlineAsyncStore(_default_store()))
    if isinstance(store, AsyncStore) and asyncio.iscoroutinefunction(store.connect):
        return store
    if getattr(store, "blocking", True) is False:
        return cast(AsyncStore, _InlineAsyncStore(cast(Store, store)))
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
        pending = PendingOperation("connect", sid, parsed, policy, request)
        if len(self._core.outbox) and not self.settings.strict_connect:
            self._core.queue(pending)  # Redis failed lately: keep the order, don't wait
        else:
            try:
                outcome = await self._store.connect(request)
            except Exception as exc:
                failure = exc
                self._core.count("store_failures")
                _log_store_failure(self._failure_logs, "connect", sid, exc)
                if not self.settings.strict_connect:
                    self._core.queue(pending)
        self._core.local_sessions[sid] = session
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
        self._core.local_sessions.pop(sid, None)
        outcome: DisconnectOutcome | None = None
        pending = PendingOperation("disconnect", sid, parsed, policy, request)
        if len(self._core.outbox):
            # Redis failed lately and the replay has not caught up: queue behind it,
            # in order, instead of waiting on Redis again.
            self._core.queue(pending)
        else:
            try:
                outcome = await self._store.disconnect(request)
            except Exception as exc:
                self._core.count("store_failures")
                _log_store_failure(self._failure_logs, "disconnect", sid, exc)
                self._core.queue(pending)
        await self._run(
            self._core.disconnect_effects(sid, parsed, policy, outcome, request.reason)
        )
        return outcome

    async def replay_outbox(self) -> int:
        """Make the queued store operations (see :meth:`PresenceKit.replay_outbox`)."""
        replayed, outbox = 0, self._core.outbox
        while (op := outbox.peek()) is not None:
            if isinstance(op.request, ConnectRequest):
                outcome: Any = await self._store.connect(op.request)
            else:
                outcome = await self._store.disconnect(op.request)
            outbox.pop()
            replayed += 1
            await self._run(self._core.replayed_effects(op, outcome))
        return replayed

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
            await self._run(self._core.finished_leave_effects(finished))
        return announced

    async def heartbeat(self) -> bool:
        """Stamp this node alive (see :meth:`PresenceKit.heartbeat`)."""
        live = self._core.liveness
        try:
            ok = await self._store.heartbeat(self._core.heartbeat_call(first=not live.registered))
        except Exception:
            live.failed()
            raise
        live.answered(time.monotonic(), self.settings.node_timeout)
        live.registered = True
        if not ok:
            await self._register_again()
        return ok

    async def _register_again(self) -> None:
        core = self._core
        core.count("fenced")
        logger.warning("this node was presumed dead and swept; registering its sockets again")
        core.new_incarnation()
        core.liveness.registered = False
        await self.heartbeat()
        live = self._local_sids()
        for sid, session in list(core.local_sessions.items()):
            if live is None or sid in live:
                await self.handle_connect(sid, session)

    async def sweep_dead_nodes(self) -> int:
        """Recover dead nodes' connections (see :meth:`PresenceKit.sweep_dead_nodes`)."""
        core, recovered = self._core, 0
        while True:
            member = await self._store.claim_node(
                core.keys, core.node_timeout_ms, self._claim_ttl_ms
            )
            if member is None:
                return recovered
            for buckets in _chunks(core.keys.node_indexes(member), _BUCKETS_PER_READ):
                entries = await self._store.node_connections(buckets)
                for batch in _chunks(self._sweep_requests(member, entries), self._batch):
                    recovered += await self._recover(batch)
                    await self._store.renew_claim(core.keys, member, self._claim_ttl_ms)
            await self._store.release_node(core.keys, member)
            logger.info("swept a lost node", extra={"presence_node": member})

    async def reconcile(self) -> int:
        """Leave this node's records that have no live socket (see
        :meth:`PresenceKit.reconcile`)."""
        if self._local_sids() is None:
            return 0
        indexes = self._core.keys.node_indexes(self._core.member)
        entries = await self._store.node_connections(indexes)
        live = self._local_sids() or set()  # after the records (see PresenceKit.reconcile)
        return await self._recover(self._stale_requests(entries, live))

    async def _recover(self, requests: Sequence[Any]) -> int:
        if not requests:
            return 0
        recovered = 0
        outcomes = await self._store.disconnect_many(requests)
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome.status is DisconnectStatus.REMOVED:
                recovered += 1
                await self._run(self._core.recovered_effects(outcome, request.reason))
        self._core.count("recovered", recovered)
        return recovered

    def _start_background(self) -> None:
        if self._needs_background:
            self._background = self._sockets.start_background_task(self._background_loop)

    async def _background_loop(self) -> None:
        while not self._stopping:
            await self.run_background_step()
            await self._sockets.sleep(self._tick)

    async def _sweep_if_safe(self) -> int:
        return await self.sweep_dead_nodes() if self._may_sweep() else 0

    async def run_background_step(self) -> None:
        """One pass of the background (see :meth:`PresenceKit.run_background_step`)."""
        beat, reconcile = self._due_steps()
        steps: list[Callable[[], Awaitable[object]]] = [self.heartbeat] if beat else []
        if len(self._core.outbox):
            steps.append(self.replay_outbox)
        steps.append(self.run_due_leaves)
        if beat:
            steps.append(self._sweep_if_safe)
        if reconcile:
            steps.append(self.reconcile)
        for step in steps:
            try:
                await step()
            except Exception as exc:
                _log_background_failure(exc)

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
        if self._core.liveness.registered:
            try:
                await self._store.heartbeat(
                    self._core.heartbeat_call(first=False, offset_ms=self._shutdown_offset_ms())
                )
            except Exception as exc:
                _log_background_failure(exc)
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
