"""What the facades ask a store, and what it answers: plain frozen data.

The core computes every key name and value (pure); a store only executes the
transition atomically and reports the outcome. Stores therefore hold no knowledge of
templates or policies, and an adapter for another database implements two methods.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from enum import Enum
from json.encoder import encode_basestring_ascii as _json_str

from ._errors import StoreError
from ._session import Id, Session

__all__ = [
    "ConnectOutcome",
    "ConnectRequest",
    "ConnectStatus",
    "ConnectionRecord",
    "DisconnectOutcome",
    "DisconnectRequest",
    "DisconnectStatus",
    "FinishLeaveOutcome",
    "FinishLeaveRequest",
    "Heartbeat",
    "KeySchema",
    "NodeInfo",
    "OnlineUser",
    "OrgQuery",
    "StoreLayout",
    "UserPresence",
]


class ConnectStatus(str, Enum):
    """How a store handled a connect."""

    NEW = "new"
    """The connection was recorded."""
    REPEAT = "repeat"
    """The same sid was already recorded (a retried call): nothing changed."""
    STALE = "stale"
    """The sid already disconnected: a late connect is refused, nothing changed."""


class DisconnectStatus(str, Enum):
    """How a store handled a disconnect."""

    REMOVED = "removed"
    """The connection record was removed by this call."""
    REPEAT = "repeat"
    """The sid was already removed by an earlier call; its outcome is returned again."""
    UNKNOWN = "unknown"
    """No record of this sid: it never connected here, or its records expired."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreLayout:
    """The parts of :class:`~presence_kit.Settings` a store needs to write values."""

    state_field: str
    connect_state: str
    disconnect_state: str
    offline_ttl: int
    connection_ttl: int
    tombstone_ttl: int
    leave_grace_ms: int = 0
    """Milliseconds a last connection's leave is held back (0: announce at once)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySchema:
    """Every Redis key name presence_kit uses, from the settings' templates.

    A user's keys share the cluster slot of the spec's alive key: they embed its name
    as their hash tag. An organisation's index keys share the slot ``{<prefix>:org:<id>}``.
    """

    alive_template: str
    prefix: str

    def alive(self, org_id: Id, user_id: Id) -> str:
        """The spec's alive hash of a user."""
        return self.alive_template.format(org_id=org_id, user_id=user_id)

    def records(self, alive_key: str, role: str, *, tracks_alive: bool) -> str:
        """Hash of a user's connection records in a role (fields ``c:<sid>``, and ``n``).

        For a role that drives the alive hash the records live in the alive hash itself
        (extra fields beside ``state``): one key per online teacher, not two.
        """
        if tracks_alive:
            return alive_key
        return f"{self.prefix}:{{{alive_key}}}:conns:{role}"

    def tombstone(self, alive_key: str, sid: str) -> str:
        """Marker left by a finished disconnect (its outcome, for repeats)."""
        return f"{self.prefix}:{{{alive_key}}}:gone:{sid}"

    def held_leave(self, alive_key: str, role: str) -> str:
        """Hash of a leave held back by the grace period."""
        return f"{self.prefix}:{{{alive_key}}}:held:{role}"

    def org_index(self, org_id: Id, role: str) -> str:
        """Hash ``sid -> [user_id, lesson_id]`` of an organisation's connections in a role."""
        return f"{self.prefix}:{{{self.prefix}:org:{org_id}}}:online:{role}"

    def leave_queue(self) -> str:
        """Sorted set of held-back leaves, scored by when their grace ends (ms)."""
        return f"{self.prefix}:{{{self.prefix}:leaves}}:due"

    def live_nodes(self) -> str:
        """Sorted set ``node/incarnation -> last heartbeat (ms, Redis clock)``."""
        return f"{self.prefix}:{{{self.prefix}:nodes}}:live"

    def claimed_nodes(self) -> str:
        """Sorted set of dead nodes being swept: ``node/incarnation -> claim expiry (ms)``."""
        return f"{self.prefix}:{{{self.prefix}:nodes}}:claimed"

    def node_info(self) -> str:
        """Hash ``node/incarnation -> JSON`` (host, pid, start) for operators."""
        return f"{self.prefix}:{{{self.prefix}:nodes}}:info"

    def node_index(self, member: str, bucket: int) -> str:
        """Hash ``sid -> [org_id, user_id, role]``: one of a node incarnation's
        256 buckets of connections (small hashes stay compact listpacks)."""
        return f"{self.prefix}:{{{self.prefix}:node:{member}}}:conns:{bucket}"

    def node_indexes(self, member: str) -> list[str]:
        """Every bucket of a node incarnation's index."""
        return [self.node_index(member, bucket) for bucket in range(NODE_BUCKETS)]


NODE_BUCKETS = 256
"""Buckets of a node's connection index: up to ~32,000 connections per node keep every
bucket under Redis's 128-entry listpack limit (about half the memory of one big hash)."""


def node_bucket(sid: str) -> int:
    """The node-index bucket of a connection."""
    return zlib.crc32(sid.encode()) % NODE_BUCKETS


