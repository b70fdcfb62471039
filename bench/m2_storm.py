"""Measurement 2: a disconnect storm — N teachers' connections lost at once.

The storm is a burst of N ``handle_disconnect`` calls on one event loop with bounded
concurrency (a pool of worker tasks, as a server's disconnect handlers would run), each
user with one connection, so every call is a real leave that must be announced. It
reports the time until Redis holds the right state (the last store call returned: every
alive key ``state=disconnect`` with its TTL) and until every leave is announced (the last
``teacher_disconnect`` emit was recorded). The state is then checked key by key.

Against it: the floor, one big pipeline with the same writes (``HSET state disconnect``
and ``EXPIRE 3600`` per user) followed by the same emits; and the hand-written handler
(a) under the same bounded concurrency. The setup (N connects through the same kit, at
the same concurrency) is timed too and reported as a connect burst.

Redis clients here get ``max_connections`` above the concurrency. One extra run uses
redis-py's default pool size (``max_connections=100``, which the store copies) with 200
handlers at once: what an integrator with default settings gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis.asyncio

from presence_kit import AsyncPresenceKit, DisconnectOutcome, DisconnectRequest, Settings
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets
from tests.support.redis_servers import RedisServer

from ._common import (
    OFFLINE_TTL,
    REASON,
    TEACHER_APP,
    BenchError,
    Conn,
    Counter,
    RedisProbe,
    ServerSample,
    Spread,
    alive_key,
    async_client,
    burst,
    command_delta,
    connections,
    lesson_room,
    org_room,
    paired_ratios,
    prewarm_async,
    rotated,
)
from .baselines import FLOOR, HAND_WRITTEN, OURS, HandWrittenAsync
from .config import Config

CHUNK = 10_000
SWEEP = "presence_kit: a dead node's sweep"
SWEEP_SETTINGS = Settings(node_timeout=0.3, heartbeat_interval=0.1)


class StampedStore(AsyncRedisStore):
    """An ``AsyncRedisStore`` that notes when its last disconnect returned."""

    last_done = 0.0

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        outcome = await super().disconnect(request)
        self.last_done = time.perf_counter()
        return outcome

    async def disconnect_many(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        outcomes = await super().disconnect_many(requests)
        self.last_done = time.perf_counter()
        return outcomes


class StampedSockets(AsyncRecordingSockets):
    """Recording sockets that count ``teacher_disconnect`` emits and note the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.announced = 0
        self.last_announced = 0.0

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        await super().emit(event, data, to=to)
        if event == "teacher_disconnect":
            self.announced += 1
            self.last_announced = time.perf_counter()

    def reset(self) -> None:
        """Forget emits and rooms (the live sids stay)."""
        self.emitted.clear()
        self.rooms.clear()
        self.announced = 0
        self.last_announced = 0.0


async def wrong_alive_keys(client: redis.asyncio.Redis, conns: Sequence[Conn]) -> int:
    """How many users' alive keys are not ``state=disconnect`` with a TTL of at most 1 h."""
    wrong = 0
    for start in range(0, len(conns), CHUNK):
        pipe = client.pipeline(transaction=False)
        part = conns[start : start + CHUNK]
        for c in part:
            key = alive_key(c.session["org_id"], c.session["user_id"])
            pipe.hget(key, "state")
            pipe.ttl(key)
        replies = await pipe.execute()
        for state, ttl in zip(replies[::2], replies[1::2], strict=True):
            if state != b"disconnect" or not 0 < int(ttl) <= OFFLINE_TTL:
                wrong += 1
    return wrong


def _mix(before: ServerSample, after: ServerSample, n: int) -> dict[str, float]:
    delta = command_delta(before, after)
    return {k: round(v / n, 3) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])}


def _rates(n: int, redis_s: float, announce_s: float) -> dict[str, float]:
    return {
        "redis_state_s": round(redis_s, 3),
        "all_announced_s": round(announce_s, 3),
        "events_per_s": round(n / redis_s) if redis_s > 0 else float("nan"),
    }


