"""What every measurement shares: counted Redis clients, server probes, statistics.

Round trips are counted on the client: every request redis-py writes to a socket goes
through ``Connection.send_packed_command`` exactly once (a pipeline writes all its
commands in one call), and each such write is awaited before the caller goes on. So
the number of calls is the number of network round trips, connection set-up included
(``HELLO`` when a pooled connection is first opened; the measurements warm their pools
up first). Redis-side work is read from the server: ``INFO commandstats`` (commands run
inside a Lua script are counted too) and ``INFO cpu``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import queue
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from presence_kit import Track
from tests.support.redis_servers import RedisServer

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

TEACHER_APP = "TeacherAPP"
TEACHER_HUB = "TeacherHub"
PARTICIPANT_WEB = "ParticipantWeb"
ROLES = (TEACHER_APP, PARTICIPANT_WEB, TEACHER_HUB)
OFFLINE_TTL = 3600  # the spec's 1 h
REASON = "transport close"


class BenchError(RuntimeError):
    """A run did not do what it must (a failure presence_kit swallowed, a wrong state)."""


# --- counting round trips ------------------------------------------------------------


class Counter:
    """A thread-safe counter (threads of the concurrent runs bump it together)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def bump(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


def counting_sync_connection(counter: Counter) -> type[redis.Connection]:
    """A ``redis.Connection`` class that counts each request it writes (one per round trip)."""

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter.bump()
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    return CountingConnection


def counting_async_connection(counter: Counter) -> type[redis.asyncio.Connection]:
    """The asyncio twin of :func:`counting_sync_connection`."""

    class CountingAsyncConnection(redis.asyncio.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter.bump()
            await super().send_packed_command(command, check_health)

    return CountingAsyncConnection


def sync_client(server: RedisServer, counter: Counter, **kwargs: Any) -> redis.Redis:
    """A plain redis-py client (redis-py's defaults) whose round trips are counted.

    ``kwargs`` go to the connection pool (``max_connections=...``). The caller closes it.
    """
    pool = redis.ConnectionPool(
        host=server.host,
        port=server.port,
        connection_class=counting_sync_connection(counter),
        **kwargs,
    )
    return redis.Redis(connection_pool=pool)


def async_client(server: RedisServer, counter: Counter, **kwargs: Any) -> redis.asyncio.Redis:
    """An asyncio client whose round trips are counted; the caller ``aclose()`` s it."""
    pool = redis.asyncio.ConnectionPool(
        host=server.host,
        port=server.port,
        connection_class=counting_async_connection(counter),
        **kwargs,
    )
    return redis.asyncio.Redis(connection_pool=pool)


def prewarm_sync(client: redis.Redis | redis.cluster.RedisCluster, n: int) -> None:
    """Open ``n`` pooled connections now, so that no timed run pays for opening one."""
    if not isinstance(client, redis.Redis):
        return
    pool = client.connection_pool
    opened = [pool.get_connection() for _ in range(n)]
    for conn in opened:
        pool.release(conn)


async def prewarm_async(
    client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster, n: int
) -> None:
    """The asyncio twin of :func:`prewarm_sync`."""
    if not isinstance(client, redis.asyncio.Redis):
        return
    pool = client.connection_pool
    opened = [await pool.get_connection() for _ in range(n)]  # type: ignore[no-untyped-call]
    for conn in opened:
        await pool.release(conn)


# --- the server side -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSample:
    """Cumulative counters of a redis-server at one moment."""

    commands: int
    """Commands executed (script-internal ones included), the probe's own left out."""
    cpu: float
    """Seconds of CPU the server process used (user + system)."""
    per_command: Mapping[str, int]
    usec: Mapping[str, int]
    """Microseconds Redis spent per command (a script's own commands are inside its
    ``evalsha`` time and counted again under their names)."""


_PROBE_COMMANDS = frozenset(
    {"info", "flushall", "flushdb", "config|set", "config|resetstat", "memory|usage"}
)


class RedisProbe:
    """Reads a benchmark server's counters over one long-lived admin connection."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._admin = server.client(decode_responses=True)

    def sample(self) -> ServerSample:
        info = self._admin.info("all")
        stats = {
            key.removeprefix("cmdstat_"): value
            for key, value in info.items()
            if key.startswith("cmdstat_") and key.removeprefix("cmdstat_") not in _PROBE_COMMANDS
        }
        per_command = {name: int(value["calls"]) for name, value in stats.items()}
        return ServerSample(
            commands=sum(per_command.values()),
            cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            per_command=per_command,
            usec={name: int(value["usec"]) for name, value in stats.items()},
        )

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: the server's command statistics start again from zero."""
        self._admin.config_resetstat()

    def flush(self) -> None:
        """Empty the server (our own): keys only, the script cache stays warm."""
        self._admin.flushall()

    def used_memory(self) -> int:
        return int(self._admin.info("memory")["used_memory"])

    @property
    def admin(self) -> redis.Redis:
        return self._admin


def command_delta(before: ServerSample, after: ServerSample) -> dict[str, int]:
    """Which commands ran between two samples, and how often."""
    out = {}
    for name, calls in after.per_command.items():
        delta = calls - before.per_command.get(name, 0)
        if delta:
            out[name] = delta
    return out


# --- sessions and fakes ----------------------------------------------------------------


def new_sid() -> str:
    """An engine.io-like sid: 20 characters of ``A-Z a-z 0-9 _ -``."""
    return secrets.token_urlsafe(15)


def session(role: str, user_id: int, *, orgs: int = 100) -> dict[str, Any]:
    """A session mapping as a server would keep it (``room_id`` for participants)."""
    out: dict[str, Any] = {
        "role": role,
        "org_id": user_id % orgs + 1,
        "user_id": user_id,
        "lesson_id": user_id % 1000 + 1,
    }
    if role == PARTICIPANT_WEB:
        out["room_id"] = user_id % 500 + 1
    return out


@dataclass(frozen=True)
class Conn:
    """One connection: its sid and the session the server keeps for it."""

    sid: str
    session: dict[str, Any]


def connections(role: str, n: int, first_user: int, *, orgs: int = 100) -> list[Conn]:
    """``n`` connections of distinct users (each connect and disconnect is a real transition)."""
    return [Conn(new_sid(), session(role, first_user + i, orgs=orgs)) for i in range(n)]


def alive_key(org_id: object, user_id: object) -> str:
    """The spec's alive key (the one name every variant writes alike)."""
    return f"alive:org_{org_id}_user_{user_id}"


def org_room(org_id: object) -> str:
    """presence_kit's default org room name; the baselines use the same names."""
    return f"org:{org_id}"


def lesson_room(lesson_id: object) -> str:
    return f"lesson:{lesson_id}"


class QueueAnalytics:
    """An :class:`~presence_kit.Analytics` that only enqueues (``SimpleQueue.put``).

    The per-event measurements give this to presence_kit and the same kind of queue to
    the baselines, whose "Mixpanel call" is an enqueue too: delivery is not on the
    handler's path in any of them. ``MixpanelAnalytics`` itself is measured in the
    event-loop-lag measurement.
    """

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def track(self, event: Track) -> None:
        self.queue.put(event)

    def close(self, timeout: float | None = None) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


# --- timing and statistics -------------------------------------------------------------


@dataclass
class Timed:
    """Wall and process-CPU seconds of a block."""

    wall: float = 0.0
    cpu: float = 0.0


async def burst(
    fn: Callable[[Conn], Awaitable[Any]], conns: Sequence[Conn], concurrency: int
) -> float:
    """Run ``fn`` over ``conns`` with at most ``concurrency`` in flight; the seconds it took."""
    items: Iterator[Conn] = iter(conns)

    async def worker() -> None:
        for c in items:
            await fn(c)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    """The median of some repetitions and their range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(median(values), min(values), max(values), len(values))

    def as_dict(self, digits: int = 3) -> dict[str, float | int]:
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
            "n": self.n,
        }


def paired_ratios(ours: Sequence[float], base: Sequence[float]) -> Spread:
    """Ratios of paired repetitions (round i of ours over round i of the baseline)."""
    return Spread.of([a / b for a, b in zip(ours, base, strict=True) if b > 0])


def paired_differences(ours: Sequence[float], base: Sequence[float]) -> Spread:
    return Spread.of([a - b for a, b in zip(ours, base, strict=True)])


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """``items`` rotated by ``shift``: round r runs the variants in a different order."""
    k = shift % len(items) if items else 0
    return [*items[k:], *items[:k]]


# --- the machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "missing"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return out.stdout.strip()


def _git_commit() -> str | None:
    """The checked-out commit (read-only: ``git rev-parse``)."""
    git = shutil.which("git")
    if git is None:
        return None
    out = subprocess.run(
        [git, "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or None


def package_fingerprint() -> str:
    """A hash of the measured package's sources (the tree may differ from the commit)."""
    digest = hashlib.sha256()
    root = REPO / "presence_kit"
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.lua")]):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    from redis.utils import HIREDIS_AVAILABLE

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": _redis_server_version(),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis") if HIREDIS_AVAILABLE else None,
        "python_socketio": _version("python-socketio"),
        "python_engineio": _version("python-engineio"),
        "aiohttp": _version("aiohttp"),
        "mixpanel": _version("mixpanel"),
        "presence_kit": _version("presence-kit"),
        "git_commit": _git_commit(),
        "package_sources_sha256": package_fingerprint(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "argv": sys.argv[1:],
    }
