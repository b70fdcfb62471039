"""The facades: :class:`PresenceKit` (blocking) and :class:`AsyncPresenceKit` (asyncio).

Every operation is written once, as a *flow*: a generator that does the pure work (in
:mod:`presence_kit._core`) and yields each I/O it needs as a :class:`_Call` on a port
(the store, the sockets, analytics). The two facades differ only in their driver:
:class:`PresenceKit` makes each call and sends the result back, and
:class:`AsyncPresenceKit` awaits it. A failing call is thrown into the flow at its
``yield``, so error handling is written once too.

A handler call is: validate (raises :class:`~presence_kit.InvalidSessionError` before
any I/O) -> one store transition -> the role's pure policy -> the effects. Backend
failures never escape ``handle_disconnect``: python-socketio runs its own room cleanup
only after the disconnect handler returns, so raising there would leave the sid in
every room. They are logged, counted (:attr:`PresenceKit.stats`) and queued for the
background to replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar, cast

from ._core import KitCore, KitStats, group_online
from ._effects import Effect, Emit, JoinRoom, LeaveRoom, Track
from ._errors import StoreError
from ._model import (
    ConnectionRecord,
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
    NodeInfo,
    OnlineUser,
    UserPresence,
)
from ._outbox import PendingOperation
from ._policies import DisconnectPolicy
from ._ports import Analytics, AsyncSockets, AsyncStore, Sockets, Store
from ._roles import ClientRole
from ._settings import Settings

__all__ = ["AsyncPresenceKit", "PresenceKit"]

logger = logging.getLogger("presence_kit")

T = TypeVar("T")

_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})

_BUCKETS_PER_READ = 32
"""Node-index buckets read per round trip during a sweep."""

_CLOSE_POLL_INTERVAL = 0.01
"""Seconds between looks at the background loop's done flag while ``close()`` waits."""

_DUE_LEAVES_PER_STEP = 100
"""Held-back leaves run per grace-scheduler step (``run_due_leaves``' default limit).

Each costs a round trip, so one background step stays short however many are due;
the rest are picked up by the next step, ``leave_poll_interval`` later."""


class _Call:
    """One I/O a flow needs: ``fn(*args, **kwargs)``, a method of a port (the store, the
    sockets, analytics). ``awaited`` is false for analytics, which only enqueues."""

    __slots__ = ("args", "awaited", "fn", "kwargs")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] = _NO_KWARGS,
        awaited: bool = True,
    ) -> None:
        self.fn, self.args, self.kwargs, self.awaited = fn, args, kwargs, awaited


_Flow = Generator[_Call, Any, T]
"""An operation written once: it yields its I/O and returns its result."""


