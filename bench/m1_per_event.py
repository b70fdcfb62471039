"""Measurement 1: the cost of one connect and one disconnect, per role.

For each API (``redis.Redis`` + ``PresenceKit``; ``redis.asyncio`` + ``AsyncPresenceKit``),
each role and each concurrency (sequential; 100 at once — threads or asyncio tasks),
presence_kit and its baselines run in interleaved rounds: round r runs every variant
once, in an order rotated by r, with a warmed-up connection pool. A run times N connects
of distinct users, then their N disconnects. Sockets are presence_kit's in-process recording fakes
(``presence_kit.testing``) in every variant, and analytics an in-process enqueue, so
what differs is the Redis work and our own code.

The server's work per event is read from ``INFO commandstats`` (calls and µs per
command, a script's inner commands included), reset with ``CONFIG RESETSTAT`` before
each measured block (N connects; N disconnects).

Redis is emptied once per cell, before the kits start: presence_kit keeps state of its
own there (node liveness), and wiping it under a running kit would make it recover from
a "sweep" in the middle of a timed run. Every run uses users of its own, so runs never
see each other's keys.
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from presence_kit import AsyncPresenceKit, PresenceKit
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_servers import RedisServer

from ._common import (
    PARTICIPANT_WEB,
    ROLES,
    TEACHER_APP,
    TEACHER_HUB,
    BenchError,
    Conn,
    Counter,
    QueueAnalytics,
    RedisProbe,
    ServerSample,
    Spread,
    Timed,
    alive_key,
    async_client,
    command_delta,
    connections,
    paired_differences,
    paired_ratios,
    prewarm_async,
    prewarm_sync,
    rotated,
    sync_client,
)
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
    SyncVariant,
)
from .config import Config

EVENTS = ("connect", "disconnect")
POOL = 128
"""Connections per client: above the concurrency, so that presence_kit's own background
steps (heartbeats, due leaves), which share the store's pool, never find it full."""
SyncFn = Callable[[str, Any], None]
AsyncFn = Callable[[str, Any], Awaitable[None]]


@dataclass
class EventSamples:
    """One variant's samples of one event across rounds."""

    wall: list[float] = field(default_factory=list)  # seconds per event, one per round
    cpu: list[float] = field(default_factory=list)
    events: int = 0
    round_trips: int = 0
    commands: int = 0
    redis_cpu: float = 0.0
    mix: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)

    def add(self, t: Timed, n: int, rt: int, before: ServerSample, after: ServerSample) -> None:
        self.wall.append(t.wall / n)
        self.cpu.append(t.cpu / n)
        self.events += n
        self.round_trips += rt
        self.commands += after.commands - before.commands
        self.redis_cpu += after.cpu - before.cpu
        for name, calls in command_delta(before, after).items():
            self.mix[name] = self.mix.get(name, 0) + calls
            usec = after.usec.get(name, 0) - before.usec.get(name, 0)
            self.usec[name] = self.usec.get(name, 0) + usec

    def summary(self) -> dict[str, Any]:
        n = max(self.events, 1)
        # A script's µs include those of the commands it runs, which INFO commandstats
        # also counts under their own names: the server's µs for a variant that runs
        # scripts are the scripts' (ours), else the sum over its commands (baselines).
        script_us = self.usec.get("evalsha", 0)
        return {
            "wall_us": Spread.of([w * 1e6 for w in self.wall]).as_dict(1),
            "client_cpu_us": Spread.of([c * 1e6 for c in self.cpu]).as_dict(1),
            "round_trips_per_event": round(self.round_trips / n, 3),
            "redis_commands_per_event": round(self.commands / n, 2),
            "redis_cpu_us_per_event": round(self.redis_cpu / n * 1e6, 1),
            "redis_script_calls_per_event": round(self.mix.get("evalsha", 0) / n, 2),
            "redis_script_us_per_event": round(script_us / n, 2),
            "redis_us_per_event": round((script_us or sum(self.usec.values())) / n, 2),
            "redis_command_mix_per_event": {
                k: round(v / n, 2) for k, v in sorted(self.mix.items(), key=lambda kv: -kv[1])
            },
            "redis_command_us_per_event": {
                k: round(v / n, 2) for k, v in sorted(self.usec.items(), key=lambda kv: -kv[1])
            },
            "events": self.events,
        }


