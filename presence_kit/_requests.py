"""What a kit sends to its store: validated requests, key names, attempt ids.

The half of the core that builds requests (the other half, :mod:`presence_kit._core`,
turns the store's answers into effects and keeps the kit's counters and queues):
validating handler calls and queries, naming every key, numbering attempts, and the
identity of this node incarnation. Pure and in-memory; :class:`KitRequests` is the
base of :class:`~presence_kit._core.KitCore`, and
:class:`presence_kit.testing.RequestBuilder` wraps one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import replace

from ._codec import index_entry, make_record, parse_node_entry, parse_queue_member
from ._construct import maker
from ._errors import InvalidSessionError
from ._keys import KeySchema, UserKeys, node_bucket
from ._model import (
    ConnectRequest,
    DisconnectRequest,
    FinishLeaveRequest,
    Heartbeat,
    OrgQuery,
    StoreLayout,
    UpdateRequest,
)
from ._policies import DisconnectPolicy, default_policies
from ._prepared import Held, PreparedConnect, PreparedDisconnect, PreparedUpdate, same_session
from ._session import (
    Id,
    Session,
    parse_meta,
    parse_session,
    read_role,
    validate_id,
    validate_reason,
    validate_role,
    validate_sid,
)
from ._settings import Settings

__all__ = ["KitRequests", "generate_node_id"]

logger = logging.getLogger("presence_kit")

# The hot path builds these from validated parts (positional, in field order).
_make_connect_request = maker(ConnectRequest)
_make_disconnect_request = maker(DisconnectRequest)


def generate_node_id() -> str:
    """A node id from the host name, the pid and a random part."""
    host = re.sub(r"[^A-Za-z0-9\-]", "-", socket.gethostname())[:32] or "host"
    return f"{host[:20]}-{os.getpid()}-{secrets.token_hex(3)}"


class KitRequests:
    """Builds every store request of one kit (one node incarnation at a time)."""

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
        self.former_members: list[str] = []
        """Earlier incarnations of this kit not yet handed to the sweepers: their node
        indexes may hold entries written after their sweep, before the kit learnt it had
        been fenced."""
        # Attempt ids of store calls are "<random>.<n>" (see _next_attempt).
        self._attempt_prefix = secrets.token_hex(4) + "."
        self._attempts = itertools.count(1)
        self._last_seq = 0  # the last update's sequence number (see next_update_seq)
        self._held: dict[str, Held] = {}  # what local connects validated, by sid
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
            feed=s.feed,
            feed_retention_ms=round(s.feed_retention * 1000),
        )
        self.keys = KeySchema(
            alive_template=s.alive_key, prefix=s.key_prefix, feed_shards=s.feed_shards
        )
        self._node_indexes: tuple[str, list[str]] = ("", [])  # (incarnation, bucket keys)
        self._swept_indexes: tuple[str, list[str]] = ("", [])  # (member, bucket keys)

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

    def next_update_seq(self) -> int:
        """A new update's sequence number: the microseconds of the wall clock, kept
        increasing. A connection's updates come from its node, in order; should another
        node update it too, the later update (by the clocks) wins."""
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    def _next_attempt(self) -> str:
        """A new store call's attempt id: unique across kits, cheap per call."""
        return f"{self._attempt_prefix}{next(self._attempts):x}"

    # --- handler calls --------------------------------------------------------------

    def prepare_connect(self, sid: object, raw_session: object) -> PreparedConnect:
        """Validate a connect and build the store request; raises before any I/O."""
        sid = validate_sid(sid)
        session, policy = self._parse(raw_session, connect=True)
        meta = parse_meta(raw_session).text
        keys = self.user_keys(session, policy)
        snapshot_of = self.policies.snapshot_of(session.role)
        request = _make_connect_request(
            sid,
            keys,
            self.keys.tombstone(keys.alive, sid),
            index_entry(
                session.user_id, session.lesson_id, meta if self.settings.snapshot_meta else ""
            ),
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
            make_record(sid, self.namespace, self.node_id, self.incarnation, session, None),
            policy.tracks_alive,
            self.layout,
            self._next_attempt(),
            meta,
            time.time_ns() // 1_000_000,  # observed
        )
        return PreparedConnect(sid, session, policy, request)

    def prepare_update(
        self, sid: object, raw_session: object, previous: Session | None
    ) -> PreparedUpdate:
        """Validate an update of connection ``sid`` (whose session this node knows as
        ``previous``, if at all) and build the store request; raises
        :class:`~presence_kit.InvalidSessionError` before any I/O, for a session a
        connect would refuse, a bad ``meta``, or a new ``role``, ``org_id`` or
        ``user_id`` (a new identity: connect again)."""
        sid = validate_sid(sid)
        session, policy = self._parse(raw_session, connect=True)
        meta = parse_meta(raw_session)
        if previous is not None:
            for field in ("role", "org_id", "user_id"):
                old, new = getattr(previous, field), getattr(session, field)
                if type(old) is not type(new) or old != new:
                    raise InvalidSessionError(
                        field, "cannot change in an update (a new identity: connect again)"
                    )
        keys = self.user_keys(session, policy)
        snapshot_meta = self.settings.snapshot_meta
        entry = index_entry(session.user_id, session.lesson_id)
        request = UpdateRequest(
            sid=sid,
            keys=keys,
            tombstone_key=self.keys.tombstone(keys.alive, sid),
            record=make_record(sid, self.namespace, self.node_id, self.incarnation, session, None),
            index_entry=entry[:-1] if snapshot_meta else entry,
            index_meta=snapshot_meta,
            meta=meta.text if meta.given else None,
            seq=self.next_update_seq(),
            tracks_alive=policy.tracks_alive,
            layout=self.layout,
            observed_ms=time.time_ns() // 1_000_000,
        )
        return PreparedUpdate(sid, session, policy, request, previous)

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
            time.time_ns() // 1_000_000,  # observed
        )
        return PreparedDisconnect(sid, session, policy, request)

    # --- background calls -----------------------------------------------------------

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
            time.time_ns() // 1_000_000,  # observed
        )

    def retargeted(
        self, request: ConnectRequest | DisconnectRequest | UpdateRequest
    ) -> ConnectRequest | DisconnectRequest | UpdateRequest:
        """``request`` as this incarnation's: one queued before the kit learnt it was
        fenced would write into its former incarnation's index, which the sweepers may
        have cleared already (the attempt is kept: it is the same call)."""
        if isinstance(request, UpdateRequest):  # the store keeps the record's owner
            return request
        index = self.node_index_key(request.sid)
        if request.node_index_key == index:
            return request
        if isinstance(request, ConnectRequest):
            record = replace(request.record, incarnation=self.incarnation)
            return replace(request, node_index_key=index, record=record)
        return replace(request, node_index_key=index)

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

    @property
    def node_timeout_ms(self) -> int:
        """``Settings.node_timeout`` in milliseconds."""
        return round(self.settings.node_timeout * 1000)

    def finish_request(self, member: str) -> FinishLeaveRequest | None:
        """The request that finishes the held-back leave queued as ``member``."""
        try:
            org_id, user_id, role = parse_queue_member(member)
        except (ValueError, TypeError):
            logger.warning("ignoring a malformed leave-queue member", extra={"member": member})
            return None
        # Only roles that drive the alive hash hold leaves back: records in the alive hash.
        keys = self.keys.user(org_id, user_id, role, tracks_alive=True)
        return FinishLeaveRequest(
            keys=keys._replace(queue_member=member),
            layout=self.layout,
            observed_ms=time.time_ns() // 1_000_000,
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

    def parse_session(
        self, raw_session: object, *, connect: bool = False
    ) -> tuple[Session, DisconnectPolicy]:
        """Validate a session (as a connect needs it, with ``connect``) and find its
        role's policy; raises :class:`~presence_kit.InvalidSessionError`."""
        return self._parse(raw_session, connect=connect)

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
