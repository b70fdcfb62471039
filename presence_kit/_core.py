"""The shared core of both facades: what the store's answers mean, counters, queues.

Everything here is pure or in-memory; the facades add only the I/O calls (plain in
:class:`~presence_kit.PresenceKit`, awaited in :class:`~presence_kit.AsyncPresenceKit`),
so no behaviour is written twice. :class:`KitCore` builds the store requests as its
base :class:`~presence_kit._requests.KitRequests` does, and turns each answer into the
role's effects: *whether* an answer grants an announcement is decided by
:func:`presence_kit._state.grants` (the state machine's table), *what* it emits or
tracks by the role's policy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._construct import maker
from ._effects import Effect, Emit, Track
from ._errors import InvalidSessionError
from ._liveness import NodeLiveness
from ._model import (
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    FinishLeaveOutcome,
    UpdateOutcome,
    UpdateRequest,
    UpdateStatus,
)
from ._outbox import Outbox, PendingOperation  # also importable from here (tests)
from ._policies import ConnectFacts, DisconnectFacts, DisconnectPolicy, UpdateFacts
from ._prepared import PreparedConnect, PreparedUpdate, hold
from ._requests import KitRequests, generate_node_id
from ._session import Session, parse_session
from ._settings import Settings
from ._state import Event, as_granted, grants

__all__ = [
    "KitCore",
    "KitStats",
    "NodeLiveness",
    "Outbox",
    "PendingOperation",
    "generate_node_id",
]

logger = logging.getLogger("presence_kit")


# The hot path builds these from validated parts (positional, in field order).
_make_connect_facts = maker(ConnectFacts)
_make_disconnect_facts = maker(DisconnectFacts)


@dataclass(frozen=True, kw_only=True, slots=True)
class KitStats:
    """Counters of one kit since it was built."""

    connects: int = 0
    disconnects: int = 0
    updates: int = 0
    """Update handler calls."""
    announced_online: int = 0
    announced_offline: int = 0
    store_failures: int = 0
    sockets_failures: int = 0
    recovered: int = 0
    """Connections of dead nodes (or stale records) whose leave this kit ran."""
    fenced: int = 0
    """Times this kit learnt it had been presumed dead, and registered again."""
    queued: int = 0
    """Store operations that failed and were queued for replay."""
    replayed: int = 0
    """Queued operations made once the store answered again."""
    outbox_dropped: int = 0
    """Queued operations forced out by the outbox's bound (left to reconcile/sweep)."""
    repaired: int = 0
    """Live sockets of this kit found with no record by reconciling, and recorded again."""


