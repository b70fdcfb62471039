"""Our own code versus the Redis work it asks for, measured without a profiler.

The ``EVALSHA`` requests presence_kit sends for N events are recorded argument for
argument on the client's connection, then replayed with plain
``client.execute_command`` on an emptied Redis: the same Redis work and the same round
trips, without any of our code. ``ours - replay`` is what presence_kit's Python (the
facade, validation, effects, the store adapter and redis-py's ``Script`` wrapper)
costs per event on the handler's path. Rounds repeat (ours, then the replay of what
ours just sent).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio

from presence_kit import AsyncPresenceKit, PresenceKit
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_servers import RedisServer

from ._common import (
    PARTICIPANT_WEB,
    REASON,
    TEACHER_APP,
    Conn,
    RedisProbe,
    Spread,
    Timed,
    connections,
    paired_differences,
)
from .config import Config

_recording: contextvars.ContextVar[list[tuple[Any, ...]] | None] = contextvars.ContextVar(
    "bench_recording", default=None
)


def _record(args: tuple[Any, ...]) -> None:
    calls = _recording.get()
    if calls is not None and args and str(args[0]).upper() == "EVALSHA":
        calls.append(args)


class RecordingConnection(redis.Connection):
    """Notes the ``EVALSHA`` calls made in a recording context (not the kit's thread)."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        _record(args)
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]


class RecordingAsyncConnection(redis.asyncio.Connection):
    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        _record(args)
        await super().send_command(*args, **kwargs)


ROUNDS = 3
SECTIONS = ((TEACHER_APP, "connect"), (TEACHER_APP, "disconnect"), (PARTICIPANT_WEB, "disconnect"))


def _per_event(t: Timed, n: int) -> tuple[float, float]:
    return t.wall / n, t.cpu / n


def _time_sync(fn: Callable[[Conn], Any], conns: Sequence[Conn]) -> Timed:
    t = Timed()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c in conns:
        fn(c)
    t.wall, t.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return t


def _replay_sync(raw: Any, calls: Sequence[tuple[Any, ...]]) -> Timed:
    t = Timed()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for args in calls:
        raw.execute_command(*args)
    t.wall, t.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return t


async def _replay_async(raw: Any, calls: Sequence[tuple[Any, ...]]) -> Timed:
    t = Timed()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for args in calls:
        await raw.execute_command(*args)
    t.wall, t.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return t


def _summary(ours: list[tuple[float, float]], replay: list[tuple[float, float]]) -> dict[str, Any]:
    def us(values: list[float]) -> dict[str, float | int]:
        return Spread.of([v * 1e6 for v in values]).as_dict(1)

    ours_wall, ours_cpu = [w for w, _ in ours], [c for _, c in ours]
    rep_wall, rep_cpu = [w for w, _ in replay], [c for _, c in replay]
    diff = paired_differences(ours_wall, rep_wall)
    cpu_diff = paired_differences(ours_cpu, rep_cpu)
    return {
        "ours_wall_us": us(ours_wall),
        "replay_wall_us": us(rep_wall),
        "our_code_wall_us": Spread(
            diff.median * 1e6, diff.low * 1e6, diff.high * 1e6, diff.n
        ).as_dict(1),
        "our_code_cpu_us": Spread(
            cpu_diff.median * 1e6, cpu_diff.low * 1e6, cpu_diff.high * 1e6, cpu_diff.n
        ).as_dict(1),
    }


