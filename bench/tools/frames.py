"""The path of one disconnect: the calls from ``AsyncPresenceKit.handle_disconnect`` to
the EVALSHA's send, counted with ``sys.setprofile``.

``python -m bench.tools.frames`` prints the presence_kit functions called on the way
(in order), how many modules they span, and the stack depth at the send. For a
before/after figure, run it with ``PYTHONPATH`` pointing at a checkout of each revision.
"""

from __future__ import annotations

import asyncio
import sys
from types import FrameType
from typing import Any

import redis.asyncio

from presence_kit import AsyncPresenceKit, Settings
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets
from tests.support.redis_servers import RedisServer

SESSION = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
SENDS = {"send_command", "send_packed_command"}


async def _trace(port: int) -> None:
    client = redis.asyncio.Redis(port=port)
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client),
        sockets=AsyncRecordingSockets(),
        settings=Settings(node_id="frames"),
    )
    for i in range(3):  # scripts loaded, connection kept: the steady state
        await kit.handle_connect(f"warm-{i}", SESSION)
        await kit.handle_disconnect(f"warm-{i}", SESSION)
    await kit.handle_connect("traced", SESSION)
    ours: list[str] = []
    depth: list[int] = []
    state = {"on": False, "done": False}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if state["done"] or event != "call":
            return
        code = frame.f_code
        if code.co_name == "handle_disconnect" and "presence_kit" in code.co_filename:
            state["on"] = True
        if not state["on"]:
            return
        if "/presence_kit/" in code.co_filename:
            ours.append(f"{code.co_filename.split('/presence_kit/')[1]}:{code.co_name}")
        if code.co_name in SENDS:
            at: FrameType | None = frame
            levels = 0
            while at is not None and at.f_code.co_name != "handle_disconnect":
                levels, at = levels + 1, at.f_back
            depth.append(levels + 1)
            state["done"] = True

    sys.setprofile(profile)
    try:
        await kit.handle_disconnect("traced", SESSION)
    finally:
        sys.setprofile(None)
    for name in ours:
        print(f"  {name}")
    modules = {name.split(":")[0] for name in ours}
    at_send = depth[0] if depth else "?"
    print(f"{len(ours)} presence_kit calls in {len(modules)} modules; {at_send} frames deep")
    await kit.aclose()
    await client.aclose()


def main() -> None:
    with RedisServer() as server:
        asyncio.run(_trace(server.port))


if __name__ == "__main__":
    main()
