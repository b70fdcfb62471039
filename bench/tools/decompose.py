"""Our own code versus the Redis work it asks for, measured without a profiler.

``python -m bench.tools.decompose [--quick]`` prints the table; the main run has it as
``decompose`` ("Our code versus its Redis work").

For every role's connect and disconnect, sync and asyncio, one event at a time: the
``EVALSHA`` requests presence_kit sends for N events are recorded argument for
argument on the client's connection, then replayed with plain
``client.execute_command`` (redis-py's defaults) on an emptied Redis: the same Redis
work and the same round trips, without any of our code. ``ours - replay`` is what
presence_kit's Python (the facade, validation, effects, the store adapter, redis-py's
``Script`` wrapper and its packing of our arguments) costs per event on the handler's
path. Rounds repeat (ours, then the replay of what ours just sent); each round runs a
kit of its own, with the recording sockets and an in-process analytics enqueue.

CPU is the process's (``time.process_time``); the part that other threads spent (the
sync kit's background thread) is reported apart. The server's µs per event
(``INFO commandstats``, reset before each timed block) show that the replay did the
same Redis work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
import redis.asyncio

from bench._common import (
    REASON,
    ROLES,
    BenchError,
    Conn,
    QueueAnalytics,
    RedisProbe,
    Spread,
    connections,
    paired_differences,
)
from bench.config import Config
from presence_kit import AsyncPresenceKit, PresenceKit
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_servers import RedisServer

_recording: contextvars.ContextVar[list[tuple[Any, ...]] | None] = contextvars.ContextVar(
    "bench_recording", default=None
)


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(args: tuple[Any, ...]) -> None:
    calls = _recording.get()
    if calls is not None and args and text_of(args[0]).upper() == "EVALSHA":
        calls.append(args)


class RecordingConnection(redis.Connection):
    """Notes the ``EVALSHA`` calls made in a recording context (not the kit's thread).

    It reads them back from the packed bytes, since the store packs its own calls with
    hiredis and sends them packed (overriding ``send_command`` would turn that off and
    measure a store that packs the slower way)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if _recording.get() is not None:
            reader = hiredis.Reader()
            for chunk in [command] if isinstance(command, bytes | str) else command:
                reader.feed(chunk)
            while (args := reader.gets()) is not False:
                _record(tuple(args))
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class RecordingAsyncConnection(redis.asyncio.Connection):
    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        _record(args)
        await super().send_command(*args, **kwargs)


SECTIONS = tuple((role, event) for role in ROLES for event in ("connect", "disconnect"))
WARM = 50


@dataclass(frozen=True)
class Sample:
    """Seconds per event of one timed block."""

    wall: float
    cpu: float
    other_threads_cpu: float
    redis_us: float
    """The server's µs per event (``INFO commandstats``: the scripts')."""
    redis_commands: float
    """Commands Redis ran per event (the scripts and theirs)."""


class Clock:
    """Starts a timed block: wall, process CPU and this thread's CPU, after the server's
    command statistics are reset."""

    def __init__(self, probe: RedisProbe) -> None:
        probe.reset_stats()
        self.probe = probe
        self.wall, self.cpu, self.thread = (
            time.perf_counter(),
            time.process_time(),
            time.thread_time(),
        )

    def stop(self, n: int) -> Sample:
        wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        server = self.probe.sample()
        return Sample(
            wall=(wall - self.wall) / n,
            cpu=(cpu - self.cpu) / n,
            other_threads_cpu=((cpu - self.cpu) - (thread - self.thread)) / n,
            redis_us=server.usec.get("evalsha", 0) / n,
            redis_commands=server.commands / n,
        )


def _us(values: Sequence[float]) -> dict[str, float | int]:
    return Spread.of([v * 1e6 for v in values]).as_dict(1)


def _summary(ours: list[Sample], replay: list[Sample]) -> dict[str, Any]:
    def diff(field: str) -> dict[str, float | int]:
        d = paired_differences(
            [getattr(s, field) for s in ours], [getattr(s, field) for s in replay]
        )
        return Spread(d.median * 1e6, d.low * 1e6, d.high * 1e6, d.n).as_dict(1)

    return {
        "rounds": len(ours),
        "ours_wall_us": _us([s.wall for s in ours]),
        "replay_wall_us": _us([s.wall for s in replay]),
        "ours_cpu_us": _us([s.cpu for s in ours]),
        "replay_cpu_us": _us([s.cpu for s in replay]),
        "our_code_wall_us": diff("wall"),
        "our_code_cpu_us": diff("cpu"),
        "other_threads_cpu_us": _us([s.other_threads_cpu for s in ours]),
        "redis_us_ours": Spread.of([s.redis_us for s in ours]).as_dict(1),
        "redis_us_replay": Spread.of([s.redis_us for s in replay]).as_dict(1),
        "redis_commands_ours": Spread.of([s.redis_commands for s in ours]).as_dict(2),
        "redis_commands_replay": Spread.of([s.redis_commands for s in replay]).as_dict(2),
    }


def _check(calls: Sequence[tuple[Any, ...]], n: int, stats: Any) -> None:
    if len(calls) != n:
        raise BenchError(f"decompose: recorded {len(calls)} EVALSHA calls for {n} events")
    if stats.store_failures or stats.sockets_failures:
        raise BenchError(f"decompose: the kit counted failures ({stats})")


# --- sync ----------------------------------------------------------------------------


def _sync_round(
    client: redis.Redis, probe: RedisProbe, role: str, event: str, n: int, r: int
) -> tuple[Sample, Sample]:
    # A kit of its own per round: emptying Redis under a running kit would make it
    # recover from a presumed sweep in the middle of the timed run.
    probe.flush()
    sockets = RecordingSockets()
    kit = PresenceKit(sockets=sockets, store=RedisStore(client), analytics=QueueAnalytics())
    before: list[tuple[Any, ...]] = []
    calls: list[tuple[Any, ...]] = []
    try:
        warm = connections(role, WARM, 10**7 + r * WARM)
        conns = connections(role, n, r * n)
        sockets.connected.update(c.sid for c in [*warm, *conns])
        for c in warm:
            kit.handle_connect(c.sid, c.session)
            kit.handle_disconnect(c.sid, c.session, reason=REASON)
        if event == "disconnect":
            token = _recording.set(before)
            for c in conns:
                kit.handle_connect(c.sid, c.session)
            _recording.reset(token)
        token = _recording.set(calls)
        clock = Clock(probe)
        if event == "connect":
            for c in conns:
                kit.handle_connect(c.sid, c.session)
        else:
            for c in conns:
                kit.handle_disconnect(c.sid, c.session, reason=REASON)
        ours = clock.stop(n)
        _recording.reset(token)
        _check(calls, n, kit.stats)
    finally:
        kit.close()
    probe.flush()
    for args in before:
        client.execute_command(*args)  # type: ignore[no-untyped-call]
    clock = Clock(probe)
    for args in calls:
        client.execute_command(*args)  # type: ignore[no-untyped-call]
    return ours, clock.stop(n)


def _sync(server: RedisServer, probe: RedisProbe, role: str, event: str, cfg: Config) -> Any:
    pool = redis.ConnectionPool(
        host=server.host, port=server.port, connection_class=RecordingConnection
    )
    client = redis.Redis(connection_pool=pool)
    ours: list[Sample] = []
    replay: list[Sample] = []
    try:
        for r in range(cfg.decompose_rounds):
            a, b = _sync_round(client, probe, role, event, cfg.decompose_events, r)
            ours.append(a)
            replay.append(b)
    finally:
        client.close()
    return _summary(ours, replay)


# --- asyncio -----------------------------------------------------------------------------


async def _each(fn: Callable[[Conn], Awaitable[Any]], conns: Sequence[Conn]) -> None:
    for c in conns:
        await fn(c)


async def _async_round(
    client: redis.asyncio.Redis, probe: RedisProbe, role: str, event: str, n: int, r: int
) -> tuple[Sample, Sample]:
    probe.flush()
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(
        sockets=sockets, store=AsyncRedisStore(client), analytics=QueueAnalytics()
    )
    before: list[tuple[Any, ...]] = []
    calls: list[tuple[Any, ...]] = []

    async def connect(c: Conn) -> None:
        await kit.handle_connect(c.sid, c.session)

    async def disconnect(c: Conn) -> None:
        await kit.handle_disconnect(c.sid, c.session, reason=REASON)

    try:
        # The kit's background task starts with its first call, which the warm-up makes
        # outside any recording (tasks inherit the context they were created in).
        warm = connections(role, WARM, 10**7 + r * WARM)
        conns = connections(role, n, r * n)
        sockets.connected.update(c.sid for c in [*warm, *conns])
        for c in warm:
            await connect(c)
            await disconnect(c)
        if event == "disconnect":
            token = _recording.set(before)
            await _each(connect, conns)
            _recording.reset(token)
        token = _recording.set(calls)
        clock = Clock(probe)
        await _each(connect if event == "connect" else disconnect, conns)
        ours = clock.stop(n)
        _recording.reset(token)
        _check(calls, n, kit.stats)
    finally:
        await kit.aclose()
    probe.flush()
    for args in before:
        await client.execute_command(*args)  # type: ignore[no-untyped-call]
    clock = Clock(probe)
    for args in calls:
        await client.execute_command(*args)  # type: ignore[no-untyped-call]
    return ours, clock.stop(n)


async def _async(
    server: RedisServer, probe: RedisProbe, role: str, event: str, cfg: Config
) -> Any:
    pool = redis.asyncio.ConnectionPool(
        host=server.host, port=server.port, connection_class=RecordingAsyncConnection
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    ours: list[Sample] = []
    replay: list[Sample] = []
    try:
        for r in range(cfg.decompose_rounds):
            a, b = await _async_round(client, probe, role, event, cfg.decompose_events, r)
            ours.append(a)
            replay.append(b)
    finally:
        await client.aclose()
    return _summary(ours, replay)


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    rows = []
    with RedisServer() as server:
        probe = RedisProbe(server)
        for role, event in SECTIONS:
            t0 = time.perf_counter()
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
            log(f"  decompose {role} {event}: {time.perf_counter() - t0:.1f}s")
    return {
        "rows": rows,
        "events_per_round": cfg.decompose_events,
        "rounds": cfg.decompose_rounds,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    from bench.report import decomposition_table

    parser = argparse.ArgumentParser(prog="python -m bench.tools.decompose")
    parser.add_argument("--quick", action="store_true", help="fewer events and rounds")
    args = parser.parse_args()
    cfg = Config.quick_run() if args.quick else Config.full()
    result = run(cfg, lambda message: print(message, flush=True))
    print("\n".join(decomposition_table(result)))


if __name__ == "__main__":
    main()
