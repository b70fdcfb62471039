"""A real presence_kit server node, run as a subprocess by the crash-recovery tests.

python-socketio ``AsyncServer`` on aiohttp with an ``AsyncRedisManager`` (so emits reach
clients on every node), ``AsyncPresenceKit`` over ``AsyncRedisStore``, and Mixpanel
pointed at the test's local endpoint. Configured by environment variables; prints
``READY <port>`` once it listens.

Environment: ``REDIS_URL`` (required; the store and the client manager both use it),
``NODE_ID``, ``HEARTBEAT_INTERVAL``, ``NODE_TIMEOUT``, ``SHUTDOWN_GRACE``,
``RECONCILE_INTERVAL``, ``INCLUDE_VERSION=1`` (teacher events carry ``"version"``),
``MIXPANEL_URL``, ``PORT``, ``EMIT_LOG`` (a file that gets one JSON line
``[event, data]`` per emit the kit makes, written before the emit is handed to
python-socketio: what the kit announced, even if the process is killed later).

``GET /_test/state`` answers JSON for the partition tests: this node's local sids with
their sessions, ``kit.stats``, ``kit.pending``, ``kit.incarnation`` and how long the
kit's connect/disconnect calls took (the slowest, and how many went over
:data:`HANDLER_DEADLINE`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import mixpanel
import redis.asyncio
import socketio
from aiohttp import web

from presence_kit import AsyncPresenceKit, PresenceError, Settings, TeacherAppPolicy
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import AsyncRedisStore
from presence_kit.socketio import AsyncSocketIORooms
from tests.support.redis_servers import aclose_client


class LoggedRooms(AsyncSocketIORooms):
    """The adapter, logging each emit the kit makes before handing it on."""

    def __init__(self, sio: Any, log: Any) -> None:
        super().__init__(sio)
        self._log = log

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        if self._log is not None:
            self._log.write(json.dumps([event, data]) + "\n")
            self._log.flush()
        await super().emit(event, data, to=to)


class LoggedTeacherPolicy(TeacherAppPolicy):
    """The default TeacherAPP policy, logging each transition it is granted (what the
    kit decided, before any emit) as ``["decided", event, user_id, version, sid]``."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def _logged(self, event: str, facts: Any) -> None:
        if self._log is not None:
            version = facts.outcome.version if facts.outcome is not None else None
            line = ["decided", event, facts.session.user_id, version, facts.sid]
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()

    def _traced(self, kind: str, facts: Any) -> None:
        """Every call, granted or not: ``["policy", kind, user_id, sid, outcome, time]``
        (the outcome's fields, ``None`` when the store call failed), for diagnosis."""
        if self._log is not None:
            o = facts.outcome
            outcome = None if o is None else [str(o.status.value), o.version, o.attempt]
            line = ["policy", kind, facts.session.user_id, facts.sid, outcome, time.time()]
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()

    def on_connect(self, facts: Any) -> Any:
        self._traced("connect", facts)
        if facts.came_online:
            self._logged("teacher_connect", facts)
        return super().on_connect(facts)

    def on_disconnect(self, facts: Any) -> Any:
        self._traced("disconnect", facts)
        if facts.went_offline:
            self._logged("teacher_disconnect", facts)
        return super().on_disconnect(facts)


def open_emit_log() -> Any:
    """The ``EMIT_LOG`` file, appended to (``None`` without one)."""
    path = os.environ.get("EMIT_LOG")
    return open(path, "a", encoding="utf-8") if path else None


HANDLER_DEADLINE = 2.0
"""Seconds a connect or disconnect handler's kit call may take (issue 18)."""

T = TypeVar("T")


class HandlerTimes:
    """The slowest kit call per handler, and how many went over the deadline."""

    def __init__(self) -> None:
        self.slowest = {"connect": 0.0, "disconnect": 0.0}
        self.calls = 0
        self.over_deadline = 0

    async def timed(self, handler: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await call
        finally:
            took = time.monotonic() - started
            self.calls += 1
            self.slowest[handler] = max(self.slowest[handler], took)
            if took > HANDLER_DEADLINE:
                self.over_deadline += 1


async def main() -> None:
    redis_url = os.environ["REDIS_URL"]
    settings = Settings(
        node_id=os.environ.get("NODE_ID"),
        heartbeat_interval=float(os.environ.get("HEARTBEAT_INTERVAL", "0.2")),
        node_timeout=float(os.environ.get("NODE_TIMEOUT", "1.0")),
        shutdown_grace=float(os.environ.get("SHUTDOWN_GRACE", "1.0")),
        leave_poll_interval=0.1,
        reconcile_interval=float(os.environ.get("RECONCILE_INTERVAL", "30")),
        include_version=os.environ.get("INCLUDE_VERSION") == "1",
    )
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(redis_url)
    )
    analytics = None
    if os.environ.get("MIXPANEL_URL"):
        consumer = mixpanel.Consumer(events_url=os.environ["MIXPANEL_URL"])
        analytics = MixpanelAnalytics(mixpanel.Mixpanel("node-token", consumer=consumer))
    client = redis.asyncio.Redis.from_url(redis_url)
    log = open_emit_log()
    rooms = LoggedRooms(sio, log)
    kit = AsyncPresenceKit(
        store=AsyncRedisStore(client),
        sockets=rooms,
        analytics=analytics,
        settings=settings,
        policies={"TeacherAPP": LoggedTeacherPolicy(log)},
    )
    times = HandlerTimes()

    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
        await sio.save_session(sid, auth)
        try:
            await times.timed("connect", kit.handle_connect(sid, auth))
        except PresenceError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from exc

    async def disconnect(sid: str, reason: str) -> None:
        session = await sio.get_session(sid)
        await times.timed("disconnect", kit.handle_disconnect(sid, session, reason=reason))

    async def move(sid: str, changes: dict[str, Any]) -> None:
        # The server's own decision (here: what the test asks): a new lesson or room.
        session = {**await sio.get_session(sid), **changes}
        await times.timed("update", kit.handle_update(sid, session))
        await sio.save_session(sid, session)

    async def state(request: web.Request) -> web.Response:
        sockets: dict[str, Any] = {}
        for sid in sorted(rooms.local_sids()):
            try:
                sockets[sid] = await sio.get_session(sid)
            except KeyError:  # gone between the listing and the lookup
                continue
        return web.json_response(
            {
                "node_id": kit.node_id,
                "incarnation": kit.incarnation,
                "pending": kit.pending,
                "stats": dataclasses.asdict(kit.stats),
                "sockets": sockets,
                "handlers": {
                    "calls": times.calls,
                    "slowest": times.slowest,
                    "over_deadline": times.over_deadline,
                    "deadline": HANDLER_DEADLINE,
                },
            }
        )

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    sio.on("move", move)
    app = web.Application()
    app.router.add_get("/_test/state", state)
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
