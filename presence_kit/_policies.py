"""Policies: per role, pure functions from facts to effects.

A policy never does I/O. The facade gives it the validated session and what the store
did (the *outcome*), and runs the effects it returns, in order. The registry maps a
role to its policy; integrators add roles with :meth:`PolicyRegistry.register`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._construct import maker
from ._effects import Effect, Emit, JoinRoom, LeaveRoom, Track
from ._errors import InvalidSessionError
from ._model import (
    ConnectOutcome,
    DisconnectOutcome,
    UpdateOutcome,
)
from ._roles import ClientRole
from ._session import Id, Session, validate_role
from ._settings import Settings
from ._state import Event, grants

__all__ = [
    "ConnectFacts",
    "DisconnectFacts",
    "DisconnectPolicy",
    "ParticipantWebPolicy",
    "PolicyRegistry",
    "TeacherAppPolicy",
    "TeacherHubPolicy",
    "UpdateFacts",
    "UpdatePolicy",
    "WantsSnapshot",
    "default_policies",
    "insert_id",
    "lesson_room",
    "move_lesson_room",
    "org_room",
]


def org_room(settings: Settings, org_id: Id) -> str:
    """Name of the organisation's room (where hubs listen)."""
    return settings.org_room.format(org_id=org_id)


def lesson_room(settings: Settings, lesson_id: Id) -> str:
    """Name of the lesson's room."""
    return settings.lesson_room.format(lesson_id=lesson_id)


def teacher_payload(settings: Settings, user_id: Id, version: int) -> dict[str, object]:
    """``{"user_id": ...}``, plus ``"version"`` when :attr:`Settings.include_version`."""
    if settings.include_version:
        return {"user_id": user_id, "version": version}
    return {"user_id": user_id}


def insert_id(sid: str, event: str, incarnation: str = "") -> str:
    """Deterministic analytics ``$insert_id`` (32 hex) for ``event`` of connection ``sid``
    as registered by node ``incarnation``: a retried delivery repeats it, while a sid
    registered again by a fenced node gets a new one."""
    key = f"{sid}\x00{event}\x00{incarnation}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


# The built-in policies build their effects from validated parts: positional, without
# re-validating (a custom policy's effects still validate themselves).
_join, _leave, _emit = maker(JoinRoom), maker(LeaveRoom), maker(Emit)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectFacts:
    """What a policy knows when a connection opens."""

    sid: str
    session: Session
    outcome: ConnectOutcome | None
    """What the store did; ``None`` when the store failed (presence unknown)."""
    settings: Settings

    @property
    def came_online(self) -> bool:
        """This connection took the (user, role) from offline to online."""
        return grants(Event.CONNECT, self.outcome).online

    @property
    def snapshot_users(self) -> list[Id]:
        """Distinct user ids of the snapshot the store returned (first seen first)."""
        if self.outcome is None:
            return []
        return list(dict.fromkeys(user_id for user_id, _lesson in self.outcome.snapshot))

    @property
    def snapshot_connections(self) -> list[dict[str, object]]:
        """Each connection of the snapshot: ``user_id``, ``lesson_id`` and ``meta``
        (``None`` when it has none, or the index keeps none: ``Settings.snapshot_meta``)."""
        if self.outcome is None:
            return []
        metas = self.outcome.snapshot_meta or (None,) * len(self.outcome.snapshot)
        return [
            {"user_id": user_id, "lesson_id": lesson_id, "meta": meta}
            for (user_id, lesson_id), meta in zip(self.outcome.snapshot, metas, strict=False)
        ]


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectFacts:
    """What a policy knows when a connection ends."""

    sid: str
    session: Session
    """The session of the ended connection (the stored record's, when there is one)."""
    outcome: DisconnectOutcome | None
    """What the store did; ``None`` when the store failed (presence unknown)."""
    reason: str
    settings: Settings

    @property
    def removed(self) -> bool:
        """This call removed the connection's record (so it may announce, once)."""
        return grants(Event.DISCONNECT, self.outcome).removed

    @property
    def went_offline(self) -> bool:
        """The removed connection was the (user, role)'s last: a real leave."""
        return grants(Event.DISCONNECT, self.outcome).offline


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateFacts:
    """What a policy knows when a live connection's lesson, room or meta changes."""

    sid: str
    session: Session
    """The connection's session after the update."""
    previous: Session | None
    """Its session before (this node's own view of the connection, else the store's
    record; ``None`` when neither is known: nothing to move from)."""
    outcome: UpdateOutcome | None
    """What the store did; ``None`` when the store failed (the update is queued)."""
    settings: Settings

    @property
    def updated(self) -> bool:
        """The store applied this update (now, or in its own earlier try): announce it, once."""
        return grants(Event.UPDATE, self.outcome).updated

    @property
    def lesson_changed(self) -> bool:
        """The update this call applied moved the connection to another lesson."""
        return self.updated and self.outcome is not None and self.outcome.lesson_changed


