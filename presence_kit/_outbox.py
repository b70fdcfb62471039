"""The outbox: the store operations a failed Redis call left to replay, in order.

A connect, update or disconnect whose store call failed becomes a :class:`PendingOperation`;
the facades queue it in the kit's :class:`Outbox`, and the background replays the
queue once Redis answers again (:meth:`~presence_kit.PresenceKit.replay_outbox`).
Pure and in-memory, like the rest of the core.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._model import ConnectRequest, DisconnectRequest, UpdateRequest
from ._policies import DisconnectPolicy
from ._session import Session

__all__ = ["Outbox", "PendingOperation"]


@dataclass(frozen=True, slots=True)
class PendingOperation:
    """A connect, update or disconnect the store could not make, kept for replay."""

    kind: str  # "connect", "update" or "disconnect"
    sid: str
    session: Session
    policy: DisconnectPolicy
    request: ConnectRequest | DisconnectRequest | UpdateRequest


class Outbox:
    """The bounded, in-order queue of store operations to replay once Redis answers.

    While it holds anything, new operations queue behind it (so order is kept and no
    handler waits on a Redis that just failed). When full, the oldest queued operation
    is forced out (counted and logged by the kit); what it would have fixed is left to
    reconciling and to the sweeper.

    The operation being replayed is held apart from the queue while its store call is
    in flight, so an operation pushed meanwhile (at every ``await`` of the asyncio
    facade) can never force it out or make the replay finish another one.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._ops: deque[PendingOperation] = deque()
        self._in_flight: PendingOperation | None = None

    def __len__(self) -> int:
        """Queued operations, the one in flight included."""
        return len(self._ops) + (self._in_flight is not None)

    def push(self, op: PendingOperation) -> PendingOperation | None:
        """Queue ``op``; return the oldest queued operation if it was forced out to make
        room (never the one in flight)."""
        forced = self._ops.popleft() if len(self._ops) >= self._size else None
        self._ops.append(op)
        return forced

    def sids(self) -> set[str]:
        """The sids with an operation waiting (or in flight)."""
        held = {op.sid for op in self._ops}
        if self._in_flight is not None:
            held.add(self._in_flight.sid)
        return held

    def take(self) -> PendingOperation | None:
        """Move the oldest queued operation in flight and return it (``None``: empty,
        or a replay is already in flight)."""
        if self._in_flight is not None or not self._ops:
            return None
        self._in_flight = self._ops.popleft()
        return self._in_flight

    def done(self) -> None:
        """The operation in flight was made: forget it."""
        self._in_flight = None

    def put_back(self) -> None:
        """The operation in flight failed: it is the oldest queued one again."""
        if self._in_flight is not None:
            self._ops.appendleft(self._in_flight)
            self._in_flight = None