@dataclass(frozen=True)
class Cell:
    api: str  # "sync" or "asyncio"
    concurrency: int
    role: str

    @property
    def label(self) -> str:
        mode = "sequential" if self.concurrency == 1 else f"{self.concurrency} concurrent"
        return f"{self.api} {mode} {self.role}"


def _variants_for(role: str) -> tuple[str, ...]:
    # For ParticipantWeb and TeacherHub the spec's flow is one command (or none) per
    # event: (a) and (b) are the same code, so it runs once, as (b).
    return (OURS, HAND_WRITTEN, FLOOR) if role == TEACHER_APP else (OURS, FLOOR)


# --- running a batch ---------------------------------------------------------------------


def run_sync(fn: SyncFn, conns: Sequence[Conn], concurrency: int) -> Timed:
    """Call ``fn`` for every connection: in a loop, or from ``concurrency`` threads at once."""
    gc.collect()
    result = Timed()
    if concurrency == 1:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for c in conns:
            fn(c.sid, c.session)
        result.wall, result.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return result
    barrier = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def worker(part: Sequence[Conn]) -> None:
        barrier.wait()
        try:
            for c in part:
                fn(c.sid, c.session)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(conns[i::concurrency],), daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    barrier.wait()
    for thread in threads:
        thread.join()
    result.wall, result.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if errors:
        raise errors[0]
    return result


async def run_async(fn: AsyncFn, conns: Sequence[Conn], concurrency: int) -> Timed:
    """Await ``fn`` for every connection: one at a time, or ``concurrency`` tasks at once."""
    gc.collect()
    result = Timed()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if concurrency == 1:
        for c in conns:
            await fn(c.sid, c.session)
    else:

        async def worker(part: Sequence[Conn]) -> None:
            for c in part:
                await fn(c.sid, c.session)

        await asyncio.gather(*(worker(conns[i::concurrency]) for i in range(concurrency)))
    result.wall, result.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return result


# --- checks: a run only counts if it did the work ------------------------------------------


@dataclass
class Fakes:
    """The in-process sockets and analytics of one variant."""

    sockets: RecordingSockets | AsyncRecordingSockets
    analytics: QueueAnalytics | None = None
    queue: queue.SimpleQueue[Any] | None = None

    def open(self, conns: Sequence[Conn]) -> None:
        """Mark the sids live, as a server's manager would (``local_sids``)."""
        self.sockets.connected.update(c.sid for c in conns)

    def close(self, conns: Sequence[Conn]) -> None:
        self.sockets.connected.difference_update(c.sid for c in conns)

    def reset(self) -> None:
        self.sockets.emitted.clear()
        self.sockets.rooms.clear()
        self.sockets.connected.clear()
        if self.analytics is not None:
            self.analytics.close()
        if self.queue is not None:
            while not self.queue.empty():
                self.queue.get_nowait()

    def tracked(self) -> int:
        if self.analytics is not None:
            return self.analytics.queue.qsize()
        if self.queue is not None:
            return self.queue.qsize()
        return 0


