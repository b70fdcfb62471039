"""The state machine of presence, as data: every transition, what it grants, and where.

Everything that decides *whether* a transition announces lives here (as in h11's
``_state.py``). A (user, role) is :class:`UserState` ``offline``, ``online(n)`` or
``held(due)`` (its last connection went, the leave is held back by
``Settings.leave_grace``); each of its connections' sids is :class:`SidState` ``none``,
``recorded``, ``tombstoned`` (a removal's hard tombstone: a late connect is refused)
or ``swept`` (a sweep's soft one). An :class:`Event` (a connect, a disconnect, the
finish of a held-back leave, a sweep of a lost node, a reconcile) moves them, in one
atomic store call; :data:`TABLE` lists every transition, with the store's answer, what
it grants (:class:`Grant`) and where the Lua scripts and
:class:`~presence_kit.memory.MemoryStore` implement it.

:func:`grants` is the one function that decides what a store's answer grants, for
every caller of the core: handler calls, replays from the outbox (a repeat of the
call's own earlier try, whose reply was lost, grants what that try did), repairs,
sweeps and reconciles, finished leaves. The role's policy then decides *what* a
granted announcement emits or tracks (:mod:`presence_kit._policies`).

:mod:`presence_kit._state_docs` draws the table for the documentation
(``docs/explanation/state-machine.md``, checked against it by the tests).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from enum import Enum
from typing import TypeVar

from ._model import (
    ConnectOutcome,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectStatus,
    FinishLeaveOutcome,
    FinishLeaveStatus,
    UpdateOutcome,
    UpdateStatus,
)

__all__ = [
    "TABLE",
    "Call",
    "Change",
    "Event",
    "Flag",
    "Grace",
    "Grant",
    "Outcome",
    "SidState",
    "Status",
    "Transition",
    "UserState",
    "as_granted",
    "flags_of",
    "grants",
]


class Event(str, Enum):
    """What moves the state machine: each is one atomic store call."""

    CONNECT = "connect"
    """A connect handler call (``lua/connect.lua``), or its replay from the outbox."""
    DISCONNECT = "disconnect"
    """A disconnect handler call (``lua/disconnect.lua``), or its replay."""
    FINISH = "finish"
    """The end of a held-back leave's grace (``lua/finish_leave.lua``)."""
    SWEEP = "sweep"
    """The removal of a lost node's connection (``lua/disconnect.lua``, soft tombstone,
    only a record that node incarnation wrote)."""
    RECONCILE = "reconcile"
    """A node matching its records to its live sockets: a record with no socket is
    removed (``lua/disconnect.lua``), a socket with no record is recorded again
    (``lua/connect.lua``, a *repair*)."""
    UPDATE = "update"
    """An update handler call (``lua/update.lua``): a live connection's lesson, room or
    meta changes; or its replay."""


class UserState(str, Enum):
    """A (user, role)'s presence, as its keys hold it."""

    OFFLINE = "offline"
    """No connection: the alive hash says ``disconnect`` (or is gone)."""
    ONLINE = "online(n)"
    """``n`` >= 1 connection records; the alive hash says ``connect``."""
    HELD = "held(due)"
    """The last connection went, and its leave is held back until ``due`` (the alive
    hash still says ``connect``)."""


class SidState(str, Enum):
    """One connection's sid, as the store knows it."""

    NONE = "none"
    """No record and no tombstone: never connected here, or expired."""
    RECORDED = "recorded"
    """A connection record (with its connect's outcome, for repeats)."""
    TOMBSTONED = "tombstoned"
    """Removed; the hard tombstone answers repeats and refuses a late connect."""
    SWEPT = "swept"
    """Removed by a sweep; the soft tombstone answers repeats, but a node that was
    only cut off may record the sid again."""


class Call(str, Enum):
    """Which call a transition's event is, relative to the one that made the sid's
    state (whose attempt the store keeps)."""

    FIRST = "first"
    """A call made once: a handler call, a sweep's or a reconcile's removal."""
    RETRY = "retry"
    """The same call again (the same attempt): a replay from the outbox, a removal
    made again, after a try whose reply was lost."""
    OTHER = "other"
    """Another call for the same sid: a duplicate handler call, a re-registration, a
    removal that someone else made first."""