_compact = json.JSONEncoder(separators=(",", ":")).encode
"""Compact JSON, with one shared encoder (``json.dumps`` with options builds one per call)."""


def _id_list(*values: object) -> str:
    """``_compact(list(values))`` for ids and role names, without the encoder's overhead
    (these are built on every connect and disconnect): the same text, byte for byte."""
    parts = []
    for value in values:
        if type(value) is str:
            parts.append(_json_str(value))
        elif type(value) is int:
            parts.append(int.__repr__(value))
        else:  # an int or str subclass (an IntEnum, say), None: as json would write it
            parts.append(_compact(value))
    return "[" + ",".join(parts) + "]"


RECORD_FIELD = "c:"
"""Prefix of the hash fields that hold connection records (``c:<sid>``)."""


def records_of(fields: dict[str, str]) -> dict[str, str]:
    """``sid -> record`` from a record hash's fields."""
    n = len(RECORD_FIELD)
    return {k[n:]: v for k, v in fields.items() if k.startswith(RECORD_FIELD)}


def node_entry(org_id: Id, user_id: Id, role: str) -> str:
    """The node index value of a connection: enough to rebuild its keys."""
    return _id_list(org_id, user_id, role)


def parse_node_entry(text: str | bytes) -> tuple[Id, Id, str]:
    """``(org_id, user_id, role)`` of a node index value."""
    org_id, user_id, role = json.loads(text)
    return org_id, user_id, role


def index_entry(user_id: Id, lesson_id: Id) -> str:
    """The org index value of a connection."""
    return _id_list(user_id, lesson_id)


def parse_index_entry(text: str | bytes) -> tuple[Id, Id]:
    """``(user_id, lesson_id)`` of an org index value."""
    user_id, lesson_id = json.loads(text)
    return user_id, lesson_id


def queue_member(org_id: Id, user_id: Id, role: str) -> str:
    """The leave-queue member of a (user, role): enough to rebuild every key."""
    return _id_list(org_id, user_id, role)


