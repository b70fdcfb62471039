"""Effects: what a policy asks the facade to do, as frozen data.

Policies return tuples of these; the facades run them through the ports, in order.
Each effect validates itself when built, so a buggy custom policy fails loudly at the
point where it made the mistake, not in an adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Effect", "Emit", "JoinRoom", "LeaveRoom", "Track"]


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class JoinRoom:
    """Put the connection ``sid`` into ``room``."""

    sid: str
    room: str

    def __post_init__(self) -> None:
        _require_text("sid", self.sid)
        _require_text("room", self.room)


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaveRoom:
    """Take the connection ``sid`` out of ``room``."""

    sid: str
    room: str

    def __post_init__(self) -> None:
        _require_text("sid", self.sid)
        _require_text("room", self.room)


@dataclass(frozen=True, kw_only=True, slots=True)
class Emit:
    """Emit ``event`` with ``data`` to ``to`` (a room name or a single sid)."""

    event: str
    data: Any
    to: str

    def __post_init__(self) -> None:
        _require_text("event", self.event)
        _require_text("to", self.to)


@dataclass(frozen=True, kw_only=True, slots=True)
class Track:
    """Send an analytics event.

    ``time`` (seconds since the epoch) and ``insert_id`` (at most 36 characters of
    ``[A-Za-z0-9-]``) are fixed when the effect is made, so that a retried delivery
    carries the same values and the analytics backend can deduplicate it.
    """

    event: str
    distinct_id: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    time: float
    insert_id: str

    def __post_init__(self) -> None:
        _require_text("event", self.event)
        _require_text("distinct_id", self.distinct_id)
        _require_text("insert_id", self.insert_id)
        if len(self.insert_id) > 36:
            raise ValueError(f"insert_id must be at most 36 characters, got {self.insert_id!r}")
        if isinstance(self.time, bool) or not isinstance(self.time, (int, float)):
            raise TypeError(f"time must be a number of seconds, got {self.time!r}")


Effect = JoinRoom | LeaveRoom | Emit | Track
"""Any effect a policy may return."""
