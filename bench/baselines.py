"""The implementations we measure presence_kit against, and presence_kit itself, behind
one interface: ``connect(sid, session)`` and ``disconnect(sid, session)``.

(a) ``HandWritten*``: the spec's flow as a user would write it with plain redis-py, one
    command at a time —
    TeacherAPP connect: ``HSET alive state connect``; join the lesson room; emit
    ``teacher_connect`` (presence_kit emits it too, so every variant does the same
    socket work; ``announce_connect=False`` leaves it out, as the kit's setting of that
    name does); disconnect: ``HSET alive state disconnect``, then ``EXPIRE alive 3600``,
    then emit ``teacher_disconnect``, then leave the lesson room.
    ParticipantWeb connect: ``SET`` its ``room_id``; join the lesson room; disconnect:
    ``GET`` the ``room_id``, then the Mixpanel call (an enqueue), then leave the room.
    TeacherHub: room operations only (the spec does no Redis I/O for hubs).
(b) ``Floor*``: the same Redis writes in a single round trip per event (a non-transactional
    pipeline when there are several, the plain command when there is one), plus the same
    emits, room operations and analytics enqueue — nothing else. Only the TeacherAPP
    disconnect differs from (a): every other event of the spec is one command already.

Room names are presence_kit's defaults (``org:<id>``, ``lesson:<id>``) in every variant.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping
from typing import Any, Protocol

import redis
import redis.asyncio

from presence_kit import AsyncPresenceKit, PresenceKit

from ._common import (
    OFFLINE_TTL,
    PARTICIPANT_WEB,
    REASON,
    TEACHER_APP,
    alive_key,
    lesson_room,
    org_room,
)

Session = Mapping[str, Any]


class SyncSockets(Protocol):
    def enter_room(self, sid: str, room: str) -> None: ...
    def leave_room(self, sid: str, room: str) -> None: ...
    def emit(self, event: str, data: Any, *, to: str) -> None: ...


class AsyncSockets(Protocol):
    async def enter_room(self, sid: str, room: str) -> None: ...
    async def leave_room(self, sid: str, room: str) -> None: ...
    async def emit(self, event: str, data: Any, *, to: str) -> None: ...


class SyncVariant(Protocol):
    name: str

    def connect(self, sid: str, session: Session) -> None: ...
    def disconnect(self, sid: str, session: Session) -> None: ...


class AsyncVariant(Protocol):
    name: str

    async def connect(self, sid: str, session: Session) -> None: ...
    async def disconnect(self, sid: str, session: Session) -> None: ...


OURS = "presence_kit"
HAND_WRITTEN = "hand-written (a)"
FLOOR = "floor (b)"


def room_id_key(sid: str) -> str:
    """Where the baselines keep a participant's ``room_id``."""
    return f"participant:{sid}:room_id"


def analytics_event(session: Session, room_id: Any) -> dict[str, Any]:
    """What the baselines hand to their analytics queue (the same fields as ours)."""
    return {
        "event": "disconnect",
        "distinct_id": str(session["user_id"]),
        "properties": {
            "room_id": room_id,
            "lesson_id": session["lesson_id"],
            "org_id": session["org_id"],
            "reason": REASON,
        },
        "time": time.time(),
    }


# --- presence_kit -----------------------------------------------------------------------


class OursSync:
    name = OURS

    def __init__(self, kit: PresenceKit) -> None:
        self.kit = kit

    def connect(self, sid: str, session: Session) -> None:
        self.kit.handle_connect(sid, session)

    def disconnect(self, sid: str, session: Session) -> None:
        self.kit.handle_disconnect(sid, session, reason=REASON)


class OursAsync:
    name = OURS

    def __init__(self, kit: AsyncPresenceKit) -> None:
        self.kit = kit

    async def connect(self, sid: str, session: Session) -> None:
        await self.kit.handle_connect(sid, session)

    async def disconnect(self, sid: str, session: Session) -> None:
        await self.kit.handle_disconnect(sid, session, reason=REASON)


# --- (a) hand-written --------------------------------------------------------------------


