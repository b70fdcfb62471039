"""Quickstart: presence_kit on python-socketio's asyncio server, served by aiohttp."""

import os

import mixpanel
import redis.asyncio
import socketio
from aiohttp import web

from presence_kit import AsyncPresenceKit, PresenceError
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import AsyncRedisStore
from presence_kit.socketio import AsyncSocketIORooms

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
MIXPANEL_TOKEN = os.environ.get("MIXPANEL_TOKEN")  # your project token; unset: no analytics

sio = socketio.AsyncServer(async_mode="aiohttp")  # any other async_mode works the same
app = web.Application()
sio.attach(app)
redis_client = redis.asyncio.Redis.from_url(REDIS_URL)
kit = AsyncPresenceKit(
    store=AsyncRedisStore(redis_client),
    sockets=AsyncSocketIORooms(sio),
    analytics=MixpanelAnalytics(mixpanel.Mixpanel(MIXPANEL_TOKEN)) if MIXPANEL_TOKEN else None,
)


def authenticate(auth):
    """Yours: verify the client's credentials and build its session from your records:
    role, org_id, user_id, lesson_id (and room_id for a ParticipantWeb)."""
    return dict(auth) if isinstance(auth, dict) else {}  # DEMO ONLY: believes the client


@sio.event
async def connect(sid, environ, auth):
    session = authenticate(auth)
    await sio.save_session(sid, session)
    try:
        await kit.handle_connect(sid, session)
    except PresenceError as exc:  # an invalid session: nothing was written or joined
        raise socketio.exceptions.ConnectionRefusedError(f"invalid session: {exc}") from exc


@sio.event
async def disconnect(sid, reason):
    await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)


async def close_presence(app):
    await kit.aclose()  # hands this node's connections over, flushes analytics
    await redis_client.aclose()  # the kit never closes your client


app.on_cleanup.append(close_presence)

if __name__ == "__main__":  # Ctrl+C (or SIGTERM) stops it and runs close_presence
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