def check_run(
    role: str, name: str, conns: Sequence[Conn], fakes: Fakes, probe: RedisProbe, failures: int
) -> None:
    """Raise :class:`BenchError` unless the run left the state the spec asks for."""
    n = len(conns)
    if failures:
        raise BenchError(f"{name}: {failures} backend failure(s) counted by presence_kit")
    if role == TEACHER_APP:
        left = sum(1 for e in fakes.sockets.emitted if e[0] == "teacher_disconnect")
        if left != n:
            raise BenchError(f"{name}: {left} teacher_disconnect emits for {n} leaves")
        pipe = probe.admin.pipeline(transaction=False)
        for c in conns[:: max(1, n // 20)]:
            key = alive_key(c.session["org_id"], c.session["user_id"])
            pipe.hget(key, "state")
            pipe.ttl(key)
        replies = pipe.execute()
        for state, ttl in zip(replies[::2], replies[1::2], strict=True):
            if state != "disconnect" or not 0 < int(ttl) <= 3600:
                raise BenchError(f"{name}: alive key left as state={state!r} ttl={ttl}")
    elif role == PARTICIPANT_WEB and fakes.tracked() != n:
        raise BenchError(f"{name}: {fakes.tracked()} analytics events for {n} disconnects")
    if role != TEACHER_HUB and any(fakes.sockets.rooms.values()):
        raise BenchError(f"{name}: sids left in rooms after their disconnect")


def _failures(variant: SyncVariant | AsyncVariant) -> int:
    kit = getattr(variant, "kit", None)
    if kit is None:
        return 0
    stats = kit.stats
    return int(stats.store_failures + stats.sockets_failures)


# --- one cell --------------------------------------------------------------------------------


@dataclass
class CellResult:
    cell: Cell
    samples: dict[str, dict[str, EventSamples]]  # variant -> event -> samples

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for event in EVENTS:
            variants = {name: ev[event] for name, ev in self.samples.items()}
            ours = variants[OURS]
            floor = variants[FLOOR]
            hand = variants.get(HAND_WRITTEN, floor)
            same_a_b = HAND_WRITTEN not in variants or (
                self.cell.role == TEACHER_APP and event == "connect"
            )
            ratio_a = paired_ratios(ours.wall, hand.wall)
            ratio_b = paired_ratios(ours.wall, floor.wall)
            applies = self.cell.role != TEACHER_HUB
            rows.append(
                {
                    "api": self.cell.api,
                    "concurrency": self.cell.concurrency,
                    "role": self.cell.role,
                    "event": event,
                    "variants": {name: s.summary() for name, s in variants.items()},
                    "a_equals_b": same_a_b,
                    "ratio_vs_a": ratio_a.as_dict(3),
                    "ratio_vs_b": ratio_b.as_dict(3),
                    "cpu_ratio_vs_b": paired_ratios(ours.cpu, floor.cpu).as_dict(3),
                    "overhead_us_vs_b": _us(paired_differences(ours.wall, floor.wall)),
                    "cpu_overhead_us_vs_b": _us(paired_differences(ours.cpu, floor.cpu)),
                    "target_faster_than_a": (ratio_a.median < 1.0) if applies else None,
                    "target_within_1_10_of_b": (ratio_b.median <= 1.10) if applies else None,
                }
            )
        return rows


def _us(spread: Spread) -> dict[str, float | int]:
    return Spread(spread.median * 1e6, spread.low * 1e6, spread.high * 1e6, spread.n).as_dict(1)


def _block_start(probe: RedisProbe, counter: Counter) -> tuple[ServerSample, int]:
    """Before a measured block: the server's command statistics reset (``CONFIG
    RESETSTAT``), then its counters and the client's round trips read."""
    probe.reset_stats()
    return probe.sample(), counter.value


def _sync_cell(server: RedisServer, probe: RedisProbe, cell: Cell, cfg: Config) -> CellResult:
    probe.flush()
    n = cfg.m1_events(cell.concurrency)
    counters = {name: Counter() for name in _variants_for(cell.role)}
    variants: dict[str, SyncVariant] = {}
    fakes: dict[str, Fakes] = {}
    sync_clients: list[redis.Redis] = []
    kit: PresenceKit | None = None
    for name in counters:
        client = sync_client(server, counters[name], max_connections=POOL)
        sync_clients.append(client)
        sockets = RecordingSockets()
        if name == OURS:
            analytics = QueueAnalytics()
            store = RedisStore(client, max_connections=POOL)
            prewarm_sync(store.client, cell.concurrency)
            kit = PresenceKit(sockets=sockets, store=store, analytics=analytics)
            variants[name] = OursSync(kit)
            fakes[name] = Fakes(sockets, analytics=analytics)
        else:
            q: queue.SimpleQueue[Any] = queue.SimpleQueue()
            cls = HandWrittenSync if name == HAND_WRITTEN else FloorSync
            prewarm_sync(client, cell.concurrency)
            variants[name] = cls(client, sockets, q)
            fakes[name] = Fakes(sockets, queue=q)
    samples = {name: {e: EventSamples() for e in EVENTS} for name in variants}
    user = 0
    try:
        for name, variant in variants.items():  # warm the pools (one connection per thread)
            warm = connections(cell.role, max(2 * cell.concurrency, 50), user)
            user += len(warm)
            fakes[name].open(warm)
            run_sync(variant.connect, warm, cell.concurrency)
            run_sync(variant.disconnect, warm, cell.concurrency)
            fakes[name].reset()
        for r in range(cfg.m1_rounds):
            for name in rotated(list(variants), r):
                variant = variants[name]
                fakes[name].reset()
                conns = connections(cell.role, n, user)
                user += n
                fakes[name].open(conns)
                s0, rt0 = _block_start(probe, counters[name])
                t_connect = run_sync(variant.connect, conns, cell.concurrency)
                s1, rt1 = probe.sample(), counters[name].value
                samples[name]["connect"].add(t_connect, n, rt1 - rt0, s0, s1)
                s0, rt0 = _block_start(probe, counters[name])
                t_disconnect = run_sync(variant.disconnect, conns, cell.concurrency)
                s1, rt1 = probe.sample(), counters[name].value
                samples[name]["disconnect"].add(t_disconnect, n, rt1 - rt0, s0, s1)
                fakes[name].close(conns)
                check_run(cell.role, name, conns, fakes[name], probe, _failures(variant))
    finally:
        if kit is not None:
            kit.close()
        for sync in sync_clients:
            sync.close()
    return CellResult(cell, samples)


async def _async_cell(
    server: RedisServer, probe: RedisProbe, cell: Cell, cfg: Config
) -> CellResult:
    probe.flush()
    n = cfg.m1_events(cell.concurrency)
    counters = {name: Counter() for name in _variants_for(cell.role)}
    variants: dict[str, AsyncVariant] = {}
    fakes: dict[str, Fakes] = {}
    clients: list[redis.asyncio.Redis] = []
    kit: AsyncPresenceKit | None = None
    for name in counters:
        client = async_client(server, counters[name], max_connections=POOL)
        clients.append(client)
        sockets = AsyncRecordingSockets()
        if name == OURS:
            analytics = QueueAnalytics()
            async_store = AsyncRedisStore(client, max_connections=POOL)
            await prewarm_async(async_store.client, cell.concurrency)
            kit = AsyncPresenceKit(sockets=sockets, store=async_store, analytics=analytics)
            variants[name] = OursAsync(kit)
            fakes[name] = Fakes(sockets, analytics=analytics)
        else:
            q: queue.SimpleQueue[Any] = queue.SimpleQueue()
            acls = HandWrittenAsync if name == HAND_WRITTEN else FloorAsync
            await prewarm_async(client, cell.concurrency)
            variants[name] = acls(client, sockets, q)
            fakes[name] = Fakes(sockets, queue=q)
    samples = {name: {e: EventSamples() for e in EVENTS} for name in variants}
    user = 0
    try:
        for name, variant in variants.items():
            warm = connections(cell.role, max(2 * cell.concurrency, 50), user)
            user += len(warm)
            fakes[name].open(warm)
            await run_async(variant.connect, warm, cell.concurrency)
            await run_async(variant.disconnect, warm, cell.concurrency)
            fakes[name].reset()
        for r in range(cfg.m1_rounds):
            for name in rotated(list(variants), r):
                variant = variants[name]
                fakes[name].reset()
                conns = connections(cell.role, n, user)
                user += n
                fakes[name].open(conns)
                s0, rt0 = _block_start(probe, counters[name])
                t_connect = await run_async(variant.connect, conns, cell.concurrency)
                s1, rt1 = probe.sample(), counters[name].value
                samples[name]["connect"].add(t_connect, n, rt1 - rt0, s0, s1)
                s0, rt0 = _block_start(probe, counters[name])
                t_disconnect = await run_async(variant.disconnect, conns, cell.concurrency)
                s1, rt1 = probe.sample(), counters[name].value
                samples[name]["disconnect"].add(t_disconnect, n, rt1 - rt0, s0, s1)
                fakes[name].close(conns)
                check_run(cell.role, name, conns, fakes[name], probe, _failures(variant))
    finally:
        if kit is not None:
            await kit.aclose()
        for client in clients:
            await client.aclose()
    return CellResult(cell, samples)


def cells(cfg: Config) -> list[Cell]:
    return [
        Cell(api, concurrency, role)
        for api in ("sync", "asyncio")
        for concurrency in (1, 100)
        for role in ROLES
    ]


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with RedisServer() as server:
        probe = RedisProbe(server)
        for cell in cells(cfg):
            t0 = time.perf_counter()
            if cell.api == "sync":
                result = _sync_cell(server, probe, cell, cfg)
            else:
                result = asyncio.run(_async_cell(server, probe, cell, cfg))
            rows.extend(result.summary())
            log(f"  m1 {cell.label}: {time.perf_counter() - t0:.1f}s")
    return {
        "rows": rows,
        "rounds": cfg.m1_rounds,
        "events_per_run": {
            "sequential": cfg.m1_events(1),
            "concurrent": cfg.m1_events(100),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