class HandWrittenSync:
    name = HAND_WRITTEN

    def __init__(
        self,
        client: redis.Redis,
        sockets: SyncSockets,
        analytics: queue.SimpleQueue[Any],
        *,
        announce_connect: bool = True,
    ) -> None:
        self.r, self.sockets, self.analytics = client, sockets, analytics
        self.announce_connect = announce_connect

    def connect(self, sid: str, session: Session) -> None:
        role = session["role"]
        if role == TEACHER_APP:
            self.r.hset(alive_key(session["org_id"], session["user_id"]), "state", "connect")
            self.sockets.enter_room(sid, lesson_room(session["lesson_id"]))
            if self.announce_connect:
                self.sockets.emit(
                    "teacher_connect",
                    {"user_id": session["user_id"]},
                    to=org_room(session["org_id"]),
                )
        elif role == PARTICIPANT_WEB:
            self.r.set(room_id_key(sid), session["room_id"])
            self.sockets.enter_room(sid, lesson_room(session["lesson_id"]))
        else:
            self.sockets.enter_room(sid, org_room(session["org_id"]))
            self.sockets.enter_room(sid, lesson_room(session["lesson_id"]))

    def disconnect(self, sid: str, session: Session) -> None:
        role = session["role"]
        if role == TEACHER_APP:
            key = alive_key(session["org_id"], session["user_id"])
            self.r.hset(key, "state", "disconnect")
            self.r.expire(key, OFFLINE_TTL)
            self.sockets.emit(
                "teacher_disconnect",
                {"user_id": session["user_id"]},
                to=org_room(session["org_id"]),
            )
        elif role == PARTICIPANT_WEB:
            room_id = self.r.get(room_id_key(sid))
            self.analytics.put(analytics_event(session, room_id))
        self.sockets.leave_room(sid, lesson_room(session["lesson_id"]))


class HandWrittenAsync:
    name = HAND_WRITTEN

    def __init__(
        self,
        client: redis.asyncio.Redis,
        sockets: AsyncSockets,
        analytics: queue.SimpleQueue[Any],
        *,
        announce_connect: bool = True,
    ) -> None:
        self.r, self.sockets, self.analytics = client, sockets, analytics
        self.announce_connect = announce_connect

    async def connect(self, sid: str, session: Session) -> None:
        role = session["role"]
        if role == TEACHER_APP:
            await self.r.hset(alive_key(session["org_id"], session["user_id"]), "state", "connect")
            await self.sockets.enter_room(sid, lesson_room(session["lesson_id"]))
            if self.announce_connect:
                await self.sockets.emit(
                    "teacher_connect",
                    {"user_id": session["user_id"]},
                    to=org_room(session["org_id"]),
                )
        elif role == PARTICIPANT_WEB:
            await self.r.set(room_id_key(sid), session["room_id"])
            await self.sockets.enter_room(sid, lesson_room(session["lesson_id"]))
        else:
            await self.sockets.enter_room(sid, org_room(session["org_id"]))
            await self.sockets.enter_room(sid, lesson_room(session["lesson_id"]))

    async def disconnect(self, sid: str, session: Session) -> None:
        role = session["role"]
        if role == TEACHER_APP:
            key = alive_key(session["org_id"], session["user_id"])
            await self.r.hset(key, "state", "disconnect")
            await self.r.expire(key, OFFLINE_TTL)
            await self.sockets.emit(
                "teacher_disconnect",
                {"user_id": session["user_id"]},
                to=org_room(session["org_id"]),
            )
        elif role == PARTICIPANT_WEB:
            room_id = await self.r.get(room_id_key(sid))
            self.analytics.put(analytics_event(session, room_id))
        await self.sockets.leave_room(sid, lesson_room(session["lesson_id"]))


# --- (b) the floor -------------------------------------------------------------------------


class FloorSync(HandWrittenSync):
    """(a) with the TeacherAPP disconnect's two writes in one round trip."""

    name = FLOOR

    def disconnect(self, sid: str, session: Session) -> None:
        if session["role"] != TEACHER_APP:
            super().disconnect(sid, session)
            return
        key = alive_key(session["org_id"], session["user_id"])
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, "state", "disconnect")
        pipe.expire(key, OFFLINE_TTL)
        pipe.execute()
        self.sockets.emit(
            "teacher_disconnect", {"user_id": session["user_id"]}, to=org_room(session["org_id"])
        )
        self.sockets.leave_room(sid, lesson_room(session["lesson_id"]))


class FloorAsync(HandWrittenAsync):
    """(a) with the TeacherAPP disconnect's two writes in one round trip."""

    name = FLOOR

    async def disconnect(self, sid: str, session: Session) -> None:
        if session["role"] != TEACHER_APP:
            await super().disconnect(sid, session)
            return
        key = alive_key(session["org_id"], session["user_id"])
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, "state", "disconnect")
        pipe.expire(key, OFFLINE_TTL)
        await pipe.execute()
        await self.sockets.emit(
            "teacher_disconnect", {"user_id": session["user_id"]}, to=org_room(session["org_id"])
        )
        await self.sockets.leave_room(sid, lesson_room(session["lesson_id"]))