@runtime_checkable
class UpdatePolicy(Protocol):
    """A policy with ``on_update``: effects of a live connection's lesson, room or meta
    changing. Optional: a policy without it (one written for 0.1) gets
    :func:`~presence_kit.move_lesson_room`. Looked for once, when the policy is registered."""

    def on_update(self, facts: UpdateFacts) -> Sequence[Effect]:
        """Effects of an update (pure)."""
        ...


def move_lesson_room(facts: UpdateFacts) -> list[Effect]:
    """Leave the old lesson's room and join the new one, when the lesson changed (by
    this node's view of the connection: rooms move at once, even with the store down)."""
    if facts.previous is None:
        return []
    settings = facts.settings
    old = lesson_room(settings, facts.previous.lesson_id)
    new = lesson_room(settings, facts.session.lesson_id)
    if old == new:
        return []
    return [_leave(facts.sid, old), _join(facts.sid, new)]


@runtime_checkable
class DisconnectPolicy(Protocol):
    """What one client role does when its connections open and end.

    ``tracks_alive`` says whether the role's connections drive the spec's alive hash;
    ``connect_requires`` names the optional session fields the role needs at connect
    (``{"room_id"}`` for participants). Both methods are pure.

    A policy may also have a ``snapshot_of`` attribute naming a role: its connects then
    receive, in ``ConnectFacts.outcome.snapshot``, the org's connections of that role
    (read in the same round trip where the store allows); and an ``on_update(facts)``
    method (see :class:`~presence_kit.UpdatePolicy`; without it an update moves the lesson room).
    """

    tracks_alive: bool
    connect_requires: frozenset[str]

    def on_connect(self, facts: ConnectFacts) -> Sequence[Effect]:
        """Effects of a connection opening."""
        ...

    def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
        """Effects of a connection ending."""
        ...


@runtime_checkable
class WantsSnapshot(Protocol):
    """A policy whose connects receive, in ``ConnectFacts.outcome.snapshot``, the org's
    connections of the role ``snapshot_of`` names (read in the same round trip where the
    store allows); ``None`` or ``""``: no snapshot. Optional: a policy without the
    attribute gets none. Looked for once, when the policy is registered; its value is
    read at each connect."""

    snapshot_of: str | None


class TeacherAppPolicy:
    """``TeacherAPP``: drives the alive hash; hubs hear ``teacher_connect``/``_disconnect``."""

    tracks_alive = True
    connect_requires: frozenset[str] = frozenset()

    def on_connect(self, facts: ConnectFacts) -> Sequence[Effect]:
        """Join the lesson; announce ``teacher_connect`` when the teacher came online."""
        s, settings = facts.session, facts.settings
        effects: list[Effect] = [_join(facts.sid, lesson_room(settings, s.lesson_id))]
        if facts.came_online and settings.announce_connect and facts.outcome is not None:
            effects.append(
                _emit(
                    settings.teacher_connect_event,
                    teacher_payload(settings, s.user_id, facts.outcome.version),
                    org_room(settings, s.org_id),
                )
            )
        return effects

    def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
        """Announce ``teacher_disconnect`` on a real leave; always leave the lesson."""
        s, settings = facts.session, facts.settings
        effects: list[Effect] = []
        if facts.went_offline and facts.outcome is not None:
            effects.append(
                _emit(
                    settings.teacher_disconnect_event,
                    teacher_payload(settings, s.user_id, facts.outcome.version),
                    org_room(settings, s.org_id),
                )
            )
        effects.append(_leave(facts.sid, lesson_room(settings, s.lesson_id)))
        return effects

    def on_update(self, facts: UpdateFacts) -> Sequence[Effect]:
        """Move the lesson room; announce ``teacher_update`` when the lesson changed."""
        effects = move_lesson_room(facts)
        settings = facts.settings
        if facts.lesson_changed and settings.announce_update and facts.outcome is not None:
            s = facts.session
            payload: dict[str, object] = {"user_id": s.user_id, "lesson_id": s.lesson_id}
            if settings.include_version:
                payload["version"] = facts.outcome.version
            effects.append(
                _emit(settings.teacher_update_event, payload, org_room(settings, s.org_id))
            )
        return effects


class TeacherHubPolicy:
    """``TeacherHub``: listens in the org room; announces nothing."""

    tracks_alive = False
    connect_requires: frozenset[str] = frozenset()
    snapshot_of = ClientRole.TEACHER_APP.value

    def on_connect(self, facts: ConnectFacts) -> Sequence[Effect]:
        """Join the org and lesson rooms; send the hub who is online (``presence_state``)."""
        s, settings = facts.session, facts.settings
        effects: list[Effect] = [
            _join(facts.sid, org_room(settings, s.org_id)),
            _join(facts.sid, lesson_room(settings, s.lesson_id)),
        ]
        if settings.send_presence_snapshot and facts.outcome is not None:
            data: dict[str, object] = {"user_ids": facts.snapshot_users}
            if settings.snapshot_meta:
                data["connections"] = facts.snapshot_connections
            effects.append(Emit(event=settings.presence_state_event, data=data, to=facts.sid))
        return effects

    def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
        """Leave the lesson room; nothing written, nothing emitted."""
        return [_leave(facts.sid, lesson_room(facts.settings, facts.session.lesson_id))]

    def on_update(self, facts: UpdateFacts) -> Sequence[Effect]:
        """Move the lesson room (the org room stays)."""
        return move_lesson_room(facts)