async def ours_storm(
    server: RedisServer, probe: RedisProbe, n: int, concurrency: int, max_connections: int | None
) -> dict[str, Any]:
    """Connect ``n`` teachers through the kit, then disconnect them all at once."""
    probe.flush()
    counter = Counter()
    pool_kwargs = {} if max_connections is None else {"max_connections": max_connections}
    client = async_client(server, counter, **pool_kwargs)
    store = StampedStore(client, max_connections=max_connections)
    sockets = StampedSockets()
    kit = AsyncPresenceKit(sockets=sockets, store=store)
    conns = connections(TEACHER_APP, n, 0)
    try:
        await prewarm_async(store.client, min(concurrency, max_connections or 100))
        sockets.connected.update(c.sid for c in conns)  # live sids, as a server reports them
        warm = connections(TEACHER_APP, 2, 10**7, orgs=1)  # loads both scripts first
        sockets.connected.update(c.sid for c in warm)
        for c in warm:
            await kit.handle_connect(c.sid, c.session)
            await kit.handle_disconnect(c.sid, c.session, reason=REASON)
        connect_s = await burst(lambda c: kit.handle_connect(c.sid, c.session), conns, concurrency)
        sockets.reset()
        failures_before = kit.stats.store_failures
        s0, rt0 = probe.sample(), counter.value
        t0 = time.perf_counter()
        total_s = await burst(
            lambda c: kit.handle_disconnect(c.sid, c.session, reason=REASON), conns, concurrency
        )
        s1, rt1 = probe.sample(), counter.value
        failures = kit.stats.store_failures - failures_before
        wrong = await wrong_alive_keys(client, conns)
    finally:
        await kit.aclose()
        await client.aclose()
    result: dict[str, Any] = dict(_rates(n, store.last_done - t0, sockets.last_announced - t0))
    result.update(
        {
            "handlers_done_s": round(total_s, 3),
            "announced": sockets.announced,
            "store_failures": failures,
            "alive_keys_wrong": wrong,
            "round_trips_per_event": round((rt1 - rt0) / n, 3),
            "redis_commands_per_event": round((s1.commands - s0.commands) / n, 2),
            "redis_cpu_us_per_event": round((s1.cpu - s0.cpu) / n * 1e6, 1),
            "redis_command_mix_per_event": _mix(s0, s1, n),
            "connect_failures": failures_before,
            "connect_burst_s": round(connect_s, 3),
            "connect_burst_per_s": round(n / connect_s),
        }
    )
    return result


async def sweep_storm(
    server: RedisServer, probe: RedisProbe, n: int, concurrency: int, max_connections: int
) -> dict[str, Any]:
    """Node A records ``n`` teachers' connections and dies (stops heartbeating); node B
    sweeps it with ``sweep_dead_nodes``: every leave run once and announced by B."""
    probe.flush()
    counter = Counter()
    lost_client = async_client(server, Counter(), max_connections=max_connections)
    lost_store = AsyncRedisStore(lost_client, max_connections=max_connections)
    lost = AsyncPresenceKit(
        sockets=AsyncRecordingSockets(), store=lost_store, settings=SWEEP_SETTINGS
    )
    client = async_client(server, counter, max_connections=max_connections)
    store = StampedStore(client, max_connections=max_connections)
    sockets = StampedSockets()
    sweeper = AsyncPresenceKit(sockets=sockets, store=store, settings=SWEEP_SETTINGS)
    conns = connections(TEACHER_APP, n, 0)
    try:
        await prewarm_async(store.client, 4)
        await lost.heartbeat()
        connect_s = await burst(
            lambda c: lost.handle_connect(c.sid, c.session), conns, concurrency
        )
        await asyncio.sleep(SWEEP_SETTINGS.node_timeout + 0.1)  # node A is now dead
        s0, rt0 = probe.sample(), counter.value
        t0 = time.perf_counter()
        recovered = await sweeper.sweep_dead_nodes()
        total_s = time.perf_counter() - t0
        s1, rt1 = probe.sample(), counter.value
        wrong = await wrong_alive_keys(client, conns)
    finally:
        await sweeper.aclose()
        await lost_store.aclose()
        await lost_client.aclose()
        await client.aclose()
    result: dict[str, Any] = dict(_rates(n, store.last_done - t0, sockets.last_announced - t0))
    result.update(
        {
            "handlers_done_s": round(total_s, 3),
            "recovered": recovered,
            "announced": sockets.announced,
            "alive_keys_wrong": wrong,
            "round_trips_per_event": round((rt1 - rt0) / n, 4),
            "redis_commands_per_event": round((s1.commands - s0.commands) / n, 2),
            "redis_cpu_us_per_event": round((s1.cpu - s0.cpu) / n * 1e6, 1),
            "connect_burst_s": round(connect_s, 3),
            "connect_burst_per_s": round(n / connect_s),
        }
    )
    return result