class Change(str, Enum):
    """What an update changes (the other events change none of these)."""

    NONE = ""
    """Not an update."""
    LESSON = "a new lesson"
    """The lesson (and maybe the room or meta): its rooms move."""
    OTHER = "a new room or meta"
    """The room or the meta, in the same lesson."""
    SAME = "the same values"
    """Nothing: the values it had."""


class Grace(str, Enum):
    """``Settings.leave_grace``, as a transition needs it (roles that track alive)."""

    NONE = "0"
    """Leaves are announced at once (the spec)."""
    PENDING = "> 0, running"
    """Leaves are held back, and this one's grace has not ended."""
    DUE = "> 0, ended"
    """Leaves are held back, and this one's grace has ended."""


class Flag(str, Enum):
    """The facts of a store's answer besides its status (see :func:`flags_of`)."""

    FIRST = "first"
    """``ConnectOutcome.first``: the connect took the (user, role) from none to one."""
    RESUMED = "resumed"
    """``ConnectOutcome.resumed``: it cancelled a held-back leave."""
    EARLIER = "earlier"
    """``ConnectOutcome.earlier_version``: its own first try brought the user online
    and was removed since, unannounced."""
    LAST = "last"
    """``DisconnectOutcome.last`` (a finish's too): the (user, role)'s last connection
    went, now."""
    DEFERRED = "deferred"
    """``DisconnectOutcome.deferred``: the last connection went, its leave held back."""
    LESSON = "lesson_changed"
    """``UpdateOutcome.lesson_changed``: the update moved the connection to another lesson."""
    REPEAT = "repeat"
    """``UpdateOutcome.repeat``: the store had applied this very update (a retry)."""


Status = ConnectStatus | DisconnectStatus | FinishLeaveStatus | UpdateStatus
"""A store's answer to one call."""

Outcome = ConnectOutcome | DisconnectOutcome | FinishLeaveOutcome | UpdateOutcome
"""What a store returns for one transition."""

AnOutcome = TypeVar("AnOutcome", ConnectOutcome, DisconnectOutcome)


@dataclass(frozen=True, kw_only=True, slots=True)
class Grant:
    """What a transition grants its caller: the announcements it may make, once."""

    online: bool = False
    """The (user, role) came online: announce the arrival (``teacher_connect``)."""
    offline: bool = False
    """The (user, role) went offline: announce the leave (``teacher_disconnect``)."""
    removed: bool = False
    """The call removed the connection (now, or in its own earlier try): its
    per-connection leave runs once (a participant's analytics ``disconnect``)."""
    earlier_online: bool = False
    """A replayed connect's own first try brought the user online, at
    ``ConnectOutcome.earlier_version``, and was removed since: that arrival is
    announced now (before this call's own)."""
    own_repeat: bool = False
    """The store answered ``REPEAT`` naming this call's own earlier try: the call acts
    on that try's outcome (``NEW``, ``REMOVED``; see :func:`as_granted`); or, for an
    update, the store had applied this very update (its sequence number) before."""
    updated: bool = False
    """The connection changed (now, or in the update's own earlier try): the update is
    announced once (``teacher_update``, when its lesson changed)."""

    def __str__(self) -> str:
        parts = [
            name
            for name, on in (
                ("announce earlier online", self.earlier_online),
                ("announce online", self.online),
                ("announce offline", self.offline),
                ("leave once (track)", self.removed),
                ("announce update", self.updated),
            )
            if on
        ]
        return ", ".join(parts) or "nothing"


NOTHING = Grant()

# Every grant a connect or a disconnect can make, built once: ``grants()`` runs several
# times per handler call (the core, then the policy), so it only picks one.
_CONNECT_GRANTS = {
    (online, earlier, own): Grant(online=online, earlier_online=earlier, own_repeat=own)
    for online, earlier, own in itertools.product((False, True), repeat=3)
}
_DISCONNECT_GRANTS = {
    (offline, removed, own): Grant(offline=offline, removed=removed, own_repeat=own)
    for offline, removed, own in itertools.product((False, True), repeat=3)
}


