# Generated from presence_kit/_async/handlers.py by .ci/unasync.py: do not edit.
# Change the asyncio original, then run `make unasync`.
"""The handlers: a connect, an update and a disconnect, each validate -> one store call ->
effects.

A handler call is: validate (raises :class:`~presence_kit.InvalidSessionError` before
any I/O) -> one store transition -> the role's pure policy (in
:mod:`presence_kit._core`) -> the effects on the sockets and analytics. Backend
failures never escape ``handle_disconnect``: python-socketio runs its own room cleanup
only after the disconnect handler returns, so raising there would leave the sid in
every room. They are logged, counted (:attr:`~presence_kit.PresenceKit.stats`) and
queued for the background to replay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import Any, TypeVar

from presence_kit._effects import Effect, Emit, JoinRoom, LeaveRoom, Track
from presence_kit._errors import StoreError
from presence_kit._kit_base import KitBase, log_effect_failure
from presence_kit._metrics import recorder_for
from presence_kit._model import ConnectOutcome, DisconnectOutcome, UpdateOutcome
from presence_kit._outbox import PendingOperation
from presence_kit._policies import DisconnectPolicy
from presence_kit._ports import Analytics
from presence_kit._settings import Settings
from presence_kit._sync.ports import Sockets, Store, Updates
from presence_kit._synchronization import Background

__all__ = ["Handlers"]

R = TypeVar("R")
T = TypeVar("T")


class _NotAnEffectError(TypeError):
    """A policy returned something that is not an :class:`~presence_kit.Effect`."""


class Handlers(KitBase):
    """The connect, update and disconnect handlers over a store and the sockets."""

    def __init__(
        self,
        *,
        store: Store,
        sockets: Sockets,
        analytics: Analytics | None,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
        meter_provider: object | None = None,
    ) -> None:
        super().__init__(sockets=sockets, settings=settings, policies=policies)
        self._store = store
        self._sockets = sockets
        self._analytics = analytics
        self._background: Background | None = None
        self._updater = store if isinstance(store, Updates) else None
        self._metrics = recorder_for(meter_provider, self._core, analytics)

    def handle_connect(self, sid: str, session: Mapping[str, Any]) -> ConnectOutcome | None:
        """Record connection ``sid`` and join its rooms.

        Raises :class:`~presence_kit.InvalidSessionError` (a ``ValueError``) before
        anything is written or joined. On a store failure the rooms are still joined,
        ``None`` is returned and the connect is queued for replay (or
        :class:`~presence_kit.StoreError` raised with ``Settings.strict_connect``).
        """
        started = perf_counter()
        core = self._core
        prepared = core.prepare_connect(sid, session)
        sid, parsed, policy, request = prepared
        if self._background is None:
            self._start_background()
        strict = core.settings.strict_connect
        outcome: ConnectOutcome | None = None
        failure: Exception | None = None
        if core.outbox and not strict:
            # Redis failed lately: keep the order, don't wait
            core.queue(PendingOperation("connect", sid, parsed, policy, request))
        else:
            try:
                outcome = self._store.connect(request)
            except Exception as exc:
                failure = exc
                self._store_failed("connect", sid, exc)
                if not strict:
                    core.queue(PendingOperation("connect", sid, parsed, policy, request))
        core.connected(prepared, session)
        self._run_effects(core.connect_effects(sid, parsed, policy, outcome))
        if self._metrics is not None:
            self._metrics.handler("connect", parsed.role, perf_counter() - started)
        if failure is not None and strict:
            raise StoreError("presence store failed during connect") from failure
        return outcome

    def handle_update(self, sid: str, session: Mapping[str, Any]) -> UpdateOutcome | None:
        """Change live connection ``sid``'s lesson, room or ``meta`` to ``session``'s.

        ``session`` is the connection's whole new session (save it too, as at connect);
        without a ``meta`` key the stored meta is kept, ``"meta": None`` clears it.
        Raises :class:`~presence_kit.InvalidSessionError` (a ``ValueError``) before
        anything is written or joined: for what a connect would refuse, a ``meta``
        beyond its limits, or a new ``role``, ``org_id`` or ``user_id`` (a new identity:
        connect again). The lesson room moves at once; on a store failure ``None`` is
        returned and the update is queued for replay, in order with the sid's other
        operations. ``TypeError`` for a third-party store without ``update()`` (see
        :class:`~presence_kit.Updates`).
        """
        started = perf_counter()
        core = self._core
        prepared = core.prepare_handler_update(sid, session)
        if self._updater is None:
            raise TypeError(f"{type(self._store).__name__} cannot update connections")
        if self._background is None:
            self._start_background()
        sid, parsed, policy, request, _previous = prepared
        pending = PendingOperation("update", sid, parsed, policy, request)
        outcome = self._write_or_queue(pending, self._updater.update, request)
        effects = core.update_effects(prepared, outcome)
        core.updated(prepared, session, outcome)
        self._run_effects(effects)
        if self._metrics is not None:
            self._metrics.handler("update", parsed.role, perf_counter() - started)
        return outcome

    def handle_disconnect(
        self, sid: str, session: Mapping[str, Any], reason: str | None = None
    ) -> DisconnectOutcome | None:
        """Remove connection ``sid``, announce a real leave once, and leave its rooms.

        Raises only :class:`~presence_kit.InvalidSessionError`, before any I/O; a
        backend failure is logged and counted, the rooms are left, ``None`` is returned,
        and the operation is queued for the background to replay once Redis answers.
        """
        started = perf_counter()
        core = self._core
        sid, parsed, policy, request = core.prepare_disconnect(sid, session, reason)
        if self._background is None:
            self._start_background()
        parsed = core.forget(sid, parsed)
        pending = PendingOperation("disconnect", sid, parsed, policy, request)
        outcome = self._write_or_queue(pending, self._store.disconnect, request)
        effects = core.disconnect_effects(sid, parsed, policy, outcome, request.reason)
        self._run_effects(effects)
        if self._metrics is not None:
            self._metrics.handler("disconnect", parsed.role, perf_counter() - started)
        return outcome

    def _write_or_queue(
        self, pending: PendingOperation, write: Callable[[R], T], request: R
    ) -> T | None:
        """``write(request)``, or ``None`` with ``pending`` queued for replay: at once
        while Redis failed lately and the replay has not caught up (in order, instead of
        waiting on Redis again), or when the write fails (logged and counted)."""
        core = self._core
        if core.outbox:
            core.queue(pending)
            return None
        try:
            return write(request)
        except Exception as exc:
            self._store_failed(pending.kind, pending.sid, exc)
            core.queue(pending)
            return None

    def _run_effects(self, effects: Sequence[Effect]) -> None:
        """Make each effect; a failing one is logged and counted, the rest still run."""
        sockets = self._sockets
        for effect in effects:
            try:
                # The most frequent first: every handler call joins or leaves a room.
                if isinstance(effect, LeaveRoom):
                    sockets.leave_room(effect.sid, effect.room)
                elif isinstance(effect, JoinRoom):
                    sockets.enter_room(effect.sid, effect.room)
                elif isinstance(effect, Emit):
                    sockets.emit(effect.event, effect.data, to=effect.to)
                elif isinstance(effect, Track):
                    if self._analytics is not None:
                        self._analytics.track(effect)  # enqueues; never blocks
                else:
                    raise _NotAnEffectError(f"not an effect: {effect!r}")
            except _NotAnEffectError:
                raise
            except Exception as exc:
                self._core.count("sockets_failures")
                log_effect_failure(effect, exc)

    def _start_background(self) -> None:
        if self._background is not None or self._closed:
            return
        self._background = Background(self._sockets, self._background_loop)

    def _background_loop(self) -> None:
        raise NotImplementedError  # the facade's
