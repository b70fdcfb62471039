"""Profile the hot path of measurement 1 with pyinstrument: ``bench/results/profile.txt``.

``python -m bench.tools.profile_hot_path [--quick] [--out DIR]``, or the main run's
``profile``.

presence_kit's TeacherAPP and ParticipantWeb connects and disconnects run sequentially
(sync and asyncio), as in measurement 1, under pyinstrument's sampling profiler. For
each, the file gets a summary — where the time goes by layer (presence_kit's own code,
redis-py, the socket calls that include waiting for Redis, asyncio) — the functions
with the most self time, and the call tree.

pyinstrument hooks every call, so code made of many small calls (ours, redis-py) looks
somewhat bigger under it than it is: read proportions, and take absolute costs from
measurement 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    PARTICIPANT_WEB,
    REASON,
    REPO,
    RESULTS_DIR,
    TEACHER_APP,
    Counter,
    QueueAnalytics,
    async_client,
    connections,
    sync_client,
)
from bench.config import Config
from presence_kit import AsyncPresenceKit, PresenceKit
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.testing import AsyncRecordingSockets, RecordingSockets
from tests.support.redis_servers import RedisServer

_IO = ("sendall", "recv_into", "recv", "send", "poll", "select", "epoll", "sock_")
INTERVAL = 0.0005


def _bucket(frame: Any, parent: str) -> str:
    path = (frame.file_path or "").replace("\\", "/")
    name = frame.function or ""
    if "/presence_kit/" in path:
        return "presence_kit (our code, with the stdlib it calls)"
    if "/site-packages/redis/" in path or "hiredis" in path:
        return "redis-py (command building, pool, parsing)"
    if path.startswith("<built-in>") and any(io in name for io in _IO):
        return "socket calls (includes waiting for Redis to answer)"
    if "/asyncio/" in path and parent.startswith("driver"):
        return "asyncio event loop"
    return parent


def layers(profiler: Any) -> dict[str, float]:
    """Seconds of self time per layer of the last profiled session."""
    totals: dict[str, float] = {}
    session = profiler.last_session
    root = session.root_frame() if session is not None else None
    if root is None:
        return totals

    def walk(frame: Any, parent: str) -> None:
        bucket = _bucket(frame, parent)
        children = list(frame.children)
        own = frame.time - sum(c.time for c in children)
        totals[bucket] = totals.get(bucket, 0.0) + max(0.0, own)
        for child in children:
            walk(child, bucket)

    walk(root, "driver (the benchmark loop)")
    return totals


def _body(text: str) -> list[str]:
    """pyinstrument's output without its banner."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Profile at"):
            return [x for x in lines[i + 1 :] if x.strip()]
    return lines


def _render(title: str, events: int, wall: float, profiler: Any) -> str:
    totals = layers(profiler)
    total = sum(totals.values()) or 1.0
    lines = [
        "=" * 100,
        title,
        f"{events} events, {wall / events * 1e6:.0f} us/event under the profiler "
        f"(sampling every {INTERVAL * 1e3:.1f} ms)",
        "",
        "Where the time goes (self time by layer):",
    ]
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(
            f"  {seconds / total * 100:5.1f}%  {seconds / events * 1e6:7.1f} us/event  {name}"
        )
    lines += ["", "Functions with the most self time:", ""]
    flat = profiler.output_text(unicode=False, color=False, flat=True, time="percent_of_total")
    lines += _body(flat)[:40]
    lines += ["", "Call tree:", ""]
    lines += _body(profiler.output_text(unicode=False, color=False, time="percent_of_total"))
    return "\n".join(lines) + "\n"


def _profile_sync(server: RedisServer, role: str, event: str, n: int) -> str:
    from pyinstrument import Profiler

    client = sync_client(server, Counter())
    sockets = RecordingSockets()
    kit = PresenceKit(sockets=sockets, store=RedisStore(client), analytics=QueueAnalytics())
    conns = connections(role, n + 200, 0)
    sockets.connected.update(c.sid for c in conns)
    try:
        for c in conns[:200]:  # warm up: scripts loaded, pool open
            kit.handle_connect(c.sid, c.session)
            kit.handle_disconnect(c.sid, c.session, reason=REASON)
        todo = conns[200:]
        profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        if event == "disconnect":
            for c in todo:
                kit.handle_connect(c.sid, c.session)
        profiler.start()
        t0 = time.perf_counter()
        for c in todo:
            if event == "connect":
                kit.handle_connect(c.sid, c.session)
            else:
                kit.handle_disconnect(c.sid, c.session, reason=REASON)
        wall = time.perf_counter() - t0
        profiler.stop()
    finally:
        kit.close()
        client.close()
    return _render(f"sync PresenceKit.handle_{event}, {role}", n, wall, profiler)


