"""A Flask-SocketIO server in one ``async_mode``, run as a subprocess by test_server_modes.

Usage::

    python tests/support/flask_mode_server.py MODE REDIS_URL PORT

``MODE`` is ``threading``, ``eventlet`` or ``gevent``. Under eventlet and gevent the
standard library is monkey-patched first, before anything else is imported, as their
documentation requires. The kit is built as the README's Flask quickstart builds it
(``PresenceKit`` + ``RedisStore(redis.Redis.from_url(url))`` + ``SocketIORooms``), with
``Settings`` that make the test quick: the node id ``flask-<MODE>``, a heartbeat every
0.2 s, and a ``shutdown_grace`` far longer than ``node_timeout`` so that the handover's
heartbeat score stands out.

The session is the client's ``auth`` (test only; a real server authenticates). Prints
``READY <port>`` once the port accepts connections. ``POST /close`` calls
``kit.close()`` and prints ``CLOSED <seconds>`` (or ``CLOSE FAILED`` and the traceback
on stderr), and answers the same as JSON. Stop it with SIGTERM.
"""

import sys

MODE = sys.argv[1]
if MODE == "eventlet":
    import eventlet

    eventlet.monkey_patch()
elif MODE == "gevent":
    from gevent import monkey

    monkey.patch_all()
elif MODE != "threading":
    raise SystemExit(f"unknown mode {MODE!r}")

# ruff: noqa: E402  (the imports follow the monkey-patching on purpose)
import logging
import socket
import time
import traceback
from typing import Any

import redis
from flask import Flask, request
from flask_socketio import ConnectionRefusedError, SocketIO

from presence_kit import PresenceError, PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.socketio import SocketIORooms

REDIS_URL, PORT = sys.argv[2], int(sys.argv[3])
HOST = "127.0.0.1"

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

app = Flask(__name__)
socketio_app = SocketIO(app, async_mode=MODE)
kit = PresenceKit(
    store=RedisStore(redis.Redis.from_url(REDIS_URL)),
    sockets=SocketIORooms(socketio_app),
    settings=Settings(node_id=f"flask-{MODE}", heartbeat_interval=0.2, shutdown_grace=60.0),
)
sessions: dict[str, Any] = {}


@socketio_app.on("connect")
def on_connect(auth: Any) -> None:
    sid: str = request.sid  # type: ignore[attr-defined]
    sessions[sid] = auth
    try:
        kit.handle_connect(sid, auth if isinstance(auth, dict) else {})
    except PresenceError as exc:
        sessions.pop(sid, None)
        raise ConnectionRefusedError(f"invalid session: {exc}") from exc


@socketio_app.on("disconnect")
def on_disconnect(reason: str) -> None:
    sid: str = request.sid  # type: ignore[attr-defined]
    session = sessions.pop(sid, None)
    if session is not None:
        kit.handle_disconnect(sid, session, reason=reason)


@app.post("/close")
def close() -> tuple[dict[str, Any], int]:
    started = time.monotonic()
    try:
        kit.close()
    except Exception:
        traceback.print_exc()
        print("CLOSE FAILED", flush=True)
        return {"closed": False}, 500
    seconds = time.monotonic() - started
    print(f"CLOSED {seconds:.3f}", flush=True)
    return {"closed": True, "seconds": seconds}, 200


def announce_ready() -> None:
    """Print the ready line once the server accepts connections (runs in the server's
    own concurrency model, so it also works once monkey-patched)."""
    while True:
        try:
            with socket.create_connection((HOST, PORT), timeout=1.0):
                break
        except OSError:
            socketio_app.sleep(0.05)
    print(f"READY {PORT} {MODE}", flush=True)


if __name__ == "__main__":
    socketio_app.start_background_task(announce_ready)
    socketio_app.run(app, host=HOST, port=PORT, log_output=False, allow_unsafe_werkzeug=True)
