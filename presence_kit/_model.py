"""What the facades ask a store, and what it answers: plain frozen data.

The core computes every key name and value (pure); a store only executes the
transition atomically and reports the outcome. Stores therefore hold no knowledge of
templates or policies, and an adapter for another database implements two methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ._codec import ConnectionRecord, heartbeat_args, id_list
from ._keys import KeySchema, UserKeys
from ._session import Id

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
    "FinishLeaveStatus",
    "Heartbeat",
    "KeySchema",
    "NodeInfo",
    "OnlineCount",
    "OnlineUser",
    "OrgQuery",
    "StoreLayout",
    "UpdateOutcome",
    "UpdateRequest",
    "UpdateStatus",
    "UserPresence",
    "group_online",
]


class ConnectStatus(str, Enum):
    """How a store handled a connect."""

    NEW = "new"
    """The connection was recorded."""
    REPEAT = "repeat"
    """The same sid was already recorded (a retried call): the first call's outcome is
    returned again, and nothing changed (but that a record written by an earlier
    incarnation of the same node now names this one)."""
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


class FinishLeaveStatus(str, Enum):
    """How a store handled a :class:`FinishLeaveRequest` (``lua/finish_leave.lua``'s
    first reply field, by the same name)."""

    LEFT = "left"
    """This call claimed the held-back leave and ran it: the (user, role) is offline."""
    LATER = "later"
    """A leave is held back, but its grace has not ended (``due`` says when)."""
    GONE = "gone"
    """Nothing is held back: the leave was cancelled by a reconnect, or already run."""


class UpdateStatus(str, Enum):
    """How a store handled an update (:meth:`~presence_kit.PresenceKit.handle_update`)."""

    UPDATED = "updated"
    """The connection's lesson, room or meta changed (or, for a replayed update whose
    reply was lost, that update's own earlier try changed them)."""
    UNCHANGED = "unchanged"
    """The same values again: nothing changed."""
    UNKNOWN = "unknown"
    """The sid has no live connection: it never connected, or its disconnect already
    ran. Nothing was written (an update never brings a connection back)."""
    STALE = "stale"
    """An older update than one already applied to the connection: nothing changed."""


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
    feed: bool = False
    """Write each change into the presence feed (``Settings.feed``)."""
    feed_retention_ms: int = 86_400_000
    """How long the feed keeps an entry (``Settings.feed_retention``)."""


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

    def user_keys(self, user_id: Id) -> UserKeys:
        """A user's keys in this role (where to verify an entry of the index)."""
        return self.keys.user(self.org_id, user_id, self.role, tracks_alive=self.tracks_alive)

    @property
    def counts_prefix(self) -> str:
        """The prefix of the counts kept beside the index (:meth:`KeySchema.org_counts`)."""
        return self.keys.org_counts(self.org_id, self.role)


