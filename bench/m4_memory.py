"""Measurement 4: Redis memory per online teacher.

On a fresh ``redis-server``, the allocated memory (``MEMORY STATS`` ``total.allocated``,
i.e. ``used_memory``, less the clients' buffers, which are not per teacher) is read
before and after N teachers connect
through ``AsyncPresenceKit`` (one connection each, 100 teachers per organisation), after
each of them opens a second connection, and after all connections close. Every key
presence_kit writes is included (alive hashes, connection records, organisation
indexes, node bookkeeping). Against it: the spec's bare alive hash
(``HSET alive:org_X_user_Y state connect``) for the same N users on another fresh
server. A breakdown groups the keys by shape and samples ``MEMORY USAGE`` and
``OBJECT ENCODING`` of each group.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from presence_kit import AsyncPresenceKit
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets
from tests.support.redis_servers import RedisServer

from ._common import (
    REASON,
    TEACHER_APP,
    BenchError,
    Conn,
    Counter,
    RedisProbe,
    alive_key,
    async_client,
    burst,
    connections,
    new_sid,
    prewarm_async,
)
from .config import Config

ORGS = 100
CONCURRENCY = 32
SAMPLE = 200
_SID = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20}(?![A-Za-z0-9_-])")
_HEX = re.compile(r"(?<![A-Za-z0-9])[0-9a-f]*\d[0-9a-f]*(?![A-Za-z0-9])")
_NUMBER = re.compile(r"\d+")


def _memory(probe: RedisProbe) -> int:
    """Allocated bytes, less the clients' buffers (not per teacher; they come and go)."""
    stats = probe.admin.memory_stats()
    return (
        int(stats["total.allocated"]) - int(stats["clients.normal"]) - int(stats["clients.slaves"])
    )


def _settle(probe: RedisProbe) -> int:
    """:func:`_memory` once it stops moving."""
    last = _memory(probe)
    for _ in range(20):
        time.sleep(0.1)
        now = _memory(probe)
        if now == last:
            return now
        last = now
    return last


def key_shape(key: str) -> str:
    """A key with its ids and sids replaced, so that keys of one kind group together."""
    key = _SID.sub("<sid>", key)
    key = _HEX.sub(lambda m: "N" if m.group().isdigit() else "<hex>", key)
    return _NUMBER.sub("N", key)


def breakdown(probe: RedisProbe) -> list[dict[str, Any]]:
    """Keys grouped by shape: how many, and sampled bytes and encoding of each group."""
    admin = probe.admin
    groups: dict[str, list[str]] = {}
    for key in admin.scan_iter(count=1000):  # our own server: a full SCAN is fine
        groups.setdefault(key_shape(key), []).append(key)
    rows = []
    for shape, keys in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        sample = keys[:: max(1, len(keys) // SAMPLE)][:SAMPLE]
        pipe = admin.pipeline(transaction=False)
        for key in sample:
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
            pipe.type(key)
        replies = pipe.execute()
        sizes = [int(x or 0) for x in replies[::3]]
        encodings = sorted(set(replies[1::3]))
        rows.append(
            {
                "key": shape,
                "count": len(keys),
                "type": replies[2],
                "encoding": ",".join(encodings),
                "avg_bytes": round(sum(sizes) / len(sizes)),
                "total_bytes_estimate": round(sum(sizes) / len(sizes) * len(keys)),
            }
        )
    return rows


async def _ours(n: int) -> dict[str, Any]:
    with RedisServer() as server:
        probe = RedisProbe(server)
        client = async_client(server, Counter(), max_connections=64)
        sockets = AsyncRecordingSockets()
        store = AsyncRedisStore(client)
        kit = AsyncPresenceKit(sockets=sockets, store=store)
        conns = connections(TEACHER_APP, n, 0, orgs=ORGS)
        second = [Conn(new_sid(), c.session) for c in conns]
        warm = connections(TEACHER_APP, 2 * CONCURRENCY, 10**6, orgs=1)
        sockets.connected.update(c.sid for c in [*conns, *second, *warm])
        try:
            # Load the scripts, open the pool and register the node first (users of
            # another organisation): none of that is per teacher.
            # The warm-up runs at the measured concurrency, so every pooled connection
            # (and its server-side buffers) exists before the baseline is read.
            await prewarm_async(store.client, CONCURRENCY)
            await burst(lambda c: kit.handle_connect(c.sid, c.session), warm, CONCURRENCY)
            await burst(
                lambda c: kit.handle_disconnect(c.sid, c.session, reason=REASON),
                warm,
                CONCURRENCY,
            )
            # Each step is read as a difference of settled readings around it alone, so
            # the breakdowns' own client buffers are never billed to a step.
            base = await asyncio.to_thread(_settle, probe)
            await burst(lambda c: kit.handle_connect(c.sid, c.session), conns, CONCURRENCY)
            online = await asyncio.to_thread(_settle, probe) - base
            online_keys = await asyncio.to_thread(breakdown, probe)
            base = await asyncio.to_thread(_settle, probe)
            await burst(lambda c: kit.handle_connect(c.sid, c.session), second, CONCURRENCY)
            extra = await asyncio.to_thread(_settle, probe) - base
            two_keys = await asyncio.to_thread(breakdown, probe)
            base = await asyncio.to_thread(_settle, probe)
            both = [*conns, *second]
            await burst(
                lambda c: kit.handle_disconnect(c.sid, c.session, reason=REASON), both, CONCURRENCY
            )
            offline = online + extra + await asyncio.to_thread(_settle, probe) - base
            offline_keys = await asyncio.to_thread(breakdown, probe)
            failures = kit.stats.store_failures
        finally:
            await kit.aclose()
            await client.aclose()
    if failures:
        raise BenchError(f"memory: {failures} store failure(s)")
    return {
        "teachers": n,
        "per_online_teacher_bytes": round(online / n, 1),
        "per_extra_connection_bytes": round(extra / n, 1),
        "per_offline_teacher_bytes": round(offline / n, 1),
        "keys_online": online_keys,
        "keys_two_connections": two_keys,
        "keys_offline": offline_keys,
    }


def _bare(n: int) -> dict[str, Any]:
    with RedisServer() as server:
        probe = RedisProbe(server)
        base = _settle(probe)
        pipe = probe.admin.pipeline(transaction=False)
        for i in range(n):
            pipe.hset(alive_key(i % ORGS + 1, i), "state", "connect")
        pipe.execute()
        online = _settle(probe)
        keys = breakdown(probe)
    return {"per_online_teacher_bytes": round((online - base) / n, 1), "keys": keys}


def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    n = cfg.memory_teachers
    ours = asyncio.run(_ours(n))
    bare = _bare(n)
    per = ours["per_online_teacher_bytes"]
    log(f"  m4 memory: {time.perf_counter() - started:.1f}s")
    return {
        "teachers": n,
        "organisations": ORGS,
        "ours": ours,
        "spec_bare_alive_hash": bare,
        "ratio_vs_bare": round(per / bare["per_online_teacher_bytes"], 2),
        "target_at_most_400_bytes": per <= 400,
        "seconds": round(time.perf_counter() - started, 1),
    }