def parse_queue_member(text: str | bytes) -> tuple[Id, Id, str]:
    """``(org_id, user_id, role)`` of a leave-queue member."""
    org_id, user_id, role = json.loads(text)
    return org_id, user_id, role


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionRecord:
    """One live connection as the store keeps it: enough to run its leave later."""

    sid: str
    namespace: str
    node_id: str
    incarnation: str
    session: Session

    def to_json(self) -> str:
        """Serialise compactly (the sid is the hash field, so it is left out).

        ``[org_id, user_id, lesson_id, role, "node/incarnation"]``, then ``room_id`` and
        the namespace when they are set; ids keep their JSON types. Short enough (under
        Redis's 64-byte ``hash-max-listpack-value`` for usual ids) that a user's
        connections hash stays a compact listpack.
        """
        s = self.session
        fields: list[object] = [
            s.org_id,
            s.user_id,
            s.lesson_id,
            s.role,
            f"{self.node_id}/{self.incarnation}",
        ]
        if s.room_id is not None or self.namespace != "/":
            fields.append(s.room_id)
        if self.namespace != "/":
            fields.append(self.namespace)
        return _id_list(*fields)

    @classmethod
    def from_json(cls, sid: str, text: str | bytes) -> ConnectionRecord:
        """Parse what :meth:`to_json` wrote; a corrupt record raises :class:`StoreError`."""
        try:
            org_id, user_id, lesson_id, role, node, *rest = json.loads(text)
            node_id, _, incarnation = node.rpartition("/")
            return cls(
                sid=sid,
                namespace=rest[1] if len(rest) > 1 else "/",
                node_id=node_id,
                incarnation=incarnation,
                session=Session(
                    role=role,
                    org_id=org_id,
                    user_id=user_id,
                    lesson_id=lesson_id,
                    room_id=rest[0] if rest else None,
                ),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"corrupt connection record: {str(text)[:80]!r}") from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class OrgQuery:
    """An organisation's index of connections in one role (and how to verify it)."""

    keys: KeySchema
    org_id: Id
    role: str
    tracks_alive: bool

    @property
    def index_key(self) -> str:
        """The index's key."""
        return self.keys.org_index(self.org_id, self.role)

    def records_key(self, user_id: Id) -> str:
        """Where a user's connection records of this role live."""
        alive = self.keys.alive(self.org_id, user_id)
        return self.keys.records(alive, self.role, tracks_alive=self.tracks_alive)

    def held_leave_key(self, user_id: Id) -> str:
        """A user's held-back leave in this role."""
        return self.keys.held_leave(self.keys.alive(self.org_id, user_id), self.role)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectRequest:
    """Record connection ``sid`` of one (user, role); mark the user online if it tracks alive."""

    sid: str
    alive_key: str
    """The spec's alive hash; its name is also the cluster hash tag of the other keys."""
    connections_key: str
    """Hash of this user's connection records in this role (see :meth:`KeySchema.records`)."""
    tombstone_key: str
    """Marker left by this sid's disconnect (a late connect is then refused)."""
    held_leave_key: str
    """The (user, role)'s held-back leave, cancelled by this connect."""
    org_index_key: str
    """The organisation's index of connections in this role."""
    index_entry: str
    node_index_key: str
    """This node incarnation's index of its connections (read by a sweep)."""
    node_entry: str
    snapshot: OrgQuery | None
    """An org index to return in ``ConnectOutcome.snapshot``, or ``None``."""
    record: ConnectionRecord
    tracks_alive: bool
    """Whether this role's connections drive the alive hash (``TeacherAPP``)."""
    layout: StoreLayout


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectOutcome:
    """What a connect did."""

    status: ConnectStatus
    first: bool
    """This connection made the (user, role) go from no connection to one."""
    connections: int
    """Live connections of the (user, role) after the call."""
    version: int
    """The alive hash's transition counter after the call (0 for roles that don't track)."""
    at: float
    """Server time of the call (seconds since the epoch, from Redis ``TIME``)."""
    resumed: bool = False
    """This connection cancelled a leave held back by the grace period."""
    snapshot: tuple[tuple[Id, Id], ...] = ()
    """``(user_id, lesson_id)`` per connection in the requested snapshot's index."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectRequest:
    """Remove connection ``sid``; mark the user offline if it was their last one."""

    sid: str
    alive_key: str
    connections_key: str
    tombstone_key: str
    held_leave_key: str
    org_index_key: str
    leave_queue_key: str
    queue_member: str
    node_index_key: str
    """The index of the node incarnation that held the connection."""
    tracks_alive: bool
    reason: str
    layout: StoreLayout
    remember: bool = True
    """Keep a tombstone so a repeat returns this outcome (a sweep does not: a node that
    was only stalled may register the same sid again)."""
    attempt: str = ""
    """Identifies this handler call (``[A-Za-z0-9.-]``, at most 64 characters); the
    tombstone keeps it, so a repeat tells whether the first call was this one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectOutcome:
    """What a disconnect did (or, for ``REPEAT``, what the first call did)."""

    status: DisconnectStatus
    last: bool
    """The removed connection was the (user, role)'s last one: a real leave."""
    record: ConnectionRecord | None
    """The removed record (``None`` when ``UNKNOWN``)."""
    version: int
    at: float
    """Server time of the removal (seconds since the epoch)."""
    deferred: bool = False
    """The last connection went, but its leave is held back by the grace period."""
    attempt: str | None = None
    """For ``REPEAT``: the :attr:`DisconnectRequest.attempt` of the call that made the
    removal (``None``: the store does not say). A replayed call whose own earlier try
    made it announces the leave; one made by another call (a reconcile, a duplicate
    handler call) was announced by that call."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishLeaveRequest:
    """Run the held-back leave of a (user, role) if its grace has ended."""

    alive_key: str
    connections_key: str
    held_leave_key: str
    org_index_key: str
    leave_queue_key: str
    queue_member: str
    layout: StoreLayout


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishLeaveOutcome:
    """What a finish call did: ``outcome`` is set when this call ran the leave."""

    outcome: DisconnectOutcome | None
    reason: str
    due: float | None
    """When the leave is due (seconds), if it was not yet."""


@dataclass(frozen=True, kw_only=True, slots=True)
class UserPresence:
    """What the store knows of one (user, role)."""

    state: str | None
    """The alive hash's state (``None``: no alive key, or a role that doesn't track it)."""
    connections: tuple[ConnectionRecord, ...]
    since: float | None
    """When ``state`` last changed (seconds since the epoch)."""
    last_reason: str | None
    """Reason of the user's last leave."""
    version: int


@dataclass(frozen=True, kw_only=True, slots=True)
class OnlineUser:
    """A user with live connections in a role, from :meth:`PresenceKit.online_users`."""

    user_id: Id
    """The id, with the type it had in the session."""
    connections: int
    lesson_ids: tuple[Id, ...]
    """The lessons of those connections, without repeats."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeInfo:
    """A node incarnation as the registry knows it (``presence-kit nodes``)."""

    member: str
    """``node_id/incarnation``."""
    last_heartbeat: float | None
    """Seconds since the epoch (Redis clock); ``None`` while it is being swept."""
    connections: int
    info: dict[str, object]


@dataclass(frozen=True, kw_only=True, slots=True)
class Heartbeat:
    """A node incarnation's heartbeat (see ``lua/heartbeat.lua``)."""

    schema: KeySchema
    member: str
    first: bool
    """The first heartbeat of this incarnation (it registers; later ones may be fenced)."""
    info: str
    offset_ms: int = 0
    """Added to the Redis time; negative at a graceful shutdown."""

    @property
    def keys(self) -> list[str]:
        """The script's keys."""
        return [self.schema.live_nodes(), self.schema.node_info()]

    @property
    def args(self) -> list[str | int]:
        """The script's arguments."""
        return [self.member, 1 if self.first else 0, self.info, self.offset_ms]