async def floor_storm(server: RedisServer, probe: RedisProbe, n: int) -> dict[str, Any]:
    """The same writes for all ``n`` users in one pipeline, then the same emits."""
    probe.flush()
    counter = Counter()
    client = async_client(server, counter)
    sockets = StampedSockets()
    conns = connections(TEACHER_APP, n, 0)
    try:
        pipe = client.pipeline(transaction=False)
        for c in conns:
            pipe.hset(alive_key(c.session["org_id"], c.session["user_id"]), "state", "connect")
        await pipe.execute()
        s0, rt0 = probe.sample(), counter.value
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for c in conns:
            key = alive_key(c.session["org_id"], c.session["user_id"])
            pipe.hset(key, "state", "disconnect")
            pipe.expire(key, OFFLINE_TTL)
        await pipe.execute()
        redis_s = time.perf_counter() - t0
        for c in conns:
            s = c.session
            await sockets.emit(
                "teacher_disconnect", {"user_id": s["user_id"]}, to=org_room(s["org_id"])
            )
            await sockets.leave_room(c.sid, lesson_room(s["lesson_id"]))
        s1, rt1 = probe.sample(), counter.value
        wrong = await wrong_alive_keys(client, conns)
    finally:
        await client.aclose()
    result: dict[str, Any] = dict(_rates(n, redis_s, sockets.last_announced - t0))
    result.update(
        {
            "announced": sockets.announced,
            "alive_keys_wrong": wrong,
            "round_trips_per_event": round((rt1 - rt0) / n, 5),
            "redis_commands_per_event": round((s1.commands - s0.commands) / n, 2),
            "redis_cpu_us_per_event": round((s1.cpu - s0.cpu) / n * 1e6, 1),
        }
    )
    return result


async def hand_written_storm(
    server: RedisServer, probe: RedisProbe, n: int, concurrency: int
) -> dict[str, Any]:
    """Handler (a) under the same bounded concurrency (its Redis state is right by its
    last emit, which directly follows its last ``EXPIRE``)."""
    probe.flush()
    counter = Counter()
    client = async_client(server, counter, max_connections=concurrency + 56)
    sockets = StampedSockets()
    handler = HandWrittenAsync(client, sockets, queue.SimpleQueue())
    conns = connections(TEACHER_APP, n, 0)
    try:
        await prewarm_async(client, concurrency)
        await burst(lambda c: handler.connect(c.sid, c.session), conns, concurrency)
        sockets.reset()
        s0, rt0 = probe.sample(), counter.value
        t0 = time.perf_counter()
        total_s = await burst(lambda c: handler.disconnect(c.sid, c.session), conns, concurrency)
        s1, rt1 = probe.sample(), counter.value
        wrong = await wrong_alive_keys(client, conns)
    finally:
        await client.aclose()
    done = sockets.last_announced - t0
    result: dict[str, Any] = dict(_rates(n, done, done))
    result.update(
        {
            "handlers_done_s": round(total_s, 3),
            "announced": sockets.announced,
            "alive_keys_wrong": wrong,
            "round_trips_per_event": round((rt1 - rt0) / n, 3),
            "redis_commands_per_event": round((s1.commands - s0.commands) / n, 2),
            "redis_cpu_us_per_event": round((s1.cpu - s0.cpu) / n * 1e6, 1),
        }
    )
    return result