_UPDATE_GRANTS = {
    (updated, own): Grant(updated=updated, own_repeat=own)
    for updated, own in itertools.product((False, True), repeat=2)
}


def _own(named: str | None, attempt: str | None, replay: bool) -> bool:
    """Whether a repeat that names attempt ``named`` is the caller's own earlier try."""
    if attempt is None:
        return False  # the caller asks for nothing of its own: a first call
    if named is None:  # the store does not say whose the first call was
        return replay  # a replay trusts it was its own try; a sweep does not
    return named == attempt


def grants(
    event: Event, outcome: Outcome | None, *, attempt: str | None = None, replay: bool = False
) -> Grant:
    """What the transition of ``event`` that answered ``outcome`` grants its caller.

    ``attempt``: the caller's own attempt id, when the call may repeat an earlier try of
    its own whose reply was lost (a replay, a sweep's or reconcile's removal made
    again); a ``REPEAT`` naming it grants what that try did. ``replay``: the call is a
    handler call replayed from the outbox, which also takes a ``REPEAT`` whose store
    names no attempt (``attempt is None``) as its own. ``None`` (the store failed)
    grants nothing. Pure; see :data:`TABLE` for every case.
    """
    if outcome is None:
        return NOTHING
    if isinstance(outcome, UpdateOutcome):
        if event is not Event.UPDATE:
            raise ValueError(f"an update outcome answers {Event.UPDATE}, not {event}")
        updated = outcome.status is UpdateStatus.UPDATED
        return _UPDATE_GRANTS[updated, updated and outcome.repeat]
    if event is Event.UPDATE:
        raise ValueError(f"{event} is answered by an UpdateOutcome")
    if isinstance(outcome, ConnectOutcome):
        if event is Event.FINISH:
            raise ValueError(f"{event} is answered by a FinishLeaveOutcome")
        own = (
            attempt is not None
            and outcome.status is ConnectStatus.REPEAT
            and _own(outcome.attempt, attempt, replay)
        )
        online = (own or outcome.status is ConnectStatus.NEW) and outcome.first
        earlier = attempt is not None and outcome.earlier_version > 0
        return _CONNECT_GRANTS[online, earlier, own]
    if isinstance(outcome, DisconnectOutcome):
        if event is Event.FINISH:
            raise ValueError(f"{event} is answered by a FinishLeaveOutcome")
        own = (
            attempt is not None
            and outcome.status is DisconnectStatus.REPEAT
            and _own(outcome.attempt, attempt, replay)
        )
        removed = own or outcome.status is DisconnectStatus.REMOVED
        return _DISCONNECT_GRANTS[removed and outcome.last, removed, own]
    if event is not Event.FINISH:
        raise ValueError(f"a finish outcome answers {Event.FINISH}, not {event}")
    finished = outcome.outcome
    if outcome.status is not FinishLeaveStatus.LEFT or finished is None:
        return NOTHING
    # the held-back leave runs from its record, as the removal would have
    return _DISCONNECT_GRANTS[finished.last, True, False]


def as_granted(outcome: AnOutcome, grant: Grant) -> AnOutcome:
    """``outcome`` as the caller's policy sees it: a repeat of the call's own earlier
    try (``grant.own_repeat``) reads as what that try did (``NEW``, ``REMOVED``)."""
    if not grant.own_repeat:
        return outcome
    if isinstance(outcome, ConnectOutcome):
        return replace(outcome, status=ConnectStatus.NEW)
    return replace(outcome, status=DisconnectStatus.REMOVED)