class ParticipantWebPolicy:
    """``ParticipantWeb``: one analytics ``disconnect`` per ended connection."""

    tracks_alive = False
    connect_requires: frozenset[str] = frozenset({"room_id"})

    def on_connect(self, facts: ConnectFacts) -> Sequence[Effect]:
        """Join the lesson room (the store keeps ``room_id`` for the disconnect)."""
        return [_join(facts.sid, lesson_room(facts.settings, facts.session.lesson_id))]

    def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
        """Track ``disconnect`` with the stored ``room_id`` (only if this call removed it)."""
        s, settings = facts.session, facts.settings
        effects: list[Effect] = []
        if facts.removed and facts.outcome is not None:
            event = settings.analytics_disconnect_event
            effects.append(
                Track(
                    event=event,
                    distinct_id=str(s.user_id),
                    properties={
                        "room_id": s.room_id,
                        "lesson_id": s.lesson_id,
                        "org_id": s.org_id,
                        "reason": facts.reason,
                    },
                    time=facts.outcome.at,
                    insert_id=insert_id(facts.sid, event, _incarnation(facts.outcome)),
                )
            )
        effects.append(_leave(facts.sid, lesson_room(settings, s.lesson_id)))
        return effects

    def on_update(self, facts: UpdateFacts) -> Sequence[Effect]:
        """Move the lesson room (the store keeps the new ``room_id`` for the disconnect)."""
        return move_lesson_room(facts)


def _incarnation(outcome: DisconnectOutcome) -> str:
    return outcome.record.incarnation if outcome.record is not None else ""


class PolicyRegistry(Mapping[str, DisconnectPolicy]):
    """Role -> policy. Starts with whatever it is given; see :func:`default_policies`."""

    def __init__(self, policies: Mapping[str, DisconnectPolicy] | None = None) -> None:
        self._policies: dict[str, DisconnectPolicy] = {}
        self._snapshots: dict[str, WantsSnapshot] = {}
        self._updates: dict[str, UpdatePolicy] = {}
        for role, policy in (policies or {}).items():
            self.register(role, policy)

    def register(self, role: str | ClientRole, policy: DisconnectPolicy) -> None:
        """Use ``policy`` for sessions whose ``role`` is ``role`` (replacing any other)."""
        name = validate_role(role)
        if not isinstance(policy, DisconnectPolicy):
            raise TypeError(f"{policy!r} does not implement DisconnectPolicy")
        self._policies[name] = policy
        # Decided here, not per connect: an isinstance check on a runtime Protocol takes
        # microseconds before Python 3.12.
        if isinstance(policy, WantsSnapshot):
            self._snapshots[name] = policy
        else:
            self._snapshots.pop(name, None)
        if isinstance(policy, UpdatePolicy):
            self._updates[name] = policy
        else:
            self._updates.pop(name, None)

    def on_update(self, role: str, facts: UpdateFacts) -> Sequence[Effect]:
        """The effects of an update of a connection of ``role``: its policy's
        ``on_update``, or :func:`~presence_kit.move_lesson_room` for a policy without one."""
        policy = self._updates.get(role)
        return move_lesson_room(facts) if policy is None else policy.on_update(facts)

    def snapshot_of(self, role: str) -> str | None:
        """The role whose connections a connect of ``role`` receives (its policy's
        optional ``snapshot_of``), or ``None``."""
        policy = self._snapshots.get(role)
        return None if policy is None else policy.snapshot_of

    def __getitem__(self, role: str) -> DisconnectPolicy:
        return self._policies[role]

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def for_role(self, role: str) -> DisconnectPolicy:
        """The policy of ``role``; an unknown role is an :class:`InvalidSessionError`."""
        try:
            return self._policies[role]
        except KeyError:
            raise InvalidSessionError(
                "role", f"unknown role {role!r} (known: {', '.join(sorted(self._policies))})"
            ) from None


def default_policies() -> PolicyRegistry:
    """A registry with the spec's three roles."""
    return PolicyRegistry(
        {
            ClientRole.TEACHER_APP.value: TeacherAppPolicy(),
            ClientRole.TEACHER_HUB.value: TeacherHubPolicy(),
            ClientRole.PARTICIPANT_WEB.value: ParticipantWebPolicy(),
        }
    )