async def _profile_async(server: RedisServer, role: str, event: str, n: int) -> str:
    from pyinstrument import Profiler

    client = async_client(server, Counter())
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(
        sockets=sockets, store=AsyncRedisStore(client), analytics=QueueAnalytics()
    )
    conns = connections(role, n + 200, 0)
    sockets.connected.update(c.sid for c in conns)
    try:
        for c in conns[:200]:
            await kit.handle_connect(c.sid, c.session)
            await kit.handle_disconnect(c.sid, c.session, reason=REASON)
        todo = conns[200:]
        if event == "disconnect":
            for c in todo:
                await kit.handle_connect(c.sid, c.session)
        profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        profiler.start()
        t0 = time.perf_counter()
        for c in todo:
            if event == "connect":
                await kit.handle_connect(c.sid, c.session)
            else:
                await kit.handle_disconnect(c.sid, c.session, reason=REASON)
        wall = time.perf_counter() - t0
        profiler.stop()
    finally:
        await kit.aclose()
        await client.aclose()
    return _render(f"asyncio AsyncPresenceKit.handle_{event}, {role}", n, wall, profiler)


async def _profile_storm(server: RedisServer, n: int, concurrency: int) -> str:
    """Measurement 2's burst: ``n`` handler disconnects, ``concurrency`` at a time, where
    calls are batched (the concurrent hot path)."""
    from pyinstrument import Profiler

    client = async_client(server, Counter(), max_connections=concurrency + 56)
    sockets = AsyncRecordingSockets()
    kit = AsyncPresenceKit(sockets=sockets, store=AsyncRedisStore(client))
    conns = connections(TEACHER_APP, n, 10**6)
    sockets.connected.update(c.sid for c in conns)

    async def burst(handler: Callable[[Any], Any]) -> None:
        items = iter(conns)

        async def worker() -> None:
            for c in items:
                await handler(c)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    try:
        await burst(lambda c: kit.handle_connect(c.sid, c.session))
        profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        profiler.start()
        t0 = time.perf_counter()
        await burst(lambda c: kit.handle_disconnect(c.sid, c.session, reason=REASON))
        wall = time.perf_counter() - t0
        profiler.stop()
    finally:
        await kit.aclose()
        await client.aclose()
    title = (
        f"asyncio storm: {n:,} TeacherAPP handle_disconnect calls, {concurrency} at a time "
        "(batched)"
    )
    return _render(title, n, wall, profiler)


def run(cfg: Config, log: Callable[[str], None], out: Path = RESULTS_DIR) -> dict[str, Any]:
    started = time.perf_counter()
    n = cfg.profile_events
    parts = [
        "presence_kit hot-path profile (pyinstrument), written by `python -m bench`.\n"
        "Each section: presence_kit alone, sequential, on a local redis-server, with the\n"
        "in-process recording sockets (as in measurement 1); the last one is measurement\n"
        "2's burst of handler calls, where calls are batched. pyinstrument hooks every\n"
        "call and measures wall time, so code made of many small calls looks bigger than\n"
        "it is, and a busy machine's preemptions land on whatever frame was running:\n"
        'read proportions; the decomposition (bench/tools/decompose.py, the table "Our\n'
        'code versus its Redis work" of results.md) gives the absolute cost.\n'
    ]
    sections = [
        (TEACHER_APP, "disconnect"),
        (TEACHER_APP, "connect"),
        (PARTICIPANT_WEB, "disconnect"),
    ]
    with RedisServer() as server:
        for role, event in sections:
            parts.append(_profile_sync(server, role, event, n))
        for role, event in sections[:2]:
            parts.append(asyncio.run(_profile_async(server, role, event, n)))
        parts.append(asyncio.run(_profile_storm(server, 10 * n, cfg.storm_concurrency)))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profile.txt"
    path.write_text("\n".join(parts))
    log(f"  profile: {time.perf_counter() - started:.1f}s")
    shown = path.resolve()
    if shown.is_relative_to(REPO):
        shown = shown.relative_to(REPO)
    return {"file": str(shown), "events_per_section": n}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.profile_hot_path")
    parser.add_argument("--quick", action="store_true", help="fewer events")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = parser.parse_args()
    cfg = Config.quick_run() if args.quick else Config.full()
    result = run(cfg, lambda message: print(message, file=sys.stderr, flush=True), args.out)
    print(f"wrote {result['file']}")


if __name__ == "__main__":
    main()
