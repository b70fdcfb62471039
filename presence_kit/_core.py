"""The shared core of both facades: validation, key naming, effects, counters.

Everything here is pure or in-memory; the facades add only the I/O calls (plain in
:class:`~presence_kit.PresenceKit`, awaited in :class:`~presence_kit.AsyncPresenceKit`),
so no behaviour is written twice.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._codec import (
    index_entry,
    make_record,
    parse_node_entry,
    parse_queue_member,
)
from ._construct import maker
from ._effects import Effect, Emit, Track
from ._errors import InvalidSessionError
from ._keys import KeySchema, UserKeys, node_bucket
from ._liveness import NodeLiveness
from ._model import (
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    OrgQuery,
    StoreLayout,
)
from ._outbox import Outbox, PendingOperation  # also importable from here (tests)
from ._policies import (
    ConnectFacts,
    DisconnectFacts,
    DisconnectPolicy,
    default_policies,
)
from ._prepared import Held, PreparedConnect, PreparedDisconnect, hold, same_session
from ._session import (
    Id,
    Session,
    parse_session,
    read_role,
    validate_id,
    validate_reason,
    validate_role,
    validate_sid,
)
from ._settings import Settings

__all__ = ["KitCore", "KitStats", "NodeLiveness", "Outbox", "PendingOperation"]

logger = logging.getLogger("presence_kit")


# The hot path builds these from validated parts (positional, in field order).
_make_connect_request = maker(ConnectRequest)
_make_disconnect_request = maker(DisconnectRequest)
_make_connect_facts = maker(ConnectFacts)
_make_disconnect_facts = maker(DisconnectFacts)


def generate_node_id() -> str:
    """A node id from the host name, the pid and a random part."""
    host = re.sub(r"[^A-Za-z0-9\-]", "-", socket.gethostname())[:32] or "host"
    return f"{host[:20]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class KitStats:
    """Counters of one kit since it was built."""

    connects: int = 0
    disconnects: int = 0
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


class KitCore:
    """State and pure steps shared by the sync and asyncio facades."""

    def __init__(
        self,
        *,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
        namespace: str,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        if not isinstance(self.settings, Settings):
            raise TypeError(f"settings must be a Settings, got {type(self.settings).__name__}")
        self.policies = default_policies()
        for role, policy in (policies or {}).items():
            self.policies.register(role, policy)
        self.namespace = namespace
        self.node_id = self.settings.node_id or generate_node_id()
        self.incarnation = secrets.token_hex(3)
        self.liveness = NodeLiveness()
        self.unconfirmed: dict[str, DisconnectRequest] = {}
        """Removals of sweeps and reconciles whose call failed after it may have run, by
        sid: made again with the same attempt, so a lost reply loses no leave."""
        self.former_members: list[str] = []
        """Earlier incarnations of this kit not yet handed to the sweepers: their node
        indexes may hold entries written after their sweep, before the kit learnt it had
        been fenced."""
        self.outbox = Outbox(self.settings.outbox_size)
        # Attempt ids of store calls are "<random>.<n>" (see _next_attempt).
        self._attempt_prefix = secrets.token_hex(4) + "."
        self._attempts = itertools.count(1)
        self.local_sessions: dict[str, Mapping[str, Any]] = {}
        """Sessions of the connections this kit holds, to register them again if fenced."""
        self._held: dict[str, Held] = {}  # what their connects validated
        self._id_pattern = re.compile(self.settings.id_pattern)
        s = self.settings
        self.layout = StoreLayout(
            state_field=s.state_field,
            connect_state=s.connect_state,
            disconnect_state=s.disconnect_state,
            offline_ttl=s.offline_ttl,
            connection_ttl=s.connection_ttl,
            tombstone_ttl=s.tombstone_ttl,
            leave_grace_ms=round(s.leave_grace * 1000),
        )
        self.keys = KeySchema(alive_template=s.alive_key, prefix=s.key_prefix)
        self._node_indexes: tuple[str, list[str]] = ("", [])  # (incarnation, bucket keys)
        self._swept_indexes: tuple[str, list[str]] = ("", [])  # (member, bucket keys)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(KitStats.__dataclass_fields__, 0)

    # --- counters -------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (thread-safe)."""
        with self._lock:
            self._counts[name] += n

    def stats(self) -> KitStats:
        """A snapshot of the counters."""
        with self._lock:
            return KitStats(**self._counts)

    # --- keys -----------------------------------------------------------------------

    def user_keys(self, session: Session, policy: DisconnectPolicy) -> UserKeys:
        """The keys of the session's (user, role)."""
        return self.keys.user(
            session.org_id, session.user_id, session.role, tracks_alive=policy.tracks_alive
        )

    @property
    def member(self) -> str:
        """This kit's node incarnation, as the node registry names it."""
        return f"{self.node_id}/{self.incarnation}"

    def node_index_key(self, sid: str) -> str:
        """The bucket of this node incarnation's index that holds connection ``sid``."""
        incarnation, buckets = self._node_indexes
        if incarnation != self.incarnation:  # built once per incarnation
            buckets = self.keys.node_indexes(self.member)
            self._node_indexes = (self.incarnation, buckets)
        return buckets[node_bucket(sid)]

    def _index_buckets(self, member: str) -> list[str]:
        """Every bucket key of ``member``'s index (the last member's kept: a sweep)."""
        swept, buckets = self._swept_indexes
        if swept != member:
            buckets = self.keys.node_indexes(member)
            self._swept_indexes = (member, buckets)
        return buckets

    def new_incarnation(self) -> None:
        """Become a new incarnation (after being fenced: presumed dead and swept); the
        old one is kept in :attr:`former_members` until it is handed to the sweepers."""
        self.former_members.append(self.member)
        self.incarnation = secrets.token_hex(3)

    def _next_attempt(self) -> str:
        """A new store call's attempt id: unique across kits, cheap per call."""
        return f"{self._attempt_prefix}{next(self._attempts):x}"

    # --- connect --------------------------------------------------------------------

    def prepare_connect(self, sid: object, raw_session: object) -> PreparedConnect:
        """Validate a connect and build the store request; raises before any I/O."""
        sid = validate_sid(sid)
        session, policy = self._parse(raw_session, connect=True)
        keys = self.user_keys(session, policy)
        snapshot_of = self.policies.snapshot_of(session.role)
        request = _make_connect_request(
            sid,
            keys,
            self.keys.tombstone(keys.alive, sid),
            index_entry(session.user_id, session.lesson_id),
            self.node_index_key(sid),
            (
                OrgQuery(
                    keys=self.keys,
                    org_id=session.org_id,
                    role=snapshot_of,
                    tracks_alive=self.policies.for_role(snapshot_of).tracks_alive,
                )
                if snapshot_of and self.settings.send_presence_snapshot
                else None
            ),
            make_record(sid, self.namespace, self.node_id, self.incarnation, session),
            policy.tracks_alive,
            self.layout,
            self._next_attempt(),
        )
        return PreparedConnect(sid, session, policy, request)

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

    def _join_effects(
        self,
        sid: str,
        session: Session,
        policy: DisconnectPolicy,
        outcome: ConnectOutcome | None,
    ) -> Sequence[Effect]:
        facts = _make_connect_facts(sid, session, outcome, self.settings)
        if facts.came_online and policy.tracks_alive:
            self.count("announced_online")
        return policy.on_connect(facts)

    # --- disconnect -----------------------------------------------------------------

    def prepare_disconnect(
        self, sid: object, raw_session: object, reason: object
    ) -> PreparedDisconnect:
        """Validate a disconnect and build the store request; raises before any I/O."""
        if (
            type(sid) is str
            and (held := self._held.pop(sid, None)) is not None
            and same_session(held, raw_session)
            and self.policies.for_role(held.session.role) is held.policy
        ):  # the values its connect validated: reuse what it built
            reason_text = validate_reason(reason)
            session, policy, keys, tombstone_key = held[1:]
        else:
            sid = validate_sid(sid)
            reason_text = validate_reason(reason)
            session, policy = self._parse(raw_session, connect=False)
            keys = self.user_keys(session, policy)
            tombstone_key = self.keys.tombstone(keys.alive, sid)
        request = _make_disconnect_request(
            sid,
            keys,
            tombstone_key,
            self.node_index_key(sid),
            policy.tracks_alive,
            reason_text,
            self.layout,
            True,  # remember: a handler's disconnect leaves a tombstone
            self._next_attempt(),
            "",  # owner: whoever wrote the record
        )
        return PreparedDisconnect(sid, session, policy, request)

    def sweep_request(
        self, member: str, sid: str, entry: str, *, reason: str | None = None
    ) -> DisconnectRequest | None:
        """The disconnect of connection ``sid`` of node incarnation ``member``, from its
        node-index entry: a lost node's (``reason`` None: ``Settings.lost_reason``, no
        tombstone, so a stalled node can register the sid again), or a stale record of
        this node found by reconciling (with ``reason``)."""
        try:
            org_id, user_id, role = parse_node_entry(entry)
            policy = self.policies.for_role(role)
            validate_sid(sid)
        except (ValueError, TypeError, InvalidSessionError):
            logger.warning("skipping a malformed node-index entry", extra={"member": member})
            return None
        keys = self.keys.user(org_id, user_id, role, tracks_alive=policy.tracks_alive)
        return _make_disconnect_request(
            sid,
            keys,
            self.keys.tombstone(keys.alive, sid),
            self._index_buckets(member)[node_bucket(sid)],
            policy.tracks_alive,
            reason or self.settings.lost_reason,
            self.layout,
            reason is not None,  # remember (a sweep's tombstone is soft)
            self._next_attempt(),
            member,  # owner: only a record that incarnation wrote
        )

    def retargeted(
        self, request: ConnectRequest | DisconnectRequest
    ) -> ConnectRequest | DisconnectRequest:
        """``request`` as this incarnation's: one queued before the kit learnt it was
        fenced would write into its former incarnation's index, which the sweepers may
        have cleared already (the attempt is kept: it is the same call)."""
        index = self.node_index_key(request.sid)
        if request.node_index_key == index:
            return request
        if isinstance(request, ConnectRequest):
            record = replace(request.record, incarnation=self.incarnation)
            return replace(request, node_index_key=index, record=record)
        return replace(request, node_index_key=index)

    def keep_unconfirmed(self, requests: Sequence[DisconnectRequest]) -> None:
        """Keep removals whose call failed (the first request of a sid stays: its
        attempt is the one that may have run)."""
        for request in requests:
            self.unconfirmed.setdefault(request.sid, request)

    def take_unconfirmed(self) -> list[DisconnectRequest]:
        """The kept removals, to make again (kept again if that fails)."""
        requests, self.unconfirmed = list(self.unconfirmed.values()), {}
        return requests

    @staticmethod
    def own_removal(
        request: DisconnectRequest, outcome: DisconnectOutcome
    ) -> DisconnectOutcome | None:
        """The removal ``request`` made, as ``REMOVED``: now, or in an earlier try whose
        reply was lost (a repeat naming its attempt); ``None``: it made none."""
        if outcome.status is DisconnectStatus.REMOVED:
            return outcome
        if outcome.status is DisconnectStatus.REPEAT and outcome.attempt == request.attempt:
            return replace(outcome, status=DisconnectStatus.REMOVED)
        return None

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
        self, op: PendingOperation, outcome: ConnectOutcome | DisconnectOutcome
    ) -> Sequence[Effect]:
        """The announcements a replayed operation grants (rooms were handled at the time).

        A repeat made by this operation's own earlier try means that call did run: its
        result never reached us, so it was never announced, and is announced now, once,
        from that try's own outcome (the store returns it: first or not, its version).
        A repeat made by another call (a reconcile of the record, a re-registration, a
        duplicate handler call) was announced by that call: nothing is announced again.
        The handler call was counted when it was made; only the announcements are
        counted here.
        """
        self.count("replayed")
        effects: Sequence[Effect]
        if isinstance(outcome, ConnectOutcome):
            assert isinstance(op.request, ConnectRequest)
            if outcome.status is ConnectStatus.REPEAT and outcome.attempt in (
                None,
                op.request.attempt,
            ):
                outcome = replace(outcome, status=ConnectStatus.NEW)
            effects = self._join_effects(op.sid, op.session, op.policy, outcome)
            if outcome.earlier_version:  # its first try's coming online, removed since
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
            if outcome.status is DisconnectStatus.REPEAT and outcome.attempt in (
                None,
                op.request.attempt,
            ):
                outcome = replace(outcome, status=DisconnectStatus.REMOVED)
            effects = self._leave_effects(
                op.sid, op.session, op.policy, outcome, op.request.reason
            )
        return [e for e in effects if isinstance(e, (Emit, Track))]

    def repaired_effects(
        self, sid: str, session: Session, policy: DisconnectPolicy, outcome: ConnectOutcome
    ) -> Sequence[Effect]:
        """The announcements of a live socket recorded again by reconciling (its rooms
        were joined at its connect): a teacher who was unknown to Redis comes online."""
        self.count("repaired")
        effects = self._join_effects(sid, session, policy, outcome)
        return [e for e in effects if isinstance(e, (Emit, Track))]

    def heartbeat_call(
        self, *, first: bool, offset_ms: int = 0, member: str | None = None
    ) -> Heartbeat:
        """This node incarnation's heartbeat (or, with ``member``, a former one's)."""
        info = {"node_id": self.node_id, "host": socket.gethostname(), "pid": os.getpid()}
        return Heartbeat(
            schema=self.keys,
            member=member or self.member,
            first=first,
            info=json.dumps(info, separators=(",", ":")),
            offset_ms=offset_ms,
        )

    def recovered_effects(self, outcome: DisconnectOutcome, reason: str) -> Sequence[Effect]:
        """The policy's effects for a connection recovered from its record alone."""
        record = outcome.record
        if record is None:
            return ()
        policy = self.policies.get(record.session.role)
        if policy is None:
            return ()
        return self.disconnect_effects(record.sid, record.session, policy, outcome, reason)

    @property
    def node_timeout_ms(self) -> int:
        """``Settings.node_timeout`` in milliseconds."""
        return round(self.settings.node_timeout * 1000)

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

    def _leave_effects(
        self,
        sid: str,
        session: Session,
        policy: DisconnectPolicy,
        outcome: DisconnectOutcome | None,
        reason: str,
    ) -> Sequence[Effect]:
        if outcome is not None and outcome.record is not None:
            session = outcome.record.session
        facts = _make_disconnect_facts(sid, session, outcome, reason, self.settings)
        if facts.went_offline and policy.tracks_alive:
            self.count("announced_offline")
        return policy.on_disconnect(facts)

    # --- held-back leaves -----------------------------------------------------------

    def finish_request(self, member: str) -> FinishLeaveRequest | None:
        """The request that finishes the held-back leave queued as ``member``."""
        try:
            org_id, user_id, role = parse_queue_member(member)
        except (ValueError, TypeError):
            logger.warning("ignoring a malformed leave-queue member", extra={"member": member})
            return None
        # Only roles that drive the alive hash hold leaves back: records in the alive hash.
        keys = self.keys.user(org_id, user_id, role, tracks_alive=True)
        return FinishLeaveRequest(keys=keys._replace(queue_member=member), layout=self.layout)

    def finished_leave_effects(self, finished: FinishLeaveOutcome) -> Sequence[Effect]:
        """The effects of a held-back leave this node claimed (run from its record)."""
        outcome = finished.outcome
        if outcome is None or outcome.record is None:
            return ()
        record = outcome.record
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

    # --- queries --------------------------------------------------------------------

    def validated_id(self, field: str, value: object) -> Id:
        """Validate one id given to a query."""
        return validate_id(field, value, self._id_pattern)

    def query_role(self, role: object) -> tuple[str, DisconnectPolicy]:
        """Validate a role given to a query (it must have a policy)."""
        name = validate_role(role)
        return name, self.policies.for_role(name)

    def org_query(self, org_id: object, role: object) -> OrgQuery:
        """The validated index query of an organisation's connections in a role."""
        org = self.validated_id("org_id", org_id)
        name, policy = self.query_role(role)
        return OrgQuery(keys=self.keys, org_id=org, role=name, tracks_alive=policy.tracks_alive)

    def presence_keys(self, org_id: object, user_id: object, role: object) -> tuple[str, str]:
        """``(alive key, record hash key)`` of a (user, role), validated."""
        org, user = self.validated_id("org_id", org_id), self.validated_id("user_id", user_id)
        name, policy = self.query_role(role)
        keys = self.keys.user(org, user, name, tracks_alive=policy.tracks_alive)
        return keys.alive, keys.records

    def lesson_filter(self, lesson_id: object) -> Id | None:
        """A validated lesson id, or ``None`` for every lesson."""
        return None if lesson_id is None else self.validated_id("lesson_id", lesson_id)

    def _parse(self, raw_session: object, *, connect: bool) -> tuple[Session, DisconnectPolicy]:
        role = read_role(raw_session)
        policy = self.policies.for_role(role)
        session = parse_session(
            raw_session,
            id_pattern=self._id_pattern,
            required=policy.connect_requires if connect else frozenset(),
            role=role,
        )
        return session, policy