def _check(name: str, n: int, result: dict[str, Any]) -> None:
    if (
        result["announced"] != n
        or result.get("recovered", n) != n
        or result["alive_keys_wrong"]
        or result.get("store_failures")
    ):
        raise BenchError(f"storm {name} n={n}: {result}")


@contextlib.contextmanager
def _kit_warnings_muted() -> Iterator[None]:
    """The default-pool run fails on purpose; keep its thousands of warnings off stderr."""
    kit_logger = logging.getLogger("presence_kit")
    level = kit_logger.level
    kit_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kit_logger.setLevel(level)


async def _run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    concurrency = cfg.storm_concurrency
    pool = concurrency + 56
    sizes: list[dict[str, Any]] = []
    with RedisServer() as server:
        probe = RedisProbe(server)
        for index, n in enumerate(cfg.storm_sizes):
            t_size = time.perf_counter()
            rounds = cfg.storm_rounds if index == 0 else 1
            variants = [OURS, SWEEP, FLOOR, HAND_WRITTEN] if index == 0 else [OURS, SWEEP, FLOOR]
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for r in range(rounds):
                for name in rotated(variants, r):
                    if name == OURS:
                        result = await ours_storm(server, probe, n, concurrency, pool)
                    elif name == SWEEP:
                        result = await sweep_storm(server, probe, n, concurrency, pool)
                    elif name == FLOOR:
                        result = await floor_storm(server, probe, n)
                    else:
                        result = await hand_written_storm(server, probe, n, concurrency)
                    _check(name, n, result)
                    runs[name].append(result)
            ours_rate = [x["events_per_s"] for x in runs[OURS]]
            floor_rate = [x["events_per_s"] for x in runs[FLOOR]]
            throughput = paired_ratios(ours_rate, floor_rate)
            sweep_rate = [x["events_per_s"] for x in runs[SWEEP]]
            sweep_throughput = paired_ratios(sweep_rate, floor_rate)
            announced = Spread.of([x["all_announced_s"] for x in runs[OURS]])
            entry: dict[str, Any] = {
                "n": n,
                "concurrency": concurrency,
                "rounds": rounds,
                "runs": runs,
                "throughput_ratio_vs_floor": throughput.as_dict(3),
                "ours_all_announced_s": announced.as_dict(3),
                "target_half_floor_throughput": throughput.median >= 0.5,
                "target_0_8_of_floor_throughput": throughput.median >= 0.8,
                "sweep_throughput_ratio_vs_floor": sweep_throughput.as_dict(3),
                "sweep_target_half_floor_throughput": sweep_throughput.median >= 0.5,
                "sweep_target_0_8_of_floor_throughput": sweep_throughput.median >= 0.8,
            }
            if HAND_WRITTEN in runs:
                hand_rate = [x["events_per_s"] for x in runs[HAND_WRITTEN]]
                entry["throughput_ratio_vs_a"] = paired_ratios(ours_rate, hand_rate).as_dict(3)
            if n == 10_000:
                entry["target_announce_10k_under_5s"] = announced.median < 5.0
            sizes.append(entry)
            log(f"  m2 storm n={n}: {time.perf_counter() - t_size:.1f}s")
        t_default = time.perf_counter()
        n = cfg.storm_sizes[0]
        with _kit_warnings_muted():
            default_pool = await ours_storm(server, probe, n, concurrency, None)
        log(f"  m2 default pool n={n}: {time.perf_counter() - t_default:.1f}s")
    return {
        "sizes": sizes,
        "default_pool": {"n": n, "concurrency": concurrency, **default_pool},
    }


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    result = asyncio.run(_run(cfg, log))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