class _UserKeyed:
    """The per-user key names of a request, read from its :class:`UserKeys` (kept as
    attributes for stores written against 0.1)."""

    __slots__ = ()
    keys: UserKeys

    @property
    def alive_key(self) -> str:
        """``keys.alive``: the spec's alive hash, the hash tag of the user's keys."""
        return self.keys.alive

    @property
    def connections_key(self) -> str:
        """``keys.records``: the user's connection records in the role."""
        return self.keys.records

    @property
    def held_leave_key(self) -> str:
        """``keys.held_leave``: the (user, role)'s held-back leave."""
        return self.keys.held_leave

    @property
    def org_index_key(self) -> str:
        """``keys.org_index``: the organisation's index of connections in the role."""
        return self.keys.org_index

    @property
    def leave_queue_key(self) -> str:
        """``keys.leave_queue``: the queue of held-back leaves."""
        return self.keys.leave_queue

    @property
    def queue_member(self) -> str:
        """``keys.queue_member``: the (user, role)'s member of the leave queue."""
        return self.keys.queue_member


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectRequest(_UserKeyed):
    """Record connection ``sid`` of one (user, role); mark the user online if it tracks alive."""

    sid: str
    keys: UserKeys
    """The (user, role)'s keys."""
    tombstone_key: str
    """Marker left by this sid's disconnect (a late connect is then refused)."""
    index_entry: str
    """The connection's value in the org index."""
    node_index_key: str
    """This node incarnation's index of its connections (read by a sweep)."""
    snapshot: OrgQuery | None
    """An org index to return in ``ConnectOutcome.snapshot``, or ``None``."""
    record: ConnectionRecord
    tracks_alive: bool
    """Whether this role's connections drive the alive hash (``TeacherAPP``)."""
    layout: StoreLayout
    attempt: str = ""
    """Identifies this connect call (``[A-Za-z0-9.-]``, at most 64 characters); the store
    keeps it with the call's outcome, so a repeat tells whether the first call was this
    one (see :attr:`ConnectOutcome.attempt`)."""
    meta: str = ""
    """The connection's ``meta`` as stored (compact JSON), kept beside its record; empty:
    none."""
    observed_ms: int = 0
    """When the handler saw the change (ms since the epoch, this node's clock): the feed
    entry's ``observed_ms`` (a replay keeps it)."""

    @property
    def node_entry(self) -> str:
        """The connection's value in the node index, ``[org_id, user_id, role]``: the
        same text as ``keys.queue_member`` (enough to rebuild the user's keys)."""
        return self.keys.queue_member


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
    attempt: str | None = None
    """The :attr:`ConnectRequest.attempt` of the call that recorded the connection (for
    ``REPEAT``, the first call's; ``None``: the store does not say). With ``REPEAT``,
    ``first`` and ``version`` are the first call's too: a replayed call whose own
    earlier try recorded the connection announces what that try did; a repeat made by
    another call (a reconcile, a re-registration) announces nothing."""
    earlier_version: int = 0
    """For a replayed call whose first try ran (its reply lost) and brought the user
    online, after which the connection was removed (its disconnect, or a sweep) before
    the replay: the version that first try reached, announced by nobody yet (0: none).
    The replay announces it (and, if it records the connection again, that too)."""
    snapshot_meta: tuple[dict[str, Any] | None, ...] = ()
    """The ``meta`` of each :attr:`snapshot` connection, in the same order, when the
    index keeps it (``Settings.snapshot_meta``; else empty)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectRequest(_UserKeyed):
    """Remove connection ``sid``; mark the user offline if it was their last one."""

    sid: str
    keys: UserKeys
    """The (user, role)'s keys."""
    tombstone_key: str
    node_index_key: str
    """The index of the node incarnation that held the connection."""
    tracks_alive: bool
    reason: str
    layout: StoreLayout
    remember: bool = True
    """Leave a tombstone that refuses a late connect of the sid. A sweep's removal
    (``False``) leaves a soft one: a repeat still gets this outcome, but a node that
    was only cut off may register the same sid again."""
    attempt: str = ""
    """Identifies this handler call (``[A-Za-z0-9.-]``, at most 64 characters); the
    tombstone keeps it, so a repeat tells whether the first call was this one."""
    owner: str = ""
    """Remove the record only if this node incarnation (``node_id/incarnation``) wrote
    it; empty: whoever did. A sweep's and a reconcile's removals set it, so a record
    that a node swept while alive moved to its new incarnation is never removed by
    the sweep of the old one (``UNKNOWN``)."""
    observed_ms: int = 0
    """When the handler (or sweep) saw the change (ms since the epoch): the feed's."""


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
class UpdateRequest(_UserKeyed):
    """Change connection ``sid``'s lesson, room or meta (its identity stays)."""

    sid: str
    keys: UserKeys
    """The (user, role)'s keys."""
    tombstone_key: str
    record: ConnectionRecord
    """The connection's record after the update (its ``meta`` is not part of it)."""
    index_entry: str
    """The connection's new org index value, without its closing ``]`` when
    ``index_meta`` (the store appends ``,<meta>]`` or ``]``: the meta may be the one
    kept)."""
    index_meta: bool
    """The org index keeps each connection's ``meta`` (``Settings.snapshot_meta``)."""
    meta: str | None
    """The new ``meta`` (compact JSON; ``""``: clear it), or ``None`` to keep the stored one."""
    seq: int
    """The update's place among the connection's updates (assigned by the kit, > 0): an
    older one than the last applied is ``STALE``, the same one a repeat."""
    tracks_alive: bool
    layout: StoreLayout
    observed_ms: int = 0
    """When the handler saw the change (ms since the epoch): the feed's."""

    @property
    def identity(self) -> str:
        """The text every record of this connection starts with (``[org_id,user_id,``):
        the store checks it, so an update never moves a record to another identity."""
        s = self.record.session
        return id_list(s.org_id, s.user_id)[:-1] + ","


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateOutcome:
    """What an update did (for a repeat of an update, what its first try did)."""

    status: UpdateStatus
    record: ConnectionRecord | None
    """The connection after the call, with its ``meta`` (``None`` when ``UNKNOWN``)."""
    previous: ConnectionRecord | None = None
    """The connection before the call (``UPDATED`` or ``UNCHANGED``; ``None`` for a
    repeat, whose first try moved it)."""
    lesson_changed: bool = False
    """The update moved the connection to another lesson."""
    version: int
    """The alive hash's transition counter after the call: an update of a connection
    of a role that tracks alive increments it (0 for the other roles)."""
    at: float
    """Server time of the call (seconds since the epoch)."""
    repeat: bool = False
    """The store had applied this very update before (a retry whose reply was lost):
    the outcome is that try's."""