def flags_of(outcome: Outcome) -> frozenset[Flag]:
    """The :class:`Flag` facts of a store's answer."""
    if isinstance(outcome, ConnectOutcome):
        pairs = [
            (Flag.FIRST, outcome.first),
            (Flag.RESUMED, outcome.resumed),
            (Flag.EARLIER, outcome.earlier_version > 0),
        ]
    elif isinstance(outcome, DisconnectOutcome):
        pairs = [(Flag.LAST, outcome.last), (Flag.DEFERRED, outcome.deferred)]
    elif isinstance(outcome, UpdateOutcome):
        pairs = [(Flag.LESSON, outcome.lesson_changed), (Flag.REPEAT, outcome.repeat)]
    else:
        pairs = [(Flag.LAST, outcome.outcome is not None and outcome.outcome.last)]
    return frozenset(flag for flag, on in pairs if on)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    """One row of :data:`TABLE`: a state and an event, the store's answer, what follows.

    The (user, role) is one that tracks alive (``TeacherAPP``); for the other roles the
    rows are the same but that their leaves are never held back, and their policies
    announce nothing on ``online``/``offline`` (their ``removed`` still tracks).
    """

    event: Event
    user: UserState
    """The (user, role) before."""
    sid: SidState | None
    """The sid before (``None``: a finish acts on the (user, role) alone)."""
    when: str
    """The condition, in words."""
    others: int = 0
    """The (user, role)'s other connections before (the sid's own not counted)."""
    call: Call = Call.FIRST
    grace: Grace = Grace.NONE
    moved: bool = False
    """The record was moved to a later incarnation of its node (registered again after
    a fence) before a sweep of the former one."""
    change: Change = Change.NONE
    """What an update changes."""
    status: Status
    """The store's answer."""
    flags: frozenset[Flag] = frozenset()
    user_after: UserState
    sid_after: SidState | None
    grant: Grant = NOTHING
    feed: tuple[str, ...] = ()
    """The entries it writes into the presence feed (``Settings.feed``), in order, in
    the same script: exactly once, so a repeat writes none."""
    lua: str
    """Where the Redis store implements it: the script, and the case in it."""

    @property
    def memory(self) -> str:
        """Where :class:`~presence_kit.memory.MemoryStore` mirrors it: the method of the
        script's transition."""
        script = self.lua.split(":", 1)[0].removeprefix("lua/").removesuffix(".lua")
        return f"MemoryStore.{script}"


def _flags(names: str) -> frozenset[Flag]:
    return frozenset(Flag(name) for name in names.split())


# Short names for the table's cells.
_C, _D, _F = Event.CONNECT, Event.DISCONNECT, Event.FINISH
_S, _R, _U = Event.SWEEP, Event.RECONCILE, Event.UPDATE
_OFF, _ON, _HELD = UserState.OFFLINE, UserState.ONLINE, UserState.HELD
_NONE, _REC = SidState.NONE, SidState.RECORDED
_TOMB, _SWEPT = SidState.TOMBSTONED, SidState.SWEPT
_ARRIVAL, _EARLIER = Grant(online=True), Grant(earlier_online=True)
_BOTH_ARRIVALS = Grant(online=True, earlier_online=True)
_OWN_ARRIVAL = Grant(online=True, own_repeat=True)
_LEAVE, _REMOVAL = Grant(offline=True, removed=True), Grant(removed=True)
_OWN_LEAVE = Grant(offline=True, removed=True, own_repeat=True)
_UPDATE, _OWN_UPDATE = Grant(updated=True), Grant(updated=True, own_repeat=True)

