"""What the facades ask a store, and what it answers: plain frozen data.

The core computes every key name and value (pure); a store only executes the
transition atomically and reports the outcome. Stores therefore hold no knowledge of
templates or policies, and an adapter for another database implements two methods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

from ._errors import StoreError
from ._session import Session

__all__ = [
    "ConnectOutcome",
    "ConnectRequest",
    "ConnectStatus",
    "ConnectionRecord",
    "DisconnectOutcome",
    "DisconnectRequest",
    "DisconnectStatus",
    "StoreLayout",
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


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionRecord:
    """One live connection as the store keeps it: enough to run its leave later."""

    sid: str
    namespace: str
    node_id: str
    incarnation: str
    session: Session

    def to_json(self) -> str:
        """Serialise (compact JSON; ids keep their types)."""
        return json.dumps(
            {
                "sid": self.sid,
                "ns": self.namespace,
                "node": self.node_id,
                "inc": self.incarnation,
                "s": self.session.to_record(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ConnectionRecord:
        """Parse what :meth:`to_json` wrote; a corrupt record raises :class:`StoreError`."""
        try:
            data = json.loads(text)
            s = data["s"]
            return cls(
                sid=data["sid"],
                namespace=data["ns"],
                node_id=data["node"],
                incarnation=data["inc"],
                session=Session(
                    role=s["role"],
                    org_id=s["org_id"],
                    user_id=s["user_id"],
                    lesson_id=s["lesson_id"],
                    room_id=s.get("room_id"),
                ),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"corrupt connection record: {str(text)[:80]!r}") from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectRequest:
    """Record connection ``sid`` of one (user, role); mark the user online if it tracks alive."""

    sid: str
    alive_key: str
    """The spec's alive hash; its name is also the cluster hash tag of the other keys."""
    connections_key: str
    """Hash ``sid -> record`` of this user's connections in this role."""
    tombstone_key: str
    """Marker left by this sid's disconnect (a late connect is then refused)."""
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


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectRequest:
    """Remove connection ``sid``; mark the user offline if it was their last one."""

    sid: str
    alive_key: str
    connections_key: str
    tombstone_key: str
    tracks_alive: bool
    reason: str
    layout: StoreLayout


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