@dataclass(frozen=True, kw_only=True, slots=True)
class OnlineCount:
    """How many users of a role are online in an organisation (or one of its lessons),
    from :meth:`~presence_kit.PresenceKit.count_online`."""

    users: int
    """Users with live connections (a teacher within ``leave_grace`` included)."""
    connections: int
    """Their live connections."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishLeaveRequest(_UserKeyed):
    """Run the held-back leave of a (user, role) if its grace has ended."""

    keys: UserKeys
    """The (user, role)'s keys (``queue_member`` as queued)."""
    layout: StoreLayout
    observed_ms: int = 0
    """When the kit found the leave due (ms since the epoch): the feed's."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishLeaveOutcome:
    """What a finish call did: ``outcome`` is set when this call ran the leave."""

    outcome: DisconnectOutcome | None
    reason: str
    due: float | None
    """When the leave is due (seconds), if it was not yet."""
    status: FinishLeaveStatus | None = None
    """What the call did. A store written before it was added leaves it out: it is
    then read from ``outcome`` and ``due`` (``LEFT`` with an outcome, ``LATER`` with a
    due time, ``GONE`` otherwise), so it is never ``None`` once built."""

    def __post_init__(self) -> None:
        if self.status is None:
            status = (
                FinishLeaveStatus.LEFT
                if self.outcome is not None
                else FinishLeaveStatus.LATER
                if self.due is not None
                else FinishLeaveStatus.GONE
            )
            object.__setattr__(self, "status", status)


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
    """Added to the Redis time: at a graceful shutdown ``shutdown_grace - node_timeout``
    (so the node counts as dead ``shutdown_grace`` seconds later; positive with the
    defaults), and far in the past for a former incarnation handed to the sweepers."""

    @property
    def keys(self) -> list[str]:
        """The script's keys."""
        return [self.schema.live_nodes(), self.schema.node_info()]

    @property
    def args(self) -> list[str | int]:
        """The script's arguments."""
        return heartbeat_args(
            self.member, first=self.first, info=self.info, offset_ms=self.offset_ms
        )


def group_online(entries: Mapping[str, tuple[Id, Id]], lesson_id: Id | None) -> list[OnlineUser]:
    """Fold index entries into one :class:`OnlineUser` per user (in a lesson, if given)."""
    counts: dict[Id, int] = {}
    lessons: dict[Id, dict[Id, None]] = {}
    for user_id, user_lesson in entries.values():
        if lesson_id is not None and str(user_lesson) != str(lesson_id):
            continue
        counts[user_id] = counts.get(user_id, 0) + 1
        lessons.setdefault(user_id, {})[user_lesson] = None
    return [
        OnlineUser(user_id=user_id, connections=n, lesson_ids=tuple(lessons[user_id]))
        for user_id, n in sorted(counts.items(), key=lambda item: str(item[0]))
    ]
