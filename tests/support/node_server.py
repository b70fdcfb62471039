"""A real presence_kit server node, run as a subprocess by the crash-recovery tests.

python-socketio ``AsyncServer`` on aiohttp with an ``AsyncRedisManager`` (so emits reach
clients on every node), ``AsyncPresenceKit`` over ``AsyncRedisStore``, and Mixpanel
pointed at the test's local endpoint. Configured by environment variables; prints
``READY <port>`` once it listens.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import mixpanel
import redis.asyncio
import socketio
from aiohttp import web

from presence_kit import AsyncPresenceKit, PresenceError, Settings
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import AsyncRedisStore
from presence_kit.socketio import AsyncSocketIORooms
from tests.support.redis_servers import aclose_client


async def main() -> None:
    redis_url = os.environ["REDIS_URL"]
    settings = Settings(
        node_id=os.environ.get("NODE_ID"),
        heartbeat_interval=float(os.environ.get("HEARTBEAT_INTERVAL", "0.2")),
        node_timeout=float(os.environ.get("NODE_TIMEOUT", "1.0")),
        shutdown_grace=float(os.environ.get("SHUTDOWN_GRACE", "1.0")),
        leave_poll_interval=0.1,
    )
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(redis_url)
    )
    analytics = None
    if os.environ.get("MIXPANEL_URL"):
        consumer = mixpanel.Consumer(events_url=os.environ["MIXPANEL_URL"])
        analytics = MixpanelAnalytics(mixpanel.Mixpanel("node-token", consumer=consumer))
    client = redis.asyncio.Redis.from_url(redis_url)
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client),
        sockets=AsyncSocketIORooms(sio),
        analytics=analytics,
        settings=settings,
    )

    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
        await sio.save_session(sid, auth)
        try:
            await kit.handle_connect(sid, auth)
        except PresenceError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from exc

    async def disconnect(sid: str, reason: str) -> None:
        await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", int(os.environ.get("PORT", "0")))
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await kit.aclose()  # graceful: hands the connections over
    await runner.cleanup()
    await aclose_client(client)


if __name__ == "__main__":
    asyncio.run(main())
