"""Measurement 3: event-loop lag while participants leave at a steady rate.

A ticker task sleeps ``lag_interval`` (5 ms) again and again and records how much
longer each sleep took than asked (the loop's lag). Meanwhile participants disconnect
through ``AsyncPresenceKit`` at a steady ``lag_rate`` (1,000/s), each a Mixpanel
``disconnect`` event, with ``MixpanelAnalytics`` aimed at the test suite's local
endpoint (in another process) that

* answers in 500 ms ("slow"),
* answers in 2 s while our ``request_timeout`` is 0.1 s ("timing out"),
* is not listening ("refused"),

against the very same run with ``analytics=None`` ("off"). Rounds are interleaved
(every mode once per round, in rotated order), each run on an emptied Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import mixpanel

from presence_kit import AsyncPresenceKit
from presence_kit.mixpanel import MixpanelAnalytics
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets
from tests.support.mixpanel_endpoint import refused_url
from tests.support.redis_servers import RedisServer

from ._common import (
    PARTICIPANT_WEB,
    REASON,
    BenchError,
    Conn,
    Counter,
    RedisProbe,
    Spread,
    async_client,
    burst,
    connections,
    median,
    percentile,
    prewarm_async,
    rotated,
)
from ._endpoint import endpoint_process
from .config import Config

OFF = "off"
SLOW = "slow (500 ms answers)"
TIMING_OUT = "timing out (2 s answers, 0.1 s timeout)"
REFUSED = "refused"
MODES = (OFF, SLOW, TIMING_OUT, REFUSED)
TOKEN = "bench-token"


class GcPauses:
    """Times the garbage collector's pauses (they stall the loop like any other work)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._start)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def _ticker(stop: asyncio.Event, interval: float, samples: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(interval)
        samples.append(time.perf_counter() - t0 - interval)


def _analytics(mode: str, urls: dict[str, str]) -> MixpanelAnalytics | None:
    if mode == OFF:
        return None
    timeout = 0.1 if mode == TIMING_OUT else 5.0
    client = mixpanel.Mixpanel(TOKEN, consumer=mixpanel.Consumer(events_url=urls[mode]))
    return MixpanelAnalytics(client, request_timeout=timeout)


async def one_run(
    server: RedisServer, probe: RedisProbe, mode: str, urls: dict[str, str], cfg: Config
) -> dict[str, Any]:
    probe.flush()
    client = async_client(server, Counter(), max_connections=256)
    analytics = _analytics(mode, urls)
    sockets = AsyncRecordingSockets()
    store = AsyncRedisStore(client)
    kit = AsyncPresenceKit(sockets=sockets, store=store, analytics=analytics)
    n = round(cfg.lag_rate * cfg.lag_seconds)
    conns = connections(PARTICIPANT_WEB, n + 1, 0)
    sockets.connected.update(c.sid for c in conns)
    lags: list[float] = []
    latencies: list[float] = []
    try:
        await prewarm_async(store.client, 20)
        await burst(lambda c: kit.handle_connect(c.sid, c.session), conns, 50)
        # One disconnect first: the analytics worker thread starts on its first event.
        await kit.handle_disconnect(conns[0].sid, conns[0].session, reason=REASON)
        await asyncio.sleep(0.1)

        async def leave(c: Conn) -> None:
            t0 = time.perf_counter()
            await kit.handle_disconnect(c.sid, c.session, reason=REASON)
            latencies.append(time.perf_counter() - t0)

        stop = asyncio.Event()
        gc.collect()
        with GcPauses() as gc_pauses:
            ticker = asyncio.create_task(_ticker(stop, cfg.lag_interval, lags))
            tasks: list[asyncio.Task[None]] = []
            start, i, todo = time.perf_counter(), 0, conns[1:]
            while i < n:
                due = min(n, int((time.perf_counter() - start) * cfg.lag_rate) + 1)
                while i < due:
                    tasks.append(asyncio.create_task(leave(todo[i])))
                    i += 1
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
            stop.set()
            await ticker
        failures = kit.stats.store_failures
        kit_stats = dataclasses.asdict(kit.stats)
        stats = analytics.stats if analytics is not None else None
    finally:
        await kit.aclose(timeout=0.5)
        await client.aclose()
    # A store failure (a Redis deadline missed while the process was stalled) is part of
    # the result, not a broken run; analytics must still have every removed connection.
    if stats is not None and stats.enqueued + failures < n:
        raise BenchError(f"loop lag {mode}: only {stats.enqueued} of {n} events enqueued")
    return {
        "lag_p50_ms": round(percentile(lags, 50) * 1e3, 3),
        "lag_p99_ms": round(percentile(lags, 99) * 1e3, 3),
        "lag_max_ms": round(max(lags) * 1e3, 3),
        "ticks": len(lags),
        "handler_p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "handler_p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "achieved_rate_per_s": round(n / elapsed),
        "store_failures": failures,
        "kit_stats": kit_stats,
        "gc_pauses": len(gc_pauses.pauses),
        "gc_max_pause_ms": round(max(gc_pauses.pauses, default=0.0) * 1e3, 3),
        "analytics": None
        if stats is None
        else {
            "enqueued": stats.enqueued,
            "sent_before_close": stats.sent,
            "retried": stats.retried,
            "dropped": stats.dropped,
        },
    }


async def _run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with (
        RedisServer() as server,
        endpoint_process("slow", 0.5) as slow_url,
        endpoint_process("slow", 2.0) as slower_url,
    ):
        probe = RedisProbe(server)
        urls = {SLOW: slow_url, TIMING_OUT: slower_url, REFUSED: refused_url()}
        for r in range(cfg.lag_rounds):
            for mode in rotated(list(MODES), r):
                t0 = time.perf_counter()
                runs[mode].append(await one_run(server, probe, mode, urls, cfg))
                log(f"  m3 {mode}: {time.perf_counter() - t0:.1f}s")
    off_runs = [x["lag_p99_ms"] for x in runs[OFF]]
    off_p99 = Spread.of(off_runs)
    # Noise: twice the off runs' median absolute deviation (robust to one run that the
    # shared machine stalled), and never below 1 ms.
    noise = max(1.0, 2 * median([abs(x - off_p99.median) for x in off_runs]))
    modes: dict[str, Any] = {}
    for mode, results in runs.items():
        p99 = Spread.of([x["lag_p99_ms"] for x in results])
        worst = Spread.of([x["lag_max_ms"] for x in results])
        modes[mode] = {
            "lag_p99_ms": p99.as_dict(3),
            "lag_max_ms": worst.as_dict(3),
            "handler_p99_ms": Spread.of([x["handler_p99_ms"] for x in results]).as_dict(3),
            "runs": results,
            "target_p99_under_10ms": p99.median < 10.0,
            "target_same_as_off": abs(p99.median - off_p99.median) <= noise,
        }
    return {
        "rate_per_s": cfg.lag_rate,
        "seconds_per_run": cfg.lag_seconds,
        "tick_ms": cfg.lag_interval * 1e3,
        "rounds": cfg.lag_rounds,
        "noise_ms": round(noise, 3),
        "modes": modes,
    }


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    result = asyncio.run(_run(cfg, log))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
