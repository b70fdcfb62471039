"""The operations, written once as *flows* that both facades drive.

A flow is a generator that does the pure work (in :mod:`presence_kit._core`) and
yields each I/O it needs as a call on a port (the store, the sockets, analytics; see
:mod:`presence_kit._calls`, which types each result). The flows are typed against the
blocking ports (:class:`~presence_kit.Store`, :class:`~presence_kit.Sockets`); the
facades in :mod:`presence_kit._kit` differ only in their driver: the blocking one makes
each call and sends the result back, the asyncio one awaits it first (its ports are
the ``Async`` twins, with the same signatures as coroutines). A failing call is thrown
into the flow at its ``yield``, so error handling is written once too.

A handler call is: validate (raises :class:`~presence_kit.InvalidSessionError` before
any I/O) -> one store transition -> the role's pure policy -> the effects. Backend
failures never escape ``handle_disconnect``: python-socketio runs its own room cleanup
only after the disconnect handler returns, so raising there would leave the sid in
every room. They are logged, counted (:attr:`PresenceKit.stats`) and queued for the
background to replay.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from ._calls import Begin, Call, Finish, Flow, Started, call, collect, effect_call, enqueue, start
from ._core import KitCore, KitStats
from ._effects import Effect, Emit, JoinRoom, LeaveRoom, Track
from ._errors import StoreError
from ._model import (
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    NodeInfo,
    OnlineUser,
    UserPresence,
    group_online,
)
from ._outbox import PendingOperation
from ._policies import DisconnectPolicy
from ._ports import Analytics, HasNamespace, ListsLocalSids, ListsNodes, Sockets, Store
from ._ratelimit import RateLimit
from ._roles import ClientRole
from ._session import Id
from ._settings import Settings

__all__ = ["DUE_LEAVES_PER_STEP", "KitFlows", "logger"]

logger = logging.getLogger("presence_kit")

T = TypeVar("T")

_BUCKETS_PER_READ = 32
"""Node-index buckets read per round trip during a sweep."""

DUE_LEAVES_PER_STEP = 100
"""Held-back leaves run per grace-scheduler step (``run_due_leaves``' default limit).

Each costs a round trip, so one background step stays short however many are due;
the rest are picked up by the next step, ``leave_poll_interval`` later."""

_STORE_FAILURE_LOG_INTERVAL = 5.0
"""Seconds between the warnings (with a traceback) of store failures; the rest at DEBUG."""


def _namespace(sockets: object) -> str:
    if isinstance(sockets, HasNamespace) and isinstance(sockets.namespace, str):
        return sockets.namespace
    return "/"


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _log_store_failure(limit: RateLimit, operation: str, sid: str, exc: BaseException) -> None:
    # An outage fails every handler: one warning with the traceback per 5 s, the rest
    # at DEBUG (the counters in kit.stats keep the exact numbers).
    extra = {"presence_operation": operation, "presence_sid": sid}
    if limit.check("store") is not None:
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


class KitFlows:
    """Everything both facades do, as flows; the facades only drive them.

    ``store`` and ``sockets`` are typed as the blocking ports; the asyncio facade passes
    its ``Async`` ones (see :func:`call`). ``node_lister`` is the store when it lists
    nodes (:class:`~presence_kit.ListsNodes`), decided by the facade."""

    def __init__(
        self,
        *,
        store: Store,
        sockets: Sockets,
        node_lister: ListsNodes | None,
        analytics: Analytics | None,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
    ) -> None:
        self._core = KitCore(settings=settings, policies=policies, namespace=_namespace(sockets))
        self._store = store
        self._sockets = sockets
        self._node_lister = node_lister
        self._analytics = analytics
        self._closed = False
        self._background: object = None
        self._background_started = False
        self._stopping = False
        self._failure_logs = RateLimit(_STORE_FAILURE_LOG_INTERVAL)

    # How the facade's driver starts a call and collects it later (_calls.start).
    _begin: Begin
    _finish: Finish

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
    ) -> Flow[ConnectOutcome | None]:
        core = self._core
        prepared = core.prepare_connect(sid, session)
        sid, parsed, policy, request = prepared
        if not self._background_started:
            self._start_background()
        strict = self.settings.strict_connect
        outcome: ConnectOutcome | None = None
        failure: Exception | None = None
        if core.outbox and not strict:
            # Redis failed lately: keep the order, don't wait
            core.queue(PendingOperation("connect", sid, parsed, policy, request))
        else:
            try:
                outcome = yield from call(self._store.connect, request)
            except Exception as exc:
                failure = exc
                core.count("store_failures")
                _log_store_failure(self._failure_logs, "connect", sid, exc)
                if not strict:
                    core.queue(PendingOperation("connect", sid, parsed, policy, request))
        core.connected(prepared, session)
        yield from self._effects_flow(core.connect_effects(sid, parsed, policy, outcome))
        if failure is not None and strict:
            raise StoreError("presence store failed during connect") from failure
        return outcome

    def _disconnect_flow(
        self, sid: object, session: Mapping[str, Any], reason: object
    ) -> Flow[DisconnectOutcome | None]:
        core = self._core
        sid, parsed, policy, request = core.prepare_disconnect(sid, session, reason)
        if not self._background_started:
            self._start_background()
        core.local_sessions.pop(sid, None)
        outcome: DisconnectOutcome | None = None
        if core.outbox:
            # Redis failed lately and the replay has not caught up: queue behind it,
            # in order, instead of waiting on Redis again.
            core.queue(PendingOperation("disconnect", sid, parsed, policy, request))
        else:
            try:
                outcome = yield from call(self._store.disconnect, request)
            except Exception as exc:
                core.count("store_failures")
                _log_store_failure(self._failure_logs, "disconnect", sid, exc)
                core.queue(PendingOperation("disconnect", sid, parsed, policy, request))
        effects = core.disconnect_effects(sid, parsed, policy, outcome, request.reason)
        yield from self._effects_flow(effects)
        return outcome

    def _effects_flow(self, effects: Sequence[Effect]) -> Flow[None]:
        for effect in effects:
            step = self._effect_call(effect)
            if step is None:
                continue
            try:
                yield step
            except Exception as exc:
                self._core.count("sockets_failures")
                _log_effect_failure(effect, exc)

    def _effect_call(self, effect: Effect) -> Call | None:
        """The port call that runs ``effect`` (``None``: tracking with no analytics)."""
        sockets = self._sockets
        # The most frequent first: every handler call joins or leaves a room.
        if isinstance(effect, LeaveRoom):
            return effect_call(sockets.leave_room, effect.sid, effect.room)
        if isinstance(effect, JoinRoom):
            return effect_call(sockets.enter_room, effect.sid, effect.room)
        if isinstance(effect, Emit):
            return effect_call(sockets.emit, effect.event, effect.data, to=effect.to)
        if isinstance(effect, Track):
            analytics = self._analytics
            return None if analytics is None else enqueue(analytics.track, effect)
        raise TypeError(f"not an effect: {effect!r}")

    # --- background steps -----------------------------------------------------------

    def _replay_flow(self) -> Flow[int]:
        core, replayed = self._core, 0
        while (op := core.outbox.take()) is not None:
            request = core.retargeted(op.request)  # queued before a fence: ours now
            outcome: ConnectOutcome | DisconnectOutcome
            try:
                if isinstance(request, ConnectRequest):
                    outcome = yield from call(self._store.connect, request)
                else:
                    outcome = yield from call(self._store.disconnect, request)
            except BaseException:
                core.outbox.put_back()  # a failure stops the replay; the order is kept
                raise
            core.outbox.done()
            replayed += 1
            yield from self._effects_flow(core.replayed_effects(op, outcome))
        return replayed

    def _due_leaves_flow(self, limit: int) -> Flow[int]:
        core, announced = self._core, 0
        members = yield from call(self._store.due_leaves, core.keys.leave_queue(), limit)
        for member in members:
            request = core.finish_request(member)
            if request is None:
                continue
            finished = yield from call(self._store.finish_leave, request)
            if finished.outcome is not None:
                announced += 1
            yield from self._effects_flow(core.finished_leave_effects(finished))
        return announced

    def _heartbeat_flow(self) -> Flow[bool]:
        core, live = self._core, self._core.liveness
        try:
            ok = yield from call(
                self._store.heartbeat, core.heartbeat_call(first=not live.registered)
            )
        except Exception:
            live.failed()
            raise
        live.answered(time.monotonic(), self.settings.node_timeout)
        live.registered = True
        if not ok:
            yield from self._register_again_flow()
        yield from self._hand_over_former_flow()
        return bool(ok)

    def _hand_over_former_flow(self) -> Flow[None]:
        """Register this kit's former incarnations as dead nodes, so that a sweeper (any
        node's) clears what they wrote after their sweep: a sweep removes only records
        that incarnation still owns (those not moved here), and then deletes its index.
        Nothing is left behind even if this node dies before it could clear them."""
        core = self._core
        dead_ms = -2 * core.node_timeout_ms  # claimable at once
        while core.former_members:
            member = core.former_members[0]
            beat = core.heartbeat_call(first=True, offset_ms=dead_ms, member=member)
            yield from call(self._store.heartbeat, beat)
            core.former_members.pop(0)

    def _register_again_flow(self) -> Flow[None]:
        core = self._core
        core.count("fenced")
        logger.warning("this node was presumed dead and swept; registering its sockets again")
        core.new_incarnation()
        core.liveness.registered = False
        yield from self._heartbeat_flow()
        live = self._local_sids()
        for sid, session in list(core.local_sessions.items()):
            if live is None or sid in live:
                # A record its former incarnation wrote moves here (connect.lua).
                yield from self._connect_flow(sid, session)

    def _sweep_flow(self) -> Flow[int]:
        core, store = self._core, self._store
        recovered = yield from self._unconfirmed_flow()
        keys, timeout_ms, ttl_ms = core.keys, core.node_timeout_ms, core.node_timeout_ms
        while True:
            member = yield from call(store.claim_node, keys, timeout_ms, ttl_ms)
            if member is None:
                return recovered
            for buckets in _chunks(keys.node_indexes(member), _BUCKETS_PER_READ):
                entries = yield from call(store.node_connections, buckets)
                recovered += yield from self._sweep_entries_flow(member, list(entries.items()))
            yield from call(store.release_node, keys, member)
            logger.info("swept a lost node", extra={"presence_node": member})

    def _sweep_entries_flow(self, member: str, entries: Sequence[tuple[str, str]]) -> Flow[int]:
        """Run the leaves of a swept node's connections, ``sweep_batch`` per round trip,
        renewing the claim after each batch. Each round trip (and renewal) is started
        before the last batch's leaves are announced and collected after: the asyncio
        kit keeps Redis writing one batch while it announces the other; the blocking
        kit makes them in turn. If one fails, the batch in flight is still collected
        and its leaves announced before the failure is raised."""
        core, store, recovered = self._core, self._store, 0
        keys, ttl_ms = core.keys, core.node_timeout_ms
        in_flight: tuple[list[DisconnectRequest], Started[list[DisconnectOutcome]]] | None = None
        renewing: Started[None] | None = None
        try:
            # The empty chunk at the end starts nothing and collects the last batch.
            for chunk in [*_chunks(entries, self.settings.sweep_batch), ()]:
                requests = [core.sweep_request(member, sid, entry) for sid, entry in chunk]
                usable = [r for r in requests if r is not None]
                started = (
                    (yield from start(self._begin, store.disconnect_many, usable))
                    if usable
                    else None
                )
                done, in_flight = in_flight, None if started is None else (usable, started)
                if done is None:
                    continue
                recovered += yield from self._recovered_flow(*done)
                if renewing is not None:
                    last, renewing = renewing, None
                    yield from collect(self._finish, last)
                renewing = yield from start(self._begin, store.renew_claim, keys, member, ttl_ms)
            if renewing is not None:
                last, renewing = renewing, None
                yield from collect(self._finish, last)
        except Exception:
            # Started and not collected yet: a batch that went through still has its
            # leaves announced (Redis forgot those connections), then the first
            # failure is raised.
            if in_flight is not None:
                with contextlib.suppress(Exception):
                    yield from self._recovered_flow(*in_flight)
            if renewing is not None:
                with contextlib.suppress(Exception):
                    yield from collect(self._finish, renewing)
            raise
        return recovered

    def _sweep_if_safe_flow(self) -> Flow[int]:
        # Decided after this step's heartbeat: only with Redis answering continuously.
        if not self._core.liveness.may_sweep(time.monotonic(), self.settings.node_timeout):
            return 0
        return (yield from self._sweep_flow())

    def _reconcile_flow(self) -> Flow[int]:
        """Make this node's records match its live sockets, both ways."""
        core = self._core
        if self._local_sids() is None:
            return 0
        confirmed = yield from self._unconfirmed_flow()
        entries = yield from call(
            self._store.node_connections, core.keys.node_indexes(core.member)
        )
        # Read the sockets after the records: a record is written after its socket
        # joined the server, so a record whose socket is missing now really is stale.
        live = self._local_sids() or set()
        requests = [
            core.sweep_request(core.member, sid, entry, reason="stale connection")
            for sid, entry in entries.items()
            if sid not in live and sid not in core.unconfirmed
        ]
        recovered = yield from self._recover_flow([r for r in requests if r is not None])
        # A live socket missing from this incarnation's index is recorded again; one
        # whose record a former incarnation wrote is moved here (connect.lua).
        repaired = yield from self._repair_flow(live.difference(entries))
        return confirmed + recovered + repaired

    def _repair_flow(self, unrecorded: set[str]) -> Flow[int]:
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
            try:
                outcome = yield from call(self._store.connect, request)
            except Exception:
                # It may have run (its reply lost): the replay makes it again with the
                # same attempt, and announces what it did.
                core.queue(PendingOperation("connect", sid, parsed, policy, request))
                raise
            if outcome.status is not ConnectStatus.NEW:
                continue  # recorded meanwhile (REPEAT), or disconnected meanwhile (STALE)
            repaired += 1
            yield from self._effects_flow(core.repaired_effects(sid, parsed, policy, outcome))
            if sid not in core.local_sessions:  # it disconnected while we wrote
                undo = core.prepare_disconnect(sid, session, "stale connection").request
                removed = yield from call(self._store.disconnect, undo)
                yield from self._effects_flow(core.recovered_effects(removed, undo.reason))
        return repaired

    def _unconfirmed_flow(self) -> Flow[int]:
        """Make the removals again whose replies were lost (see :meth:`_recovered_flow`):
        the first step of every sweep and reconcile."""
        return (yield from self._recover_flow(self._core.take_unconfirmed()))

    def _recover_flow(self, requests: Sequence[DisconnectRequest]) -> Flow[int]:
        if not requests:
            return 0
        started = yield from start(self._begin, self._store.disconnect_many, requests)
        return (yield from self._recovered_flow(requests, started))

    def _recovered_flow(
        self, requests: Sequence[DisconnectRequest], started: Started[list[DisconnectOutcome]]
    ) -> Flow[int]:
        """Collect a started ``disconnect_many`` and announce what it recovered. If it
        failed, it may have run (its reply lost): its requests are kept, and made again
        with the same attempts until their outcomes are known."""
        core = self._core
        try:
            outcomes = yield from collect(self._finish, started)
        except Exception:
            core.keep_unconfirmed(requests)
            raise
        recovered = 0
        for request, outcome in zip(requests, outcomes, strict=True):
            removal = core.own_removal(request, outcome)
            if removal is not None:
                recovered += 1
                yield from self._effects_flow(core.recovered_effects(removal, request.reason))
        self._core.count("recovered", recovered)
        return recovered

    def _background_step_flow(self) -> Flow[None]:
        now, live, s = time.monotonic(), self._core.liveness, self.settings
        beat = now >= live.next_beat
        if beat:
            live.next_beat = now + s.heartbeat_interval
        reconcile = now >= live.next_reconcile
        if reconcile:
            live.next_reconcile = now + s.reconcile_interval
        steps: list[Callable[[], Flow[object]]] = [self._heartbeat_flow] if beat else []
        if len(self._core.outbox):
            steps.append(self._replay_flow)
        steps.append(partial(self._due_leaves_flow, DUE_LEAVES_PER_STEP))
        if beat:
            steps.append(self._sweep_if_safe_flow)
        if reconcile:
            steps.append(self._reconcile_flow)
        for step in steps:
            try:
                yield from step()
            except Exception as exc:
                _log_background_failure(exc)

    def _handover_flow(self) -> Flow[None]:
        # Hand the connections over: they are swept after shutdown_grace, unless their
        # clients reconnect elsewhere first.
        core, s = self._core, self.settings
        if not core.liveness.registered:
            return
        offset_ms = round((s.shutdown_grace - s.node_timeout) * 1000)
        try:
            yield from call(
                self._store.heartbeat, core.heartbeat_call(first=False, offset_ms=offset_ms)
            )
        except Exception as exc:
            _log_background_failure(exc)

    # --- queries --------------------------------------------------------------------

    def _online_users_flow(
        self, org_id: Id, role: str | ClientRole, lesson_id: Id | None
    ) -> Flow[list[OnlineUser]]:
        query = self._core.org_query(org_id, role)
        lesson = self._core.lesson_filter(lesson_id)
        entries = yield from call(self._store.org_connections, query)
        return group_online(entries, lesson)

    def _nodes_flow(self) -> Flow[list[NodeInfo]]:
        lister = self._node_lister
        if lister is None:
            raise TypeError(f"{type(self._store).__name__} cannot list nodes (no nodes())")
        return (yield from call(lister.nodes, self._core.keys))

    def _presence_flow(
        self, org_id: Id, user_id: Id, role: str | ClientRole
    ) -> Flow[UserPresence]:
        alive, conns = self._core.presence_keys(org_id, user_id, role)
        return (yield from call(self._store.presence, alive, conns, self.settings.state_field))

    # --- helpers --------------------------------------------------------------------

    def _local_sids(self) -> set[str] | None:
        sockets = self._sockets
        if isinstance(sockets, ListsLocalSids):
            return set(sockets.local_sids())
        return None

    def _start_background(self) -> None:
        if self._background_started or self._closed:
            return
        self._background_started = True
        self._background = self._sockets.start_background_task(self._background_loop)

    def _background_loop(self) -> object:
        raise NotImplementedError

    @property
    def _tick(self) -> float:
        s = self.settings
        return min(s.heartbeat_interval, s.leave_poll_interval)

    def _close_analytics(self, timeout: float | None) -> None:
        if self._analytics is not None:
            self._analytics.close(timeout)