class _RateLimit:
    """Lets one event through per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


def _default_store() -> Store:
    from .memory import MemoryStore

    return MemoryStore()


def _namespace(sockets: object) -> str:
    namespace = getattr(sockets, "namespace", "/")
    return namespace if isinstance(namespace, str) else "/"


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


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
    """Everything both facades do, as flows; the facades only drive them."""

    def __init__(
        self,
        *,
        sockets: Any,
        analytics: Analytics | None,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
    ) -> None:
        self._core = KitCore(settings=settings, policies=policies, namespace=_namespace(sockets))
        self._sockets = sockets
        self._analytics = analytics
        self._closed = False
        self._background: Any = None
        self._background_started = False
        self._stopping = False
        self._failure_logs = _RateLimit(5.0)

    # --- public state ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The kit's settings."""
        return self._core.settings

    @property
    def node_id(self) -> str:
        """This kit's node id (from :attr:`Settings.node_id` or generated)."""
        return self._core.node_id

    @property
    def incarnation(self) -> str:
        """This kit's current incarnation of its node: new when it learns it was swept
        while alive (fenced). :meth:`nodes` lists it as ``f"{node_id}/{incarnation}"``,
        and each :class:`~presence_kit.ConnectionRecord` it writes carries it."""
        return self._core.incarnation

    @property
    def pending(self) -> int:
        """Store operations waiting in the outbox for replay (the one being replayed
        included): non-zero after a Redis failure until the replay has caught up."""
        return len(self._core.outbox)

    @property
    def stats(self) -> KitStats:
        """Counters: handled connects/disconnects, announcements, backend failures."""
        return self._core.stats()

    def register_policy(self, role: str, policy: DisconnectPolicy) -> None:
        """Handle sessions of ``role`` with ``policy`` (adds a role or replaces one)."""
        self._core.policies.register(role, policy)

    # --- handlers -------------------------------------------------------------------

    def _connect_flow(
        self, sid: object, session: Mapping[str, Any]
    ) -> _Flow[ConnectOutcome | None]:
        core = self._core
        sid, parsed, policy, request = core.prepare_connect(sid, session)
        self._start_background()
        strict = self.settings.strict_connect
        pending = PendingOperation("connect", sid, parsed, policy, request)
        outcome: ConnectOutcome | None = None
        failure: Exception | None = None
        if len(core.outbox) and not strict:
            core.queue(pending)  # Redis failed lately: keep the order, don't wait
        else:
            try:
                outcome = yield _Call(self._store.connect, (request,))
            except Exception as exc:
                failure = exc
                core.count("store_failures")
                _log_store_failure(self._failure_logs, "connect", sid, exc)
                if not strict:
                    core.queue(pending)
        core.local_sessions[sid] = session
        yield from self._effects_flow(core.connect_effects(sid, parsed, policy, outcome))
        if failure is not None and strict:
            raise StoreError("presence store failed during connect") from failure
        return outcome

    def _disconnect_flow(
        self, sid: object, session: Mapping[str, Any], reason: object
    ) -> _Flow[DisconnectOutcome | None]:
        core = self._core
        sid, parsed, policy, request = core.prepare_disconnect(sid, session, reason)
        self._start_background()
        core.local_sessions.pop(sid, None)
        outcome: DisconnectOutcome | None = None
        pending = PendingOperation("disconnect", sid, parsed, policy, request)
        if len(core.outbox):
            # Redis failed lately and the replay has not caught up: queue behind it,
            # in order, instead of waiting on Redis again.
            core.queue(pending)
        else:
            try:
                outcome = yield _Call(self._store.disconnect, (request,))
            except Exception as exc:
                core.count("store_failures")
                _log_store_failure(self._failure_logs, "disconnect", sid, exc)
                core.queue(pending)
        effects = core.disconnect_effects(sid, parsed, policy, outcome, request.reason)
        yield from self._effects_flow(effects)
        return outcome

    def _effects_flow(self, effects: Sequence[Effect]) -> _Flow[None]:
        for effect in effects:
            call = self._effect_call(effect)
            if call is None:
                continue
            try:
                yield call
            except Exception as exc:
                self._core.count("sockets_failures")
                _log_effect_failure(effect, exc)

    def _effect_call(self, effect: Effect) -> _Call | None:
        """The port call that runs ``effect`` (``None``: tracking with no analytics)."""
        sockets = self._sockets
        if isinstance(effect, Emit):
            return _Call(sockets.emit, (effect.event, effect.data), {"to": effect.to})
        if isinstance(effect, LeaveRoom):
            return _Call(sockets.leave_room, (effect.sid, effect.room))
        if isinstance(effect, JoinRoom):
            return _Call(sockets.enter_room, (effect.sid, effect.room))
        if isinstance(effect, Track):
            analytics = self._analytics
            return None if analytics is None else _Call(analytics.track, (effect,), awaited=False)
        raise TypeError(f"not an effect: {effect!r}")

    # --- background steps -----------------------------------------------------------

    def _replay_flow(self) -> _Flow[int]:
        core, replayed = self._core, 0
        while (op := core.outbox.take()) is not None:
            store = self._store
            method = store.connect if isinstance(op.request, ConnectRequest) else store.disconnect
            try:
                outcome = yield _Call(method, (op.request,))
            except BaseException:
                core.outbox.put_back()  # a failure stops the replay; the order is kept
                raise
            core.outbox.done()
            replayed += 1
            yield from self._effects_flow(core.replayed_effects(op, outcome))
        return replayed

    def _due_leaves_flow(self, limit: int) -> _Flow[int]:
        core, announced = self._core, 0
        members = yield _Call(self._store.due_leaves, (core.keys.leave_queue(), limit))
        for member in members:
            request = core.finish_request(member)
            if request is None:
                continue
            finished = yield _Call(self._store.finish_leave, (request,))
            if finished.outcome is not None:
                announced += 1
            yield from self._effects_flow(core.finished_leave_effects(finished))
        return announced

    def _heartbeat_flow(self) -> _Flow[bool]:
        core, live = self._core, self._core.liveness
        try:
            ok = yield _Call(
                self._store.heartbeat, (core.heartbeat_call(first=not live.registered),)
            )
        except Exception:
            live.failed()
            raise
        live.answered(time.monotonic(), self.settings.node_timeout)
        live.registered = True
        if not ok:
            yield from self._register_again_flow()
        return bool(ok)

    def _register_again_flow(self) -> _Flow[None]:
        core = self._core
        core.count("fenced")
        logger.warning("this node was presumed dead and swept; registering its sockets again")
        core.new_incarnation()
        core.liveness.registered = False
        yield from self._heartbeat_flow()
        live = self._local_sids()
        for sid, session in list(core.local_sessions.items()):
            if live is None or sid in live:
                yield from self._connect_flow(sid, session)

    def _sweep_flow(self) -> _Flow[int]:
        core, recovered = self._core, 0
        keys, timeout_ms, ttl_ms = core.keys, core.node_timeout_ms, core.node_timeout_ms
        while True:
            member = yield _Call(self._store.claim_node, (keys, timeout_ms, ttl_ms))
            if member is None:
                return recovered
            for buckets in _chunks(keys.node_indexes(member), _BUCKETS_PER_READ):
                entries = yield _Call(self._store.node_connections, (buckets,))
                requests = [core.sweep_request(member, sid, e) for sid, e in entries.items()]
                usable = [r for r in requests if r is not None]
                for batch in _chunks(usable, self.settings.sweep_batch):
                    recovered += yield from self._recover_flow(batch)
                    yield _Call(self._store.renew_claim, (keys, member, ttl_ms))
            yield _Call(self._store.release_node, (keys, member))
            logger.info("swept a lost node", extra={"presence_node": member})

    def _sweep_if_safe_flow(self) -> _Flow[int]:
        # Decided after this step's heartbeat: only with Redis answering continuously.
        if not self._core.liveness.may_sweep(time.monotonic(), self.settings.node_timeout):
            return 0
        return (yield from self._sweep_flow())

    def _reconcile_flow(self) -> _Flow[int]:
        core = self._core
        if self._local_sids() is None:
            return 0
        entries = yield _Call(self._store.node_connections, (core.keys.node_indexes(core.member),))
        # Read the sockets after the records: a record is written after its socket
        # joined the server, so a record whose socket is missing now really is stale.
        live = self._local_sids() or set()
        requests = [
            core.sweep_request(core.member, sid, entry, reason="stale connection")
            for sid, entry in entries.items()
            if sid not in live
        ]
        recovered = yield from self._recover_flow([r for r in requests if r is not None])
        repaired = yield from self._repair_flow(live.difference(entries))
        return recovered + repaired

    def _repair_flow(self, unrecorded: set[str]) -> _Flow[int]:
        """Record again the live sockets of this node that Redis does not know (their
        connect was forced out of a full outbox, or lost): from the kit's own sessions.

        The socket may disconnect while its record is written. A disconnect that landed
        first left a tombstone (the connect is refused: STALE), or found no record (then
        this flow removes the record it just wrote: the handler popped the session, so
        it is seen missing here); one that lands after removes it as usual. Either way
        the connection never comes back, and its leave is announced once (the attempt
        ids tell a replayed handler call that this flow made the removal)."""
        core, repaired = self._core, 0
        pending = core.outbox.sids()
        for sid in sorted(unrecorded):
            session = core.local_sessions.get(sid)
            if session is None or sid in pending:  # not ours, or the replay will make it
                continue
            sid, parsed, policy, request = core.prepare_connect(sid, session)
            outcome = yield _Call(self._store.connect, (request,))
            if outcome.status is not ConnectStatus.NEW:
                continue  # recorded meanwhile (REPEAT), or disconnected meanwhile (STALE)
            repaired += 1
            yield from self._effects_flow(core.repaired_effects(sid, parsed, policy, outcome))
            if sid not in core.local_sessions:  # it disconnected while we wrote
                *_, undo = core.prepare_disconnect(sid, session, "stale connection")
                removed = yield _Call(self._store.disconnect, (undo,))
                yield from self._effects_flow(core.recovered_effects(removed, undo.reason))
        return repaired

    def _recover_flow(self, requests: Sequence[DisconnectRequest]) -> _Flow[int]:
        if not requests:
            return 0
        outcomes = yield _Call(self._store.disconnect_many, (requests,))
        recovered = 0
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome.status is DisconnectStatus.REMOVED:
                recovered += 1
                yield from self._effects_flow(
                    self._core.recovered_effects(outcome, request.reason)
                )
        self._core.count("recovered", recovered)
        return recovered

    def _background_step_flow(self) -> _Flow[None]:
        now, live, s = time.monotonic(), self._core.liveness, self.settings
        beat = now >= live.next_beat
        if beat:
            live.next_beat = now + s.heartbeat_interval
        reconcile = now >= live.next_reconcile
        if reconcile:
            live.next_reconcile = now + s.reconcile_interval
        steps: list[Callable[[], _Flow[Any]]] = [self._heartbeat_flow] if beat else []
        if len(self._core.outbox):
            steps.append(self._replay_flow)
        steps.append(partial(self._due_leaves_flow, _DUE_LEAVES_PER_STEP))
        if beat:
            steps.append(self._sweep_if_safe_flow)
        if reconcile:
            steps.append(self._reconcile_flow)
        for step in steps:
            try:
                yield from step()
            except Exception as exc:
                _log_background_failure(exc)

    def _handover_flow(self) -> _Flow[None]:
        # Hand the connections over: they are swept after shutdown_grace, unless their
        # clients reconnect elsewhere first.
        core, s = self._core, self.settings
        if not core.liveness.registered:
            return
        offset_ms = round((s.shutdown_grace - s.node_timeout) * 1000)
        try:
            yield _Call(
                self._store.heartbeat, (core.heartbeat_call(first=False, offset_ms=offset_ms),)
            )
        except Exception as exc:
            _log_background_failure(exc)

    # --- queries --------------------------------------------------------------------

    def _online_users_flow(
        self, org_id: Any, role: Any, lesson_id: Any
    ) -> _Flow[list[OnlineUser]]:
        query = self._core.org_query(org_id, role)
        lesson = self._core.lesson_filter(lesson_id)
        entries = yield _Call(self._store.org_connections, (query,))
        return group_online(entries, lesson)

    def _nodes_flow(self) -> _Flow[list[NodeInfo]]:
        nodes = getattr(self._store, "nodes", None)
        if nodes is None:
            raise TypeError(f"{type(self._store).__name__} cannot list nodes (no nodes())")
        found: list[NodeInfo] = yield _Call(nodes, (self._core.keys,))
        return found

    def _presence_flow(self, org_id: Any, user_id: Any, role: Any) -> _Flow[UserPresence]:
        alive, conns = self._core.presence_keys(org_id, user_id, role)
        found: UserPresence = yield _Call(
            self._store.presence, (alive, conns, self.settings.state_field)
        )
        return found

    # --- helpers --------------------------------------------------------------------

    def _local_sids(self) -> set[str] | None:
        local_sids = getattr(self._sockets, "local_sids", None)
        return set(local_sids()) if callable(local_sids) else None

    def _start_background(self) -> None:
        if self._background_started or self._closed:
            return
        self._background_started = True
        self._background = self._sockets.start_background_task(self._background_loop)

    def _background_loop(self) -> Any:
        raise NotImplementedError

    @property
    def _tick(self) -> float:
        s = self.settings
        return min(s.heartbeat_interval, s.leave_poll_interval)

    def _close_analytics(self, timeout: float | None) -> None:
        if self._analytics is not None:
            self._analytics.close(timeout)

    _store: Any


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
        self._background_done = False

    def _drive(self, flow: _Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                try:
                    kwargs = call.kwargs
                    result = call.fn(*call.args, **kwargs) if kwargs else call.fn(*call.args)
                except Exception as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration as stop:
            return cast(T, stop.value)

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

    def run_due_leaves(self, limit: int = _DUE_LEAVES_PER_STEP) -> int:
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
        org_id: Any,
        role: str | ClientRole = ClientRole.TEACHER_APP,
        *,
        lesson_id: Any = None,
    ) -> list[OnlineUser]:
        """Users of ``org_id`` with live connections in ``role`` (in ``lesson_id``, if given).

        Reads one index; the cost is proportional to the answer.
        """
        return self._drive(self._online_users_flow(org_id, role, lesson_id))

    def presence(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's state, connections, since when, and last leave reason (one round trip)."""
        return self._drive(self._presence_flow(org_id, user_id, role))

    def connections(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> tuple[ConnectionRecord, ...]:
        """A user's live connections in ``role``."""
        return self.presence(org_id, user_id, role).connections

    def nodes(self) -> list[NodeInfo]:
        """Every node incarnation registered in the store (this one and the others
        sharing it): its last heartbeat (Redis clock; ``None`` while being swept), its
        connection count and what it registered. For operators; ``TypeError`` for a
        third-party store without ``nodes()``."""
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


def _as_async_store(store: AsyncStore | Store | None) -> AsyncStore:
    from .memory import _InlineAsyncStore

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

    async def _drive(self, flow: _Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                try:
                    kwargs = call.kwargs
                    result = call.fn(*call.args, **kwargs) if kwargs else call.fn(*call.args)
                    if call.awaited:
                        result = await result
                except Exception as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration as stop:
            return cast(T, stop.value)

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

    async def run_due_leaves(self, limit: int = _DUE_LEAVES_PER_STEP) -> int:
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
            await self._sockets.sleep(self._tick)

    async def online_users(
        self,
        org_id: Any,
        role: str | ClientRole = ClientRole.TEACHER_APP,
        *,
        lesson_id: Any = None,
    ) -> list[OnlineUser]:
        """Users with live connections (see :meth:`PresenceKit.online_users`)."""
        return await self._drive(self._online_users_flow(org_id, role, lesson_id))

    async def presence(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
    ) -> UserPresence:
        """A user's presence (see :meth:`PresenceKit.presence`)."""
        return await self._drive(self._presence_flow(org_id, user_id, role))

    async def connections(
        self, org_id: Any, user_id: Any, role: str | ClientRole = ClientRole.TEACHER_APP
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
