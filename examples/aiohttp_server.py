"""presence_kit on python-socketio's asyncio server, served by aiohttp.

Run it (the port comes from the first argument, else ``PORT``, else 8000)::

    pip install "presence-kit[socketio]" aiohttp
    python examples/aiohttp_server.py 8000

Environment:

``REDIS_URL``
    e.g. ``redis://localhost:6379/0``. Without it presence lives in the embedded
    :class:`~presence_kit.memory.MemoryStore` (one process only).
``MIXPANEL_TOKEN``
    your project token. Without it no analytics are sent.
``MIXPANEL_EVENTS_URL``
    optional, e.g. ``https://api-eu.mixpanel.com/track`` for EU data residency.
``HOST``
    the address to bind (default ``127.0.0.1``).

Clients connect with their session as the Socket.IO ``auth`` payload, e.g.
``{"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import mixpanel
import redis.asyncio
import socketio
from aiohttp import web

from presence_kit import AsyncPresenceKit, PresenceError
from presence_kit.memory import MemoryStore
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import AsyncRedisStore
from presence_kit.socketio import AsyncSocketIORooms

SESSION_FIELDS = ("role", "org_id", "user_id", "lesson_id", "room_id")


def port_from(argv: list[str]) -> int:
    """The port: first argument, else ``PORT``, else 8000."""
    return int(argv[1] if len(argv) > 1 else os.environ.get("PORT", "8000"))


def make_analytics() -> MixpanelAnalytics | None:
    """Mixpanel analytics when ``MIXPANEL_TOKEN`` is set, else none."""
    token = os.environ.get("MIXPANEL_TOKEN")
    if not token:
        return None
    events_url = os.environ.get("MIXPANEL_EVENTS_URL")
    consumer = mixpanel.Consumer(events_url=events_url) if events_url else None
    return MixpanelAnalytics(mixpanel.Mixpanel(token, consumer=consumer))


def authenticate(auth: Any) -> dict[str, Any]:
    """DEMO ONLY: the session is whatever the client sent as ``auth``.

    A real server verifies a token here and builds the session from its own records
    (role, org_id, user_id, lesson_id, and room_id for participants).
    """
    if not isinstance(auth, dict):
        return {}
    return {key: auth[key] for key in SESSION_FIELDS if key in auth}


REDIS_URL = os.environ.get("REDIS_URL")
redis_client = redis.asyncio.Redis.from_url(REDIS_URL) if REDIS_URL else None

sio = socketio.AsyncServer(async_mode="aiohttp")
app = web.Application()
sio.attach(app)
kit = AsyncPresenceKit(
    store=AsyncRedisStore(redis_client) if redis_client is not None else MemoryStore(),
    sockets=AsyncSocketIORooms(sio),
    analytics=make_analytics(),
)


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
    session = authenticate(auth)
    await sio.save_session(sid, session)
    try:
        await kit.handle_connect(sid, session)
    except PresenceError as exc:  # an invalid session: nothing was written or joined
        raise socketio.exceptions.ConnectionRefusedError(f"invalid session: {exc}") from exc


@sio.event
async def disconnect(sid: str, reason: str) -> None:
    await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)


async def close_presence(app: web.Application) -> None:
    """At shutdown: flush analytics, then close our Redis client."""
    await kit.aclose()
    if redis_client is not None:
        await redis_client.aclose()
    print("presence_kit closed", flush=True)


app.on_cleanup.append(close_presence)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    web.run_app(app, host=os.environ.get("HOST", "127.0.0.1"), port=port_from(sys.argv))
