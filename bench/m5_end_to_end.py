"""Measurement 5: end to end, on a real python-socketio server over loopback.

One ``socketio.AsyncServer`` (aiohttp, the test suite's harness) holds ``e2e_clients``
real ``socketio.AsyncClient`` s over websocket: one TeacherHub, 2 x ``e2e_disconnects``
teachers and participants to fill up. Each teacher connected with a ``variant`` in its
auth: the server's connect and disconnect handlers hand the session either to
presence_kit (``AsyncPresenceKit`` + ``AsyncRedisStore`` + ``AsyncSocketIORooms``) or to
the hand-written handler (a) with plain redis-py and plain ``sio`` calls — the handler
is the only difference. Teachers then disconnect one at a time, the two variants
interleaved (ABBA), and each disconnect is timed from the teacher client's
``disconnect()`` call to the hub's ``teacher_disconnect`` handler.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import socketio

from presence_kit import AsyncPresenceKit
from presence_kit.redis import AsyncRedisStore
from presence_kit.socketio import AsyncSocketIORooms
from tests.support.redis_servers import RedisServer
from tests.support.sio_harness import running_async_server

from ._common import (
    PARTICIPANT_WEB,
    TEACHER_APP,
    TEACHER_HUB,
    BenchError,
    Counter,
    Spread,
    async_client,
    percentile,
)
from .baselines import HAND_WRITTEN, OURS, HandWrittenAsync
from .config import Config

HUB_ORG = 1
BATCH = 50


class ServerSockets:
    """What the hand-written handler calls: the server's own methods, nothing between."""

    def __init__(self, sio: Any) -> None:
        self.sio = sio

    async def enter_room(self, sid: str, room: str) -> None:
        await self.sio.enter_room(sid, room)

    async def leave_room(self, sid: str, room: str) -> None:
        await self.sio.leave_room(sid, room)

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        await self.sio.emit(event, data, to=to)


@dataclass
class Hub:
    """The hub client's view: when each ``teacher_disconnect`` arrived."""

    arrived: dict[Any, float] = field(default_factory=dict)
    waiters: dict[Any, asyncio.Event] = field(default_factory=dict)

    async def on_teacher_disconnect(self, data: dict[str, Any]) -> None:
        user_id = data.get("user_id")
        self.arrived[user_id] = time.perf_counter()
        waiter = self.waiters.get(user_id)
        if waiter is not None:
            waiter.set()


@dataclass
class Handlers:
    """The server's handlers, dispatching on the variant each client connected with."""

    sio: Any
    kit: AsyncPresenceKit
    hand: HandWrittenAsync
    errors: list[BaseException] = field(default_factory=list)

    def register(self) -> None:
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)

    async def connect(self, sid: str, environ: Any, auth: dict[str, Any]) -> None:
        session = {k: v for k, v in auth.items() if k != "variant"}
        await self.sio.save_session(sid, {**session, "variant": auth["variant"]})
        if auth["variant"] == OURS:
            await self.kit.handle_connect(sid, session)
        else:
            await self.hand.connect(sid, session)

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        try:
            session = await self.sio.get_session(sid)
            if session["variant"] == OURS:
                await self.kit.handle_disconnect(sid, session, reason=str(reason))
            else:
                await self.hand.disconnect(sid, session)
        except Exception as exc:  # recorded: a benchmark whose handler fails is void
            self.errors.append(exc)


async def _connect(url: str, auth: dict[str, Any], hub: Hub | None = None) -> Any:
    client = socketio.AsyncClient(reconnection=False)
    if hub is not None:
        client.on("teacher_disconnect", hub.on_teacher_disconnect)
    await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
    return client


async def _connect_all(url: str, auths: Sequence[dict[str, Any]]) -> list[Any]:
    clients: list[Any] = []
    for start in range(0, len(auths), BATCH):
        batch = auths[start : start + BATCH]
        clients.extend(await asyncio.gather(*(_connect(url, a) for a in batch)))
    return clients


async def _disconnect_all(clients: Sequence[Any]) -> None:
    for start in range(0, len(clients), BATCH):
        await asyncio.gather(
            *(c.disconnect() for c in clients[start : start + BATCH]), return_exceptions=True
        )


