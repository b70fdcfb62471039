"""presence_kit in a Flask-SocketIO app (threading mode: plain threads, no eventlet).

Run it (the port comes from the first argument, else ``PORT``, else 8000)::

    pip install "presence-kit[socketio]" flask-socketio
    python examples/flask_socketio_server.py 8000

Werkzeug's development server is fine for trying things out; in production run
Flask-SocketIO the way its documentation describes (e.g. gunicorn with threads,
or eventlet/gevent): presence_kit works the same with each.

Environment: ``REDIS_URL`` (without it: the embedded MemoryStore, one process only),
``MIXPANEL_TOKEN`` (without it: no analytics), ``MIXPANEL_EVENTS_URL`` (optional, e.g.
``https://api-eu.mixpanel.com/track``), ``HOST`` (default ``127.0.0.1``).

Clients connect with their session as the Socket.IO ``auth`` payload, e.g.
``{"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}``.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import mixpanel
import redis
import socketio
from flask import Flask, request
from flask_socketio import SocketIO

from presence_kit import PresenceError, PresenceKit
from presence_kit.memory import MemoryStore
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import RedisStore
from presence_kit.socketio import SocketIORooms

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
redis_client = redis.Redis.from_url(REDIS_URL) if REDIS_URL else None

app = Flask(__name__)
socketio_app = SocketIO(app, async_mode="threading")
kit = PresenceKit(
    store=RedisStore(redis_client) if redis_client is not None else MemoryStore(),
    sockets=SocketIORooms(socketio_app),
    analytics=make_analytics(),
)
sessions: dict[str, dict[str, Any]] = {}
"""Each connection's session, by sid (server-side state, never the client's word)."""


@socketio_app.on("connect")
def on_connect(auth: Any) -> None:
    session = authenticate(auth)
    sessions[request.sid] = session  # type: ignore[attr-defined]
    try:
        kit.handle_connect(request.sid, session)  # type: ignore[attr-defined]
    except PresenceError as exc:  # an invalid session: nothing was written or joined
        sessions.pop(request.sid, None)  # type: ignore[attr-defined]
        raise socketio.exceptions.ConnectionRefusedError(f"invalid session: {exc}") from exc


@socketio_app.on("disconnect")
def on_disconnect(reason: str) -> None:
    session = sessions.pop(request.sid, None)  # type: ignore[attr-defined]
    if session is not None:
        kit.handle_disconnect(request.sid, session, reason=reason)  # type: ignore[attr-defined]


def stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the server like Ctrl+C does, so the ``finally`` below runs."""
    raise SystemExit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    try:
        socketio_app.run(
            app,
            host=os.environ.get("HOST", "127.0.0.1"),
            port=port_from(sys.argv),
            allow_unsafe_werkzeug=True,  # Werkzeug's dev server: for trying things out
        )
    finally:
        kit.close()  # flush analytics
        if redis_client is not None:
            redis_client.close()
        print("presence_kit closed", flush=True)