class KitCore(KitRequests):
    """State and pure steps shared by the sync and asyncio facades."""

    def __init__(
        self,
        *,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
        namespace: str,
    ) -> None:
        super().__init__(settings=settings, policies=policies, namespace=namespace)
        self.liveness = NodeLiveness()
        self.unconfirmed: dict[str, DisconnectRequest] = {}
        """Removals of sweeps and reconciles whose call failed after it may have run, by
        sid: made again with the same attempt, so a lost reply loses no leave."""
        self.outbox = Outbox(self.settings.outbox_size)
        self.local_sessions: dict[str, Mapping[str, Any]] = {}
        """Sessions of the connections this kit holds (as last updated), to register
        them again if fenced."""
        self.updated_sessions: dict[str, Session] = {}
        """The current sessions of this kit's connections that were updated: their
        disconnect leaves these rooms, whatever session the integrator passes."""
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(KitStats.__dataclass_fields__, 0)
        self._keyed: dict[str, dict[tuple[str, str], int]] = {
            "transitions": {},
            "store_errors": {},
        }

    # --- counters -------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (thread-safe)."""
        with self._lock:
            self._counts[name] += n

    def stats(self) -> KitStats:
        """A snapshot of the counters."""
        with self._lock:
            return KitStats(**self._counts)

    def count_keyed(self, name: str, key: tuple[str, str]) -> None:
        """Add 1 to counter ``name`` under ``key`` (thread-safe): the breakdowns the
        metrics report (``transitions`` by (transition, role), ``store_errors`` by
        (operation, "")). Keys come from closed sets: roles and operation names."""
        with self._lock:
            counts = self._keyed[name]
            counts[key] = counts.get(key, 0) + 1

    def keyed_counts(self, name: str) -> dict[tuple[str, str], int]:
        """A snapshot of counter ``name``'s breakdown."""
        with self._lock:
            return dict(self._keyed[name])

    def local_roles(self) -> list[str]:
        """The role of each connection this kit holds (read when metrics are collected)."""
        roles = []
        for raw in list(self.local_sessions.values()):
            role = raw.get("role")
            roles.append(str(getattr(role, "value", role)))
        return roles

    # --- connect --------------------------------------------------------------------

    def connected(self, prepared: PreparedConnect, raw_session: Mapping[str, Any]) -> None:
        """Hold connection ``sid`` as local (its connect was handled, written or not)."""
        sid = prepared.sid
        self.local_sessions[sid] = raw_session
        held = hold(raw_session, prepared)
        if held is not None:
            self._held[sid] = held

    def connect_effects(
        self,
        sid: str,
        session: Session,
        policy: DisconnectPolicy,
        outcome: ConnectOutcome | None,
    ) -> Sequence[Effect]:
        """Run the role's policy for a connect handler call."""
        self.count("connects")
        return self._join_effects(sid, session, policy, outcome)

    def repaired_effects(
        self, sid: str, session: Session, policy: DisconnectPolicy, outcome: ConnectOutcome
    ) -> Sequence[Effect]:
        """The announcements of a live socket recorded again by reconciling (its rooms
        were joined at its connect): a teacher who was unknown to Redis comes online."""
        self.count("repaired")
        effects = self._join_effects(sid, session, policy, outcome, Event.RECONCILE)
        return [e for e in effects if isinstance(e, (Emit, Track))]

    def _join_effects(
        self,
        sid: str,
        session: Session,
        policy: DisconnectPolicy,
        outcome: ConnectOutcome | None,
        event: Event = Event.CONNECT,
    ) -> Sequence[Effect]:
        """The policy's effects for ``outcome`` (as granted: see :func:`as_granted`)."""
        if policy.tracks_alive and grants(event, outcome).online:
            self.count("announced_online")
            self.count_keyed("transitions", ("online", session.role))
        return policy.on_connect(_make_connect_facts(sid, session, outcome, self.settings))

    # --- update ---------------------------------------------------------------------

    def current_session(self, sid: object) -> Session | None:
        """This kit's own view of connection ``sid``'s session (``None``: not one of its
        connections, or a session that no longer validates)."""
        if not isinstance(sid, str):
            return None
        session = self.updated_sessions.get(sid)
        if session is not None:
            return session
        raw = self.local_sessions.get(sid)
        if raw is None:
            return None
        try:
            return parse_session(raw, id_pattern=self._id_pattern)
        except InvalidSessionError:
            return None

    def prepare_handler_update(self, sid: object, raw_session: object) -> PreparedUpdate:
        """Validate an update against this kit's view of the connection and build the
        store request (raises before any I/O)."""
        return self.prepare_update(sid, raw_session, self.current_session(sid))

    def updated(
        self,
        prepared: PreparedUpdate,
        raw_session: Mapping[str, Any],
        outcome: UpdateOutcome | None,
    ) -> None:
        """Keep the connection's new session as this kit's view (its disconnect and a
        re-registration use it), if the connection is this kit's and still live."""
        sid = prepared.sid
        old = self.local_sessions.get(sid)
        if old is None or (outcome is not None and outcome.status is UpdateStatus.UNKNOWN):
            return
        new = dict(raw_session)
        if "meta" not in new and "meta" in old:  # an update without meta keeps it
            new["meta"] = old["meta"]
        self.local_sessions[sid] = new
        self.updated_sessions[sid] = prepared.session
        self._held.pop(sid, None)  # its disconnect validates the session it is given

    def update_effects(
        self, prepared: PreparedUpdate, outcome: UpdateOutcome | None
    ) -> Sequence[Effect]:
        """Run the role's policy for an update handler call. The session before is this
        kit's view of the connection, else the store's record."""
        self.count("updates")
        previous = prepared.previous
        if previous is not None:
            if prepared.sid not in self.local_sessions:
                return ()  # it disconnected while the store wrote: its rooms are left
        elif outcome is not None and outcome.status is not UpdateStatus.UNKNOWN:
            # not this kit's connection: the store's record tells where it was
            previous = outcome.previous.session if outcome.previous is not None else None
        elif outcome is not None:
            return ()  # no live connection, here or in the store: nothing moves
        facts = UpdateFacts(
            sid=prepared.sid,
            session=prepared.session,
            previous=previous,
            outcome=outcome,
            settings=self.settings,
        )
        return self.policies.on_update(prepared.session.role, facts)

    def forget(self, sid: str, session: Session) -> Session:
        """Drop this kit's view of a disconnecting connection; the session it has now
        (updated since its connect) if the kit knows one, else ``session``."""
        self.local_sessions.pop(sid, None)
        return self.updated_sessions.pop(sid, session)

    # --- disconnect -----------------------------------------------------------------

    def disconnect_effects(
        self,
        sid: str,
        session: Session,
        policy: DisconnectPolicy,
        outcome: DisconnectOutcome | None,
        reason: str,
    ) -> Sequence[Effect]:
        """Run the role's policy for a disconnect handler call (with the stored session
        when known)."""
        self.count("disconnects")
        return self._leave_effects(sid, session, policy, outcome, reason)

    def recovered_effects(self, outcome: DisconnectOutcome, reason: str) -> Sequence[Effect]:
        """The policy's effects for a connection recovered from its record alone."""
        record = outcome.record
        if record is None:
            return ()
        policy = self.policies.get(record.session.role)
        if policy is None:
            return ()
        return self.disconnect_effects(record.sid, record.session, policy, outcome, reason)

    def _leave_effects(
        self,
        sid: str,
        session: Session,
        policy: DisconnectPolicy,
        outcome: DisconnectOutcome | None,
        reason: str,
    ) -> Sequence[Effect]:
        """The policy's effects for ``outcome`` (as granted), with the stored session."""
        if outcome is not None and outcome.record is not None:
            session = outcome.record.session
        if policy.tracks_alive and grants(Event.DISCONNECT, outcome).offline:
            self.count("announced_offline")
            self.count_keyed("transitions", ("offline", session.role))
        facts = _make_disconnect_facts(sid, session, outcome, reason, self.settings)
        return policy.on_disconnect(facts)

    @staticmethod
    def own_removal(
        request: DisconnectRequest, outcome: DisconnectOutcome
    ) -> DisconnectOutcome | None:
        """The removal ``request`` (a sweep's or a reconcile's) made, as ``REMOVED``: now,
        or in an earlier try whose reply was lost (a repeat naming its attempt);
        ``None``: it made none (see :func:`~presence_kit._state.grants`)."""
        event = Event.RECONCILE if request.remember else Event.SWEEP
        grant = grants(event, outcome, attempt=request.attempt)
        return as_granted(outcome, grant) if grant.removed else None

    # --- held-back leaves -----------------------------------------------------------

    def finished_leave_effects(self, finished: FinishLeaveOutcome) -> Sequence[Effect]:
        """The effects of a held-back leave this node claimed (run from its record)."""
        outcome = finished.outcome
        if not grants(Event.FINISH, finished).removed or outcome is None:
            return ()
        record = outcome.record
        if record is None:
            return ()
        try:
            policy = self.policies.for_role(record.session.role)
        except InvalidSessionError:
            logger.warning(
                "no policy for a held-back leave's role", extra={"role": record.session.role}
            )
            return ()
        return self.disconnect_effects(
            record.sid, record.session, policy, outcome, finished.reason
        )

    # --- the outbox, and removals to confirm ----------------------------------------

    def queue(self, op: PendingOperation) -> None:
        """Keep a failed store operation for replay (the oldest is forced out when full)."""
        self.count("queued")
        forced = self.outbox.push(op)
        if forced is not None:
            self.count("outbox_dropped")
            logger.warning(
                "presence outbox full: dropped the oldest queued %s",
                forced.kind,
                extra={"presence_operation": forced.kind, "presence_sid": forced.sid},
            )

    def replayed_effects(
        self, op: PendingOperation, outcome: ConnectOutcome | DisconnectOutcome | UpdateOutcome
    ) -> Sequence[Effect]:
        """The announcements a replayed operation grants (rooms were handled at the time).

        A repeat made by this operation's own earlier try means that call did run: its
        result never reached us, so it was never announced, and is announced now, once,
        from that try's own outcome (the store returns it: first or not, its version).
        A repeat made by another call (a reconcile of the record, a re-registration, a
        duplicate handler call) was announced by that call: nothing is announced again
        (:func:`~presence_kit._state.grants` decides, with ``replay=True``). The handler
        call was counted when it was made; only the announcements are counted here.
        """
        self.count("replayed")
        effects: Sequence[Effect]
        if isinstance(outcome, UpdateOutcome):  # its rooms moved when it was made
            facts = UpdateFacts(
                sid=op.sid, session=op.session, previous=None, outcome=outcome,
                settings=self.settings,
            )  # fmt: skip
            effects = self.policies.on_update(op.session.role, facts)
            return [e for e in effects if isinstance(e, (Emit, Track))]
        assert not isinstance(op.request, UpdateRequest)
        attempt = op.request.attempt
        if isinstance(outcome, ConnectOutcome):
            assert isinstance(op.request, ConnectRequest)
            grant = grants(Event.CONNECT, outcome, attempt=attempt, replay=True)
            outcome = as_granted(outcome, grant)
            effects = self._join_effects(op.sid, op.session, op.policy, outcome)
            if grant.earlier_online:  # its first try's coming online, removed since
                first_try = replace(
                    outcome,
                    status=ConnectStatus.NEW,
                    first=True,
                    version=outcome.earlier_version,
                    resumed=False,
                )
                earlier = self._join_effects(op.sid, op.session, op.policy, first_try)
                effects = [*earlier, *effects]
        else:
            assert isinstance(op.request, DisconnectRequest)
            grant = grants(Event.DISCONNECT, outcome, attempt=attempt, replay=True)
            effects = self._leave_effects(
                op.sid, op.session, op.policy, as_granted(outcome, grant), op.request.reason
            )
        return [e for e in effects if isinstance(e, (Emit, Track))]

    def keep_unconfirmed(self, requests: Sequence[DisconnectRequest]) -> None:
        """Keep removals whose call failed (the first request of a sid stays: its
        attempt is the one that may have run)."""
        for request in requests:
            self.unconfirmed.setdefault(request.sid, request)

    def take_unconfirmed(self) -> list[DisconnectRequest]:
        """The kept removals, to make again (kept again if that fails)."""
        requests, self.unconfirmed = list(self.unconfirmed.values()), {}
        return requests