def _auths(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    k = cfg.e2e_disconnects
    teachers = [
        {
            "role": TEACHER_APP,
            "org_id": HUB_ORG,
            "user_id": i + 1,
            "lesson_id": i % 20 + 1,
            "variant": OURS if i % 2 == 0 else HAND_WRITTEN,
        }
        for i in range(2 * k)
    ]
    fillers = [
        {
            "role": PARTICIPANT_WEB,
            "org_id": 2 + i % 50,
            "user_id": 100_000 + i,
            "lesson_id": 100 + i % 200,
            "room_id": i % 300 + 1,
            "variant": OURS if i % 2 == 0 else HAND_WRITTEN,
        }
        for i in range(max(0, cfg.e2e_clients - 1 - 2 * k))
    ]
    return teachers, fillers


def _abba(pairs: int) -> list[int]:
    """Teacher indexes in ABBA order (even indexes are ours, odd ones hand-written)."""
    order: list[int] = []
    for j in range(pairs):
        ours, theirs = 2 * j, 2 * j + 1
        order.extend((ours, theirs) if j % 2 == 0 else (theirs, ours))
    return order


async def _run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    teachers_auth, fillers_auth = _auths(cfg)
    counters = {OURS: Counter(), HAND_WRITTEN: Counter()}
    latencies: dict[str, list[float]] = {OURS: [], HAND_WRITTEN: []}
    round_trips = {OURS: 0, HAND_WRITTEN: 0}
    hub = Hub()
    with RedisServer() as server:
        kit_redis = async_client(server, counters[OURS], max_connections=256)
        hand_redis = async_client(server, counters[HAND_WRITTEN], max_connections=256)
        handlers: Handlers | None = None

        def setup(sio: Any) -> None:
            nonlocal handlers
            kit = AsyncPresenceKit(
                sockets=AsyncSocketIORooms(sio), store=AsyncRedisStore(kit_redis)
            )
            hand = HandWrittenAsync(hand_redis, ServerSockets(sio), queue.SimpleQueue())
            handlers = Handlers(sio, kit, hand)
            handlers.register()

        try:
            async with running_async_server(setup) as server_handle:
                assert handlers is not None
                url = server_handle.url
                t0 = time.perf_counter()
                hub_auth = {
                    "role": TEACHER_HUB,
                    "org_id": HUB_ORG,
                    "user_id": 999_999,
                    "lesson_id": 1,
                    "variant": OURS,
                }
                hub_client = await _connect(url, hub_auth, hub)
                teachers = await _connect_all(url, teachers_auth)
                fillers = await _connect_all(url, fillers_auth)
                connect_s = time.perf_counter() - t0
                total = 1 + len(teachers) + len(fillers)
                log(f"  m5 {total} clients connected in {connect_s:.1f}s")
                await asyncio.sleep(0.2)
                if hub.arrived:
                    raise BenchError(
                        f"end to end: {len(hub.arrived)} teacher(s) announced gone before any "
                        f"disconnect (kit: {handlers.kit.stats})"
                    )
                for index in _abba(cfg.e2e_disconnects):
                    auth, client = teachers_auth[index], teachers[index]
                    variant, user_id = auth["variant"], auth["user_id"]
                    waiter = hub.waiters[user_id] = asyncio.Event()
                    rt0 = counters[variant].value
                    started = time.perf_counter()
                    await client.disconnect()
                    try:
                        await asyncio.wait_for(waiter.wait(), 5.0)
                    except asyncio.TimeoutError:
                        raise BenchError(
                            f"end to end: no teacher_disconnect for {auth} within 5 s "
                            f"(handler errors: {handlers.errors[:3]!r}, kit: {handlers.kit.stats})"
                        ) from None
                    latencies[variant].append(hub.arrived[user_id] - started)
                    await asyncio.sleep(0.002)  # the handler's room leave, then the next
                    round_trips[variant] += counters[variant].value - rt0
                errors = list(handlers.errors)
                clients = len(teachers) + len(fillers) + 1
                await _disconnect_all([*fillers, hub_client])
                await handlers.kit.aclose()
        finally:
            await kit_redis.aclose()
            await hand_redis.aclose()
    if errors:
        raise BenchError(f"end to end: {len(errors)} handler error(s), first: {errors[0]!r}")
    variants: dict[str, dict[str, Any]] = {}
    for name, values in latencies.items():
        ms = [v * 1e3 for v in values]
        variants[name] = {
            "p50_ms": round(percentile(ms, 50), 3),
            "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3),
            "spread_ms": Spread.of(ms).as_dict(3),
            "disconnects": len(ms),
            "round_trips_per_disconnect": round(round_trips[name] / max(1, len(ms)), 3),
        }
    ours, theirs = variants[OURS], variants[HAND_WRITTEN]
    return {
        "clients": clients,
        "connect_all_s": round(connect_s, 2),
        "variants": variants,
        "p50_ratio_vs_a": round(ours["p50_ms"] / theirs["p50_ms"], 3),
        "p99_ratio_vs_a": round(ours["p99_ms"] / theirs["p99_ms"], 3),
    }


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    result = asyncio.run(_run(cfg, log))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
