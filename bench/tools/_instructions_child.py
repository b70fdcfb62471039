"""The child of :mod:`bench.tools.instructions`, run under callgrind.

``python _instructions_child.py ROOT CYCLES MODE PORT ROLE LARGE``: ``CYCLES`` sequential
connect + disconnect cycles of ``ROLE`` with the package under ``ROOT``: MODE ``sync``
or ``async`` (presence_kit) or ``replay`` / ``areplay`` (the same EVALSHAs with plain
redis-py, recorded beforehand for ``LARGE`` cycles in every run so that the recording
cancels out of the difference).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, ClassVar

root, mode, role = sys.argv[1], sys.argv[3], sys.argv[5]
n, port, large = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[6])
sys.path.insert(0, root)

import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from presence_kit import AsyncPresenceKit, PresenceKit, Settings  # noqa: E402
from presence_kit.redis import AsyncRedisStore, RedisStore  # noqa: E402
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets  # noqa: E402

SETTINGS = Settings(announce_connect=False, heartbeat_interval=600, node_timeout=3600)
REASON = "transport close"


def session(i: int) -> dict[str, Any]:
    s: dict[str, Any] = {"role": role, "org_id": 1, "user_id": i, "lesson_id": 5}
    if role == "ParticipantWeb":
        s["room_id"] = "room-1"
    return s


SESSIONS = [(f"s{i}", session(i)) for i in range(large)]


class Recording(redis.Connection):
    """Notes each EVALSHA the kit sends."""

    sent: ClassVar[list[tuple[Any, ...]]] = []

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if str(args[0]).upper() == "EVALSHA":
            self.sent.append(args)
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]


def replay(asynchronous: bool) -> None:
    recorder = redis.Redis(
        connection_pool=redis.ConnectionPool(port=port, connection_class=Recording)
    )
    store = RedisStore(recorder, timeout=None)
    kit = PresenceKit(store=store, sockets=RecordingSockets(), settings=SETTINGS)
    for sid, s in SESSIONS:
        kit.handle_connect(sid, s)
        kit.handle_disconnect(sid, s, reason=REASON)
    kit.close()
    redis.Redis(port=port).flushall()
    calls = Recording.sent[: 2 * n]
    if not asynchronous:
        execute = redis.Redis(port=port).execute_command
        for args in calls:
            execute(*args)  # type: ignore[no-untyped-call]
        return

    async def send() -> None:
        execute = redis.asyncio.Redis(port=port).execute_command
        for args in calls:
            await execute(*args)  # type: ignore[no-untyped-call]

    asyncio.run(send())


def sync_kit() -> None:
    store = RedisStore(redis.Redis(port=port))
    kit = PresenceKit(store=store, sockets=RecordingSockets(), settings=SETTINGS)
    for sid, s in SESSIONS[:n]:
        kit.handle_connect(sid, s)
        kit.handle_disconnect(sid, s, reason=REASON)


async def async_kit() -> None:
    store = AsyncRedisStore(redis.asyncio.Redis(port=port))
    kit = AsyncPresenceKit(store=store, sockets=AsyncRecordingSockets(), settings=SETTINGS)
    for sid, s in SESSIONS[:n]:
        await kit.handle_connect(sid, s)
        await kit.handle_disconnect(sid, s, reason=REASON)


if mode in ("replay", "areplay"):
    replay(mode == "areplay")
elif mode == "sync":
    sync_kit()
else:
    asyncio.run(async_kit())
os._exit(0)  # no teardown: only the cycles differ between the two runs
