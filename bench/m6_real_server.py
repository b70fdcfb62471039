"""Measurement 6: the sequential TeacherAPP cycle on a real python-socketio server.

A teacher connects and disconnects, one cycle at a time, with
``Settings(announce_connect=False)``: the kit's only emit is then the spec's
``teacher_disconnect``. The server is real — ``socketio.Server`` (threading, on
Werkzeug: the test suite's harness) for ``PresenceKit``, ``socketio.AsyncServer``
(aiohttp) for ``AsyncPresenceKit`` — on loopback, with a real hub client of the
teacher's organisation connected over websocket from a process of its own
(``bench._endpoint hub``). Every ``teacher_disconnect`` travels to the hub, and each run
waits until the hub has received all of its run's (``teacher_connect``: none).

The cycle is driven from the server side, so that no client's work is on the measured
path: each teacher connection is registered in the server's client manager as a
connecting client's would be (``manager.connect``, not timed); then its connect and
disconnect handlers run in the server process against the real server's rooms and
emit — presence_kit through ``SocketIORooms`` / ``AsyncSocketIORooms``, the baselines
with the server's own ``enter_room``, ``emit`` and ``leave_room``; then the connection
is unregistered (``manager.disconnect``, not timed).

Against it, interleaved (every variant once per round, the order rotated): (a) the
hand-written flow and (b) the floor of ``bench/baselines.py``, with the same setting
(neither emits ``teacher_connect``). Targets: ≤ 1.10x (a) and ≤ 1.25x (b).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from presence_kit import AsyncPresenceKit, PresenceKit, Settings
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.socketio import AsyncSocketIORooms, SocketIORooms
from tests.support.redis_servers import RedisServer
from tests.support.sio_harness import running_async_server, running_threaded_server

from ._common import (
    OFFLINE_TTL,
    TEACHER_APP,
    BenchError,
    Counter,
    QueueAnalytics,
    RedisProbe,
    ServerSample,
    Spread,
    alive_key,
    async_client,
    connections,
    org_room,
    paired_ratios,
    rotated,
    sync_client,
)
from ._endpoint import Hub, async_hub_process, hub_process
from .baselines import (
    FLOOR,
    HAND_WRITTEN,
    OURS,
    AsyncVariant,
    FloorAsync,
    FloorSync,
    HandWrittenAsync,
    HandWrittenSync,
    OursAsync,
    OursSync,
    Session,
    SyncVariant,
)
from .config import Config

ORG = 1
NAMESPACE = "/"
SETTINGS = Settings(announce_connect=False)
VARIANTS = (OURS, HAND_WRITTEN, FLOOR)
POOL = 8
WARM = 50
_eio_sids = itertools.count(1)


def _fake_eio_sid() -> str:
    """The engine.io sid a registered connection claims (unique: the manager's room
    maps are bidirectional)."""
    return f"bench-eio-{next(_eio_sids)}"


@dataclass
class Samples:
    """One variant's runs: seconds per cycle, and the Redis work it did."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    cycles: int = 0
    round_trips: int = 0
    commands: int = 0
    redis_usec: int = 0

    def add(
        self, wall: float, cpu: float, n: int, rt: int, s0: ServerSample, s1: ServerSample
    ) -> None:
        self.wall.append(wall / n)
        self.cpu.append(cpu / n)
        self.cycles += n
        self.round_trips += rt
        self.commands += s1.commands - s0.commands
        usec = {k: v - s0.usec.get(k, 0) for k, v in s1.usec.items()}
        # A script's µs include its commands' (counted under their own names too).
        self.redis_usec += usec.get("evalsha", 0) or sum(usec.values())

    def summary(self) -> dict[str, Any]:
        n = max(self.cycles, 1)
        return {
            "wall_us": Spread.of([w * 1e6 for w in self.wall]).as_dict(1),
            "cpu_us": Spread.of([c * 1e6 for c in self.cpu]).as_dict(1),
            "cycles": self.cycles,
            "round_trips_per_cycle": round(self.round_trips / n, 3),
            "redis_commands_per_cycle": round(self.commands / n, 2),
            "redis_us_per_cycle": round(self.redis_usec / n, 2),
        }