TABLE: tuple[Transition, ...] = (
    # --- connect --------------------------------------------------------------------------
    Transition(
        event=_C, user=_OFF, sid=_NONE, when="first connection", status=ConnectStatus.NEW,
        flags=_flags("first"), user_after=_ON, sid_after=_REC, grant=_ARRIVAL,
        feed=("join", "online"), lua="lua/connect.lua: a new record, n = 1",
    ),
    Transition(
        event=_C, user=_ON, others=1, sid=_NONE, when="another connection",
        status=ConnectStatus.NEW, user_after=_ON, sid_after=_REC,
        feed=("join",), lua="lua/connect.lua: a new record, n > 1",
    ),
    Transition(
        event=_C, user=_HELD, sid=_NONE, grace=Grace.PENDING,
        when="a reconnect within the grace: cancels the held-back leave", status=ConnectStatus.NEW,
        flags=_flags("resumed"), user_after=_ON, sid_after=_REC,
        feed=("join",), lua="lua/connect.lua: a new record, a held-back leave cancelled",
    ),
    Transition(
        event=_C, user=_ON, sid=_REC, call=Call.OTHER,
        when="recorded by another call (a duplicate, a re-registration)",
        status=ConnectStatus.REPEAT, flags=_flags("first"), user_after=_ON, sid_after=_REC,
        lua="lua/connect.lua: already recorded",
    ),
    Transition(
        event=_C, user=_ON, sid=_REC, call=Call.RETRY,
        when="recorded by this call's own try, its reply lost: what that try did",
        status=ConnectStatus.REPEAT, flags=_flags("first"), user_after=_ON, sid_after=_REC,
        grant=_OWN_ARRIVAL, lua="lua/connect.lua: already recorded, the stored outcome",
    ),
    Transition(
        event=_C, user=_OFF, sid=_TOMB, call=Call.OTHER,
        when="a late connect of a disconnected sid", status=ConnectStatus.STALE, user_after=_OFF,
        sid_after=_TOMB, lua="lua/connect.lua: a hard tombstone",
    ),
    Transition(
        event=_C, user=_OFF, sid=_TOMB, call=Call.RETRY,
        when="its own first try brought the user online, removed since",
        status=ConnectStatus.STALE, flags=_flags("earlier"), user_after=_OFF, sid_after=_TOMB,
        grant=_EARLIER, lua="lua/connect.lua: a hard tombstone keeping this attempt's outcome",
    ),
    Transition(
        event=_C, user=_OFF, sid=_SWEPT, call=Call.OTHER,
        when="a node that was only cut off records the sid again", status=ConnectStatus.NEW,
        flags=_flags("first"), user_after=_ON, sid_after=_REC, grant=_ARRIVAL,
        feed=("join", "online"), lua="lua/connect.lua: a soft tombstone, deleted",
    ),
    Transition(
        event=_C, user=_OFF, sid=_SWEPT, call=Call.RETRY,
        when="its own first try brought the user online, swept since", status=ConnectStatus.NEW,
        flags=_flags("first earlier"), user_after=_ON, sid_after=_REC, grant=_BOTH_ARRIVALS,
        feed=("join", "online"),
        lua="lua/connect.lua: a soft tombstone keeping this attempt's outcome",
    ),
    # --- disconnect -----------------------------------------------------------------------
    Transition(
        event=_D, user=_ON, sid=_REC, when="last connection", status=DisconnectStatus.REMOVED,
        flags=_flags("last"), user_after=_OFF, sid_after=_TOMB, grant=_LEAVE,
        feed=("leave", "offline"), lua="lua/disconnect.lua: last connection, grace 0",
    ),
    Transition(
        event=_D, user=_ON, others=1, sid=_REC, when="not the last connection",
        status=DisconnectStatus.REMOVED, user_after=_ON, sid_after=_TOMB, grant=_REMOVAL,
        feed=("leave",), lua="lua/disconnect.lua: not the last connection",
    ),
    Transition(
        event=_D, user=_ON, sid=_REC, grace=Grace.PENDING,
        when="last connection, its leave held back", status=DisconnectStatus.REMOVED,
        flags=_flags("deferred"), user_after=_HELD, sid_after=_TOMB, grant=_REMOVAL,
        feed=("leave",), lua="lua/disconnect.lua: last connection, grace > 0",
    ),
    Transition(
        event=_D, user=_OFF, sid=_TOMB, call=Call.OTHER,
        when="removed by another call (a duplicate handler call)", status=DisconnectStatus.REPEAT,
        flags=_flags("last"), user_after=_OFF, sid_after=_TOMB,
        lua="lua/disconnect.lua: a tombstone, another attempt",
    ),
    Transition(
        event=_D, user=_OFF, sid=_TOMB, call=Call.RETRY,
        when="removed by this call's own try, its reply lost: what that try did",
        status=DisconnectStatus.REPEAT, flags=_flags("last"), user_after=_OFF, sid_after=_TOMB,
        grant=_OWN_LEAVE, lua="lua/disconnect.lua: a tombstone naming this attempt",
    ),
    Transition(
        event=_D, user=_OFF, sid=_NONE, when="no record (never connected here, or expired)",
        status=DisconnectStatus.UNKNOWN, user_after=_OFF, sid_after=_NONE,
        lua="lua/disconnect.lua: no record",
    ),
    Transition(
        event=_D, user=_OFF, sid=_SWEPT, call=Call.OTHER,
        when="a handler call after its sweep: the tombstone hardens",
        status=DisconnectStatus.REPEAT, flags=_flags("last"), user_after=_OFF, sid_after=_TOMB,
        lua="lua/disconnect.lua: a soft tombstone, remember",
    ),
    # --- finish (a held-back leave) -------------------------------------------------------
    Transition(
        event=_F, user=_HELD, sid=None, grace=Grace.DUE,
        when="the grace ended: this caller claims the leave", status=FinishLeaveStatus.LEFT,
        flags=_flags("last"), user_after=_OFF, sid_after=None, grant=_LEAVE,
        feed=("offline",), lua="lua/finish_leave.lua: left",
    ),
    Transition(
        event=_F, user=_HELD, sid=None, grace=Grace.PENDING, when="not due yet",
        status=FinishLeaveStatus.LATER, user_after=_HELD, sid_after=None,
        lua="lua/finish_leave.lua: later",
    ),
    Transition(
        event=_F, user=_ON, others=1, sid=None, grace=Grace.PENDING,
        when="a reconnect cancelled it", status=FinishLeaveStatus.GONE, user_after=_ON,
        sid_after=None, lua="lua/finish_leave.lua: gone",
    ),
    Transition(
        event=_F, user=_OFF, sid=None, when="nothing held back (or another caller ran it)",
        status=FinishLeaveStatus.GONE, user_after=_OFF, sid_after=None,
        lua="lua/finish_leave.lua: gone",
    ),
    # --- sweep (a lost node's connection) -------------------------------------------------
    Transition(
        event=_S, user=_ON, sid=_REC, when="last connection", status=DisconnectStatus.REMOVED,
        flags=_flags("last"), user_after=_OFF, sid_after=_SWEPT, grant=_LEAVE,
        feed=("leave", "offline"), lua="lua/disconnect.lua: owner, no remember, last connection",
    ),
    Transition(
        event=_S, user=_ON, others=1, sid=_REC, when="not the last connection",
        status=DisconnectStatus.REMOVED, user_after=_ON, sid_after=_SWEPT, grant=_REMOVAL,
        feed=("leave",), lua="lua/disconnect.lua: owner, no remember, not the last",
    ),
    Transition(
        event=_S, user=_ON, sid=_REC, grace=Grace.PENDING,
        when="last connection, its leave held back", status=DisconnectStatus.REMOVED,
        flags=_flags("deferred"), user_after=_HELD, sid_after=_SWEPT, grant=_REMOVAL,
        feed=("leave",), lua="lua/disconnect.lua: owner, no remember, grace > 0",
    ),
    Transition(
        event=_S, user=_ON, sid=_REC, moved=True,
        when="the record moved to a later incarnation of its node",
        status=DisconnectStatus.UNKNOWN, user_after=_ON, sid_after=_REC,
        lua="lua/disconnect.lua: another owner's record",
    ),
    Transition(
        event=_S, user=_OFF, sid=_SWEPT, call=Call.RETRY,
        when="made again after its reply was lost", status=DisconnectStatus.REPEAT,
        flags=_flags("last"), user_after=_OFF, sid_after=_SWEPT, grant=_OWN_LEAVE,
        lua="lua/disconnect.lua: a soft tombstone naming this attempt",
    ),
    Transition(
        event=_S, user=_OFF, sid=_TOMB, call=Call.OTHER,
        when="removed by another call first (its handler)", status=DisconnectStatus.REPEAT,
        flags=_flags("last"), user_after=_OFF, sid_after=_TOMB,
        lua="lua/disconnect.lua: a tombstone, another attempt",
    ),
    # --- reconcile (this node's records against its live sockets) -------------------------
    Transition(
        event=_R, user=_ON, sid=_REC, when="a record with no live socket, the last connection",
        status=DisconnectStatus.REMOVED, flags=_flags("last"), user_after=_OFF, sid_after=_TOMB,
        grant=_LEAVE, feed=("leave", "offline"),
        lua="lua/disconnect.lua: owner, remember, last connection",
    ),
    Transition(
        event=_R, user=_OFF, sid=_TOMB, call=Call.RETRY,
        when="a removal made again after its reply was lost", status=DisconnectStatus.REPEAT,
        flags=_flags("last"), user_after=_OFF, sid_after=_TOMB, grant=_OWN_LEAVE,
        lua="lua/disconnect.lua: a tombstone naming this attempt",
    ),
    Transition(
        event=_R, user=_OFF, sid=_TOMB, call=Call.OTHER,
        when="removed by another call first (its handler)", status=DisconnectStatus.REPEAT,
        flags=_flags("last"), user_after=_OFF, sid_after=_TOMB,
        lua="lua/disconnect.lua: a tombstone, another attempt",
    ),
    Transition(
        event=_R, user=_OFF, sid=_NONE,
        when="a live socket with no record: recorded again (a repair)", status=ConnectStatus.NEW,
        flags=_flags("first"), user_after=_ON, sid_after=_REC, grant=_ARRIVAL,
        feed=("join", "online"), lua="lua/connect.lua: a new record, n = 1",
    ),
    Transition(
        event=_R, user=_OFF, sid=_TOMB, when="a repair whose socket disconnected meanwhile",
        status=ConnectStatus.STALE, user_after=_OFF, sid_after=_TOMB,
        lua="lua/connect.lua: a hard tombstone",
    ),
    # --- update (a live connection's lesson, room or meta) --------------------------------
    Transition(
        event=_U, user=_ON, sid=_REC, change=Change.LESSON, when="a new lesson: its rooms move",
        status=UpdateStatus.UPDATED, flags=_flags("lesson_changed"), user_after=_ON,
        sid_after=_REC, grant=_UPDATE, feed=("update",),
        lua="lua/update.lua: changed, another lesson",
    ),
    Transition(
        event=_U, user=_ON, sid=_REC, change=Change.OTHER, when="a new room or meta, same lesson",
        status=UpdateStatus.UPDATED, user_after=_ON, sid_after=_REC, grant=_UPDATE,
        feed=("update",), lua="lua/update.lua: changed, the same lesson",
    ),
    Transition(
        event=_U, user=_ON, sid=_REC, change=Change.SAME, when="the values it has",
        status=UpdateStatus.UNCHANGED, user_after=_ON, sid_after=_REC,
        lua="lua/update.lua: unchanged",
    ),
    Transition(
        event=_U, user=_ON, sid=_REC, call=Call.RETRY, change=Change.LESSON,
        when="applied by this update's own try, its reply lost: what that try did",
        status=UpdateStatus.UPDATED, flags=_flags("lesson_changed repeat"), user_after=_ON,
        sid_after=_REC, grant=_OWN_UPDATE, lua="lua/update.lua: the same sequence number",
    ),
    Transition(
        event=_U, user=_ON, sid=_REC, call=Call.OTHER, change=Change.LESSON,
        when="an older update than the last applied (a replay after a newer one)",
        status=UpdateStatus.STALE, user_after=_ON, sid_after=_REC,
        lua="lua/update.lua: an older sequence number",
    ),
    Transition(
        event=_U, user=_OFF, sid=_TOMB, change=Change.LESSON,
        when="after its disconnect: never brought back", status=UpdateStatus.UNKNOWN,
        user_after=_OFF, sid_after=_TOMB, lua="lua/update.lua: a tombstone",
    ),
    Transition(
        event=_U, user=_HELD, sid=_TOMB, grace=Grace.PENDING, change=Change.LESSON,
        when="after its disconnect, its leave held back", status=UpdateStatus.UNKNOWN,
        user_after=_HELD, sid_after=_TOMB, lua="lua/update.lua: a tombstone",
    ),
    Transition(
        event=_U, user=_OFF, sid=_SWEPT, change=Change.LESSON,
        when="after its sweep", status=UpdateStatus.UNKNOWN, user_after=_OFF, sid_after=_SWEPT,
        lua="lua/update.lua: a tombstone",
    ),
    Transition(
        event=_U, user=_OFF, sid=_NONE, change=Change.LESSON, when="never connected",
        status=UpdateStatus.UNKNOWN, user_after=_OFF, sid_after=_NONE,
        lua="lua/update.lua: no record",
    ),
)  # fmt: skip
"""Every transition of the state machine (see :class:`Transition`)."""
