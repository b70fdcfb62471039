"""End to end, blocking: a threaded python-socketio Server with real clients and
Flask-SocketIO (its test client), a real redis-server, the real mixpanel client."""

from __future__ import annotations

from typing import Any

import flask
import flask_socketio
import mixpanel

from presence_kit import PresenceKit
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import RedisStore
from presence_kit.socketio import SocketIORooms
from tests.support.mixpanel_endpoint import MixpanelEndpoint
from tests.support.redis_servers import RedisServer
from tests.support.sio_harness import eventually_sync, running_threaded_server

HUB = {"role": "TeacherHub", "org_id": 2, "user_id": 100, "lesson_id": 6}
TEACHER = {"role": "TeacherAPP", "org_id": 2, "user_id": 7, "lesson_id": 6}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 2,
    "user_id": "p-1",
    "lesson_id": 6,
    "room_id": 31,
}


def analytics_for(endpoint: MixpanelEndpoint) -> MixpanelAnalytics:
    client = mixpanel.Mixpanel("tok", consumer=mixpanel.Consumer(events_url=endpoint.url))
    return MixpanelAnalytics(client, flush_interval=0.05)


def test_threaded_server_three_flows(
    redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    store = RedisStore(redis_server.client())
    done: set[str] = set()
    holder: dict[str, PresenceKit] = {}

    def setup(sio: Any) -> None:
        kit = PresenceKit(
            store=store, sockets=SocketIORooms(sio), analytics=analytics_for(mixpanel_endpoint)
        )
        holder["kit"] = kit

        def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            sio.save_session(sid, auth)
            kit.handle_connect(sid, auth)

        def disconnect(sid: str, reason: str) -> None:
            kit.handle_disconnect(sid, sio.get_session(sid), reason=reason)
            done.add(sid)

        sio.on("connect", connect)
        sio.on("disconnect", disconnect)

    with running_threaded_server(setup) as srv:
        hub = srv.connect_client(HUB)
        teacher = srv.connect_client(TEACHER)
        assert hub.wait_for("teacher_connect") == ({"user_id": 7},)
        pupil = srv.connect_client(PARTICIPANT)
        teacher_sid, pupil_sid = teacher.sid, pupil.sid
        teacher.disconnect()
        assert hub.wait_for("teacher_disconnect") == ({"user_id": 7},)
        pupil.disconnect()
        eventually_sync(lambda: {teacher_sid, pupil_sid} <= done)
        [event] = mixpanel_endpoint.wait_for(1)
        assert event["properties"]["room_id"] == 31
        assert event["properties"]["distinct_id"] == "p-1"
        raw = redis_server.client(decode_responses=True)
        assert raw.hget("alive:org_2_user_7", "state") == "disconnect"
        assert 3590 <= raw.ttl("alive:org_2_user_7") <= 3600
        holder["kit"].close()
    store.close()


def test_flask_socketio(redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint) -> None:
    app = flask.Flask(__name__)
    # threading pinned: Flask-SocketIO would pick eventlet or gevent when installed;
    # tests/test_server_modes.py runs those, each monkey-patched in its own process.
    socketio_app = flask_socketio.SocketIO(app, async_mode="threading")
    kit = PresenceKit(
        store=RedisStore(redis_server.client()),
        sockets=SocketIORooms(socketio_app),
        analytics=analytics_for(mixpanel_endpoint),
    )
    sessions: dict[str, dict[str, Any]] = {}

    @socketio_app.on("connect")  # type: ignore[untyped-decorator]
    def on_connect(auth: dict[str, Any]) -> None:
        sid = flask.request.sid  # type: ignore[attr-defined]
        sessions[sid] = auth
        kit.handle_connect(sid, auth)

    @socketio_app.on("disconnect")  # type: ignore[untyped-decorator]
    def on_disconnect(reason: str) -> None:
        sid = flask.request.sid  # type: ignore[attr-defined]
        kit.handle_disconnect(sid, sessions.pop(sid), reason=reason)

    hub = socketio_app.test_client(app, auth=HUB)
    teacher = socketio_app.test_client(app, auth=TEACHER)
    pupil = socketio_app.test_client(app, auth=PARTICIPANT)
    assert [(m["name"], m["args"]) for m in hub.get_received()] == [
        ("presence_state", [{"user_ids": []}]),
        ("teacher_connect", [{"user_id": 7}]),
    ]
    teacher.disconnect()
    pupil.disconnect()
    assert [(m["name"], m["args"]) for m in hub.get_received()] == [
        ("teacher_disconnect", [{"user_id": 7}])
    ]
    [event] = mixpanel_endpoint.wait_for(1)
    assert event["properties"]["reason"] == "client disconnect"
    raw = redis_server.client(decode_responses=True)
    assert raw.hget("alive:org_2_user_7", "state") == "disconnect"
    hub.disconnect()
    kit.close()
    assert sessions == {}