def _sync_round(
    client: redis.Redis, probe: RedisProbe, role: str, event: str, n: int, r: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    # A kit of its own per round: emptying Redis under a running kit would make it
    # recover from a presumed sweep in the middle of the timed run.
    probe.flush()
    sockets = RecordingSockets()
    kit = PresenceKit(sockets=sockets, store=RedisStore(client))
    before: list[tuple[Any, ...]] = []
    calls: list[tuple[Any, ...]] = []
    try:
        warm = connections(role, 50, 10**6 + r * 100)
        conns = connections(role, n, r * n)
        sockets.connected.update(c.sid for c in [*warm, *conns])
        for c in warm:
            kit.handle_connect(c.sid, c.session)
            kit.handle_disconnect(c.sid, c.session, reason=REASON)
        if event == "disconnect":
            token = _recording.set(before)
            _time_sync(lambda c: kit.handle_connect(c.sid, c.session), conns)
            _recording.reset(token)
            fn: Callable[[Conn], Any] = lambda c: kit.handle_disconnect(  # noqa: E731
                c.sid, c.session, reason=REASON
            )
        else:
            fn = lambda c: kit.handle_connect(c.sid, c.session)  # noqa: E731
        token = _recording.set(calls)
        ours = _per_event(_time_sync(fn, conns), n)
        _recording.reset(token)
    finally:
        kit.close()
    probe.flush()
    for args in before:
        client.execute_command(*args)  # type: ignore[no-untyped-call]
    replay = _per_event(_replay_sync(client, calls), n)
    if len(calls) != n:
        raise RuntimeError(f"recorded {len(calls)} EVALSHA calls for {n} events")
    return ours, replay


def _sync(server: RedisServer, probe: RedisProbe, role: str, event: str, cfg: Config) -> Any:
    pool = redis.ConnectionPool(
        host=server.host, port=server.port, connection_class=RecordingConnection
    )
    client = redis.Redis(connection_pool=pool)
    ours: list[tuple[float, float]] = []
    replay: list[tuple[float, float]] = []
    try:
        for r in range(ROUNDS):
            a, b = _sync_round(client, probe, role, event, cfg.m1_sequential_events, r)
            ours.append(a)
            replay.append(b)
    finally:
        client.close()
    return _summary(ours, replay)


async def _timed_loop(fn: Callable[[Conn], Any], conns: Sequence[Conn]) -> Timed:
    t = Timed()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c in conns:
        await fn(c)
    t.wall, t.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return t


async def _async_round(
    client: redis.asyncio.Redis, probe: RedisProbe, role: str, event: str, n: int, r: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    probe.flush()
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(sockets=sockets, store=AsyncRedisStore(client))
    before: list[tuple[Any, ...]] = []
    calls: list[tuple[Any, ...]] = []
    try:
        # The kit's background task starts with its first call, which the warm-up makes
        # outside any recording (tasks inherit the context they were created in).
        warm = connections(role, 50, 10**6 + r * 100)
        conns = connections(role, n, r * n)
        sockets.connected.update(c.sid for c in [*warm, *conns])
        for c in warm:
            await kit.handle_connect(c.sid, c.session)
            await kit.handle_disconnect(c.sid, c.session, reason=REASON)
        if event == "disconnect":
            token = _recording.set(before)
            await _timed_loop(lambda c: kit.handle_connect(c.sid, c.session), conns)
            _recording.reset(token)
            fn: Callable[[Conn], Any] = lambda c: kit.handle_disconnect(  # noqa: E731
                c.sid, c.session, reason=REASON
            )
        else:
            fn = lambda c: kit.handle_connect(c.sid, c.session)  # noqa: E731
        token = _recording.set(calls)
        ours = _per_event(await _timed_loop(fn, conns), n)
        _recording.reset(token)
    finally:
        await kit.aclose()
    probe.flush()
    for args in before:
        await client.execute_command(*args)  # type: ignore[no-untyped-call]
    replay = _per_event(await _replay_async(client, calls), n)
    if len(calls) != n:
        raise RuntimeError(f"recorded {len(calls)} EVALSHA calls for {n} events")
    return ours, replay


async def _async(
    server: RedisServer, probe: RedisProbe, role: str, event: str, cfg: Config
) -> Any:
    pool = redis.asyncio.ConnectionPool(
        host=server.host, port=server.port, connection_class=RecordingAsyncConnection
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    ours: list[tuple[float, float]] = []
    replay: list[tuple[float, float]] = []
    try:
        for r in range(ROUNDS):
            a, b = await _async_round(client, probe, role, event, cfg.m1_sequential_events, r)
            ours.append(a)
            replay.append(b)
    finally:
        await client.aclose()
    return _summary(ours, replay)


def run(cfg: Config) -> list[dict[str, Any]]:
    rows = []
    with RedisServer() as server:
        probe = RedisProbe(server)
        for role, event in SECTIONS:
            rows.append(
                {
                    "api": "sync",
                    "role": role,
                    "event": event,
                    **_sync(server, probe, role, event, cfg),
                }
            )
            result = asyncio.run(_async(server, probe, role, event, cfg))
            rows.append({"api": "asyncio", "role": role, "event": event, **result})
    return rows
