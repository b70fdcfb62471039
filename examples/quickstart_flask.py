"""Quickstart: presence_kit in a Flask-SocketIO app (the same for a threaded socketio.Server)."""

import os

import mixpanel
import redis
from flask import Flask, request
from flask_socketio import ConnectionRefusedError, SocketIO

from presence_kit import PresenceError, PresenceKit
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import RedisStore
from presence_kit.socketio import SocketIORooms

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
MIXPANEL_TOKEN = os.environ.get("MIXPANEL_TOKEN")  # your project token; unset: no analytics

app = Flask(__name__)
socketio_app = SocketIO(app, async_mode="threading")  # "eventlet" and "gevent" work too
redis_client = redis.Redis.from_url(REDIS_URL)
kit = PresenceKit(
    store=RedisStore(redis_client),
    sockets=SocketIORooms(socketio_app),
    analytics=MixpanelAnalytics(mixpanel.Mixpanel(MIXPANEL_TOKEN)) if MIXPANEL_TOKEN else None,
)
sessions = {}  # each connection's session, by sid


def authenticate(auth):
    """Yours: verify the client's credentials and build its session from your records:
    role, org_id, user_id, lesson_id (and room_id for a ParticipantWeb)."""
    return dict(auth) if isinstance(auth, dict) else {}  # DEMO ONLY: believes the client


@socketio_app.on("connect")
def on_connect(auth):
    sessions[request.sid] = session = authenticate(auth)
    try:
        kit.handle_connect(request.sid, session)
    except PresenceError as exc:  # an invalid session: nothing was written or joined
        sessions.pop(request.sid, None)
        raise ConnectionRefusedError(f"invalid session: {exc}") from exc


@socketio_app.on("disconnect")
def on_disconnect(reason):
    session = sessions.pop(request.sid, None)  # None: the connect was refused
    if session is not None:
        kit.handle_disconnect(request.sid, session, reason=reason)


if __name__ == "__main__":
    try:  # Werkzeug's development server, for trying it out; Ctrl+C stops it
        port = int(os.environ.get("PORT", "8000"))
        socketio_app.run(app, host="127.0.0.1", port=port, allow_unsafe_werkzeug=True)
    finally:
        kit.close()  # hands this node's connections over, flushes analytics
        redis_client.close()  # the kit never closes your client