class Checker:
    """What every run must have done: each leave announced to the hub (and no
    ``teacher_connect``), every alive key offline, no connection left in a room."""

    def __init__(self, probe: RedisProbe, hub: Hub) -> None:
        self.probe, self.hub = probe, hub
        self.announced = 0
        self.received: dict[str, int] = {}

    def check(self, name: str, sessions: Sequence[Session], in_rooms: int, failures: int) -> None:
        n = len(sessions)
        self.announced += n
        counts = self.hub.wait_for("teacher_disconnect", self.announced)
        self.received = counts
        if counts.get("teacher_disconnect", 0) != self.announced:
            raise BenchError(f"cycle {name}: the hub received {counts}, not {self.announced}")
        if counts.get("teacher_connect", 0):
            raise BenchError(f"cycle {name}: teacher_connect emitted with announce_connect off")
        if in_rooms or failures:
            raise BenchError(f"cycle {name}: {in_rooms} sids left in rooms, {failures} failures")
        pipe = self.probe.admin.pipeline(transaction=False)
        for s in sessions[:: max(1, n // 20)]:
            key = alive_key(s["org_id"], s["user_id"])
            pipe.hget(key, "state")
            pipe.ttl(key)
        replies = pipe.execute()
        for state, ttl in zip(replies[::2], replies[1::2], strict=True):
            if state != "disconnect" or not 0 < int(ttl) <= OFFLINE_TTL:
                raise BenchError(f"cycle {name}: alive key left as state={state!r} ttl={ttl}")


def _failures(variant: SyncVariant | AsyncVariant) -> int:
    kit = getattr(variant, "kit", None)
    return 0 if kit is None else int(kit.stats.store_failures + kit.stats.sockets_failures)


class Users:
    """Sessions of users no run has used yet (every cycle is a real leave)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[Session]:
        conns = connections(TEACHER_APP, n, self.next, orgs=1)  # all in organisation ORG
        self.next += n
        return [c.session for c in conns]


def _summary(samples: dict[str, Samples], hub: dict[str, int]) -> dict[str, Any]:
    ours, hand, floor = samples[OURS], samples[HAND_WRITTEN], samples[FLOOR]
    ratio_a, ratio_b = paired_ratios(ours.wall, hand.wall), paired_ratios(ours.wall, floor.wall)
    return {
        "variants": {name: s.summary() for name, s in samples.items()},
        "ratio_vs_a": ratio_a.as_dict(3),
        "ratio_vs_b": ratio_b.as_dict(3),
        "cpu_ratio_vs_a": paired_ratios(ours.cpu, hand.cpu).as_dict(3),
        "cpu_ratio_vs_b": paired_ratios(ours.cpu, floor.cpu).as_dict(3),
        "target_within_1_10_of_a": ratio_a.median <= 1.10,
        "target_within_1_25_of_b": ratio_b.median <= 1.25,
        "hub_received": hub,
    }


# --- sync: socketio.Server (threading) ------------------------------------------------


def _sync_run(
    sio: Any, variant: SyncVariant, sessions: Sequence[Session]
) -> tuple[float, float, int]:
    """``len(sessions)`` cycles; wall and CPU seconds, and sids left in rooms."""
    manager = sio.manager
    sids = [manager.connect(_fake_eio_sid(), NAMESPACE) for _ in sessions]
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for sid, session in zip(sids, sessions, strict=True):
        variant.connect(sid, session)
        variant.disconnect(sid, session)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    in_rooms = sum(1 for sid in sids if len(manager.get_rooms(sid, NAMESPACE)) > 1)
    for sid in sids:
        manager.disconnect(sid, NAMESPACE)
    return wall, cpu, in_rooms


def _sync(server: RedisServer, probe: RedisProbe, cfg: Config) -> dict[str, Any]:
    probe.flush()
    counters = {name: Counter() for name in VARIANTS}
    clients = {
        name: sync_client(server, counters[name], max_connections=POOL) for name in VARIANTS
    }
    samples = {name: Samples() for name in VARIANTS}
    users = Users()
    kit: PresenceKit | None = None

    def setup(sio: Any) -> None:
        sio.on("connect", lambda sid, environ, auth=None: sio.enter_room(sid, org_room(ORG)))

    try:
        with running_threaded_server(setup) as handle, hub_process(handle.url, ORG) as hub:
            sio = handle.sio
            store = RedisStore(clients[OURS], max_connections=POOL)
            kit = PresenceKit(
                sockets=SocketIORooms(sio),
                store=store,
                analytics=QueueAnalytics(),
                settings=SETTINGS,
            )
            q: queue.SimpleQueue[Any] = queue.SimpleQueue()
            variants: dict[str, SyncVariant] = {
                OURS: OursSync(kit),
                HAND_WRITTEN: HandWrittenSync(
                    clients[HAND_WRITTEN], sio, q, announce_connect=False
                ),
                FLOOR: FloorSync(clients[FLOOR], sio, q, announce_connect=False),
            }
            checker = Checker(probe, hub)
            for name, variant in variants.items():
                sessions = users.take(WARM)
                *_, in_rooms = _sync_run(sio, variant, sessions)
                checker.check(name, sessions, in_rooms, _failures(variant))
            for r in range(cfg.cycle_rounds):
                for name in rotated(list(VARIANTS), r):
                    sessions = users.take(cfg.cycle_events)
                    probe.reset_stats()
                    s0, rt0 = probe.sample(), counters[name].value
                    wall, cpu, in_rooms = _sync_run(sio, variants[name], sessions)
                    s1, rt1 = probe.sample(), counters[name].value
                    checker.check(name, sessions, in_rooms, _failures(variants[name]))
                    samples[name].add(wall, cpu, len(sessions), rt1 - rt0, s0, s1)
                    while not q.empty():
                        q.get_nowait()
            kit.close()
            kit = None
    finally:
        if kit is not None:
            kit.close()
        for client in clients.values():
            client.close()
    return _summary(samples, checker.received)


# --- asyncio: socketio.AsyncServer (aiohttp) ----------------------------------------------


async def _async_run(
    sio: Any, variant: AsyncVariant, sessions: Sequence[Session]
) -> tuple[float, float, int]:
    manager = sio.manager
    sids = [await manager.connect(_fake_eio_sid(), NAMESPACE) for _ in sessions]
    gc.collect()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for sid, session in zip(sids, sessions, strict=True):
        await variant.connect(sid, session)
        await variant.disconnect(sid, session)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    in_rooms = sum(1 for sid in sids if len(manager.get_rooms(sid, NAMESPACE)) > 1)
    for sid in sids:
        await manager.disconnect(sid, NAMESPACE)
    return wall, cpu, in_rooms


async def _async(server: RedisServer, probe: RedisProbe, cfg: Config) -> dict[str, Any]:
    probe.flush()
    counters = {name: Counter() for name in VARIANTS}
    clients: dict[str, redis.asyncio.Redis] = {
        name: async_client(server, counters[name], max_connections=POOL) for name in VARIANTS
    }
    samples = {name: Samples() for name in VARIANTS}
    users = Users()
    kit: AsyncPresenceKit | None = None

    def setup(sio: Any) -> None:
        async def on_connect(sid: str, environ: Any, auth: Any = None) -> None:
            await sio.enter_room(sid, org_room(ORG))

        sio.on("connect", on_connect)

    try:
        async with running_async_server(setup) as handle:
            sio = handle.sio
            async with async_hub_process(handle.url, ORG) as hub:
                store = AsyncRedisStore(clients[OURS], max_connections=POOL)
                kit = AsyncPresenceKit(
                    sockets=AsyncSocketIORooms(sio),
                    store=store,
                    analytics=QueueAnalytics(),
                    settings=SETTINGS,
                )
                q: queue.SimpleQueue[Any] = queue.SimpleQueue()
                hand = HandWrittenAsync(clients[HAND_WRITTEN], sio, q, announce_connect=False)
                variants: dict[str, AsyncVariant] = {
                    OURS: OursAsync(kit),
                    HAND_WRITTEN: hand,
                    FLOOR: FloorAsync(clients[FLOOR], sio, q, announce_connect=False),
                }
                checker = Checker(probe, hub)

                async def check(name: str, sessions: Sequence[Session], in_rooms: int) -> None:
                    # In a thread: the server must keep sending to the hub meanwhile.
                    failures = _failures(variants[name])
                    await asyncio.to_thread(checker.check, name, sessions, in_rooms, failures)

                for name, variant in variants.items():
                    sessions = users.take(WARM)
                    *_, in_rooms = await _async_run(sio, variant, sessions)
                    await check(name, sessions, in_rooms)
                for r in range(cfg.cycle_rounds):
                    for name in rotated(list(VARIANTS), r):
                        sessions = users.take(cfg.cycle_events)
                        probe.reset_stats()
                        s0, rt0 = probe.sample(), counters[name].value
                        wall, cpu, in_rooms = await _async_run(sio, variants[name], sessions)
                        s1, rt1 = probe.sample(), counters[name].value
                        await check(name, sessions, in_rooms)
                        samples[name].add(wall, cpu, len(sessions), rt1 - rt0, s0, s1)
                        while not q.empty():
                            q.get_nowait()
                await kit.aclose()
                kit = None
    finally:
        if kit is not None:
            await kit.aclose()
        for client in clients.values():
            await client.aclose()
    return _summary(samples, checker.received)


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {
        "rounds": cfg.cycle_rounds,
        "cycles_per_run": cfg.cycle_events,
        "settings": "Settings(announce_connect=False)",
    }
    with RedisServer() as server:
        probe = RedisProbe(server)
        t0 = time.perf_counter()
        out["sync"] = _sync(server, probe, cfg)
        log(f"  m6 sync (socketio.Server, threading): {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        out["asyncio"] = asyncio.run(_async(server, probe, cfg))
        log(f"  m6 asyncio (socketio.AsyncServer, aiohttp): {time.perf_counter() - t0:.1f}s")
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
