"""presence_kit in a FastAPI app: python-socketio's ASGI app mounted at ``/socket.io``.

Run it (the port comes from the first argument, else ``PORT``, else 8000)::

    pip install "presence-kit[socketio]" fastapi uvicorn
    python examples/fastapi_server.py 8000
    # or: uvicorn examples.fastapi_server:app --port 8000

Environment: ``REDIS_URL`` (without it: the embedded MemoryStore, one process only),
``MIXPANEL_TOKEN`` (without it: no analytics), ``MIXPANEL_EVENTS_URL`` (optional, e.g.
``https://api-eu.mixpanel.com/track``), ``HOST`` (default ``127.0.0.1``).

Clients connect with their session as the Socket.IO ``auth`` payload, e.g.
``{"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mixpanel
import redis.asyncio
import socketio
import uvicorn
from fastapi import FastAPI

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

sio = socketio.AsyncServer(async_mode="asgi")
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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """FastAPI runs the lifespan; mounted apps get none, so presence closes here."""
    yield
    await kit.aclose()
    if redis_client is not None:
        await redis_client.aclose()
    print("presence_kit closed", flush=True)


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, Any]:
    """An ordinary FastAPI route next to Socket.IO; shows the kit's counters."""
    stats = kit.stats
    return {"connects": stats.connects, "disconnects": stats.disconnects}


# The mounted app keeps seeing the full path (/socket.io/...), which is what its
# default socketio_path="socket.io" expects.
app.mount("/socket.io", socketio.ASGIApp(sio))

if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=port_from(sys.argv))
