"""The embedded in-process store: the same semantics as Redis, for one process.

:class:`MemoryStore` is the default store of both facades, the store of the demo, and
a convenient store for integrators' own tests. It keeps the same keys, values and
TTLs as :class:`~presence_kit.redis.RedisStore` (so the demo shows what Redis would
hold), is thread-safe, and never blocks, so :class:`~presence_kit.AsyncPresenceKit`
can call it from the event loop. It is not shared between processes: a multi-node
deployment needs Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._model import (
    ConnectionRecord,
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Entry:
    value: dict[str, str] | str
    expires_at: float | None = None


class MemoryStore:
    """A thread-safe, in-memory presence store with Redis's semantics.

    ``clock`` (seconds since the epoch) is injectable so tests can move time forward.
    """

    blocking = False
    """Calls never block, so the asyncio facade may call them from the event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # --- the Store port -------------------------------------------------------------

    def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection atomically (see :class:`~presence_kit.ConnectRequest`)."""
        with self._lock:
            now = self._clock()
            layout = request.layout
            conns = self._hash(request.connections_key, now)
            if self._get(request.tombstone_key, now) is not None:
                return ConnectOutcome(
                    status=ConnectStatus.STALE,
                    first=False,
                    connections=len(conns or {}),
                    version=0,
                    at=now,
                )
            if conns is not None and request.sid in conns:
                return ConnectOutcome(
                    status=ConnectStatus.REPEAT,
                    first=len(conns) == 1,
                    connections=len(conns),
                    version=self._version(request.alive_key, now) if request.tracks_alive else 0,
                    at=now,
                )
            if conns is None:
                conns = {}
            conns[request.sid] = request.record.to_json()
            self._keys[request.connections_key] = _Entry(conns, now + layout.connection_ttl)
            first = len(conns) == 1
            version = 0
            if request.tracks_alive:
                alive = self._hash(request.alive_key, now) or {}
                if first:
                    version = int(alive.get("version", "0")) + 1
                    alive["version"] = str(version)
                    alive["since"] = str(int(now * 1000))
                else:
                    version = int(alive.get("version", "0"))
                alive[layout.state_field] = layout.connect_state
                self._keys[request.alive_key] = _Entry(alive, None)
            return ConnectOutcome(
                status=ConnectStatus.NEW,
                first=first,
                connections=len(conns),
                version=version,
                at=now,
            )

    def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection atomically (see :class:`~presence_kit.DisconnectRequest`)."""
        with self._lock:
            now = self._clock()
            layout = request.layout
            done = self._get(request.tombstone_key, now)
            if isinstance(done, str):
                was_last, was_version, was_at_ms, was_record = done.split(":", 3)
                return DisconnectOutcome(
                    status=DisconnectStatus.REPEAT,
                    last=was_last == "1",
                    record=ConnectionRecord.from_json(was_record),
                    version=int(was_version),
                    at=int(was_at_ms) / 1000,
                )
            conns = self._hash(request.connections_key, now)
            if conns is None or request.sid not in conns:
                return DisconnectOutcome(
                    status=DisconnectStatus.UNKNOWN, last=False, record=None, version=0, at=now
                )
            record = conns.pop(request.sid)
            if not conns:
                del self._keys[request.connections_key]
            last = not conns
            version = 0
            if request.tracks_alive:
                alive = self._hash(request.alive_key, now) or {}
                version = int(alive.get("version", "0"))
                if last:
                    version += 1
                    alive.update(
                        {
                            "version": str(version),
                            layout.state_field: layout.disconnect_state,
                            "reason": request.reason,
                            "since": str(int(now * 1000)),
                        }
                    )
                    self._keys[request.alive_key] = _Entry(alive, now + layout.offline_ttl)
            at_ms = int(now * 1000)
            self._keys[request.tombstone_key] = _Entry(
                f"{int(last)}:{version}:{at_ms}:{record}", now + layout.tombstone_ttl
            )
            return DisconnectOutcome(
                status=DisconnectStatus.REMOVED,
                last=last,
                record=ConnectionRecord.from_json(record),
                version=version,
                at=at_ms / 1000,
            )

    def close(self) -> None:
        """Nothing to release (the data stays readable)."""

    # --- inspection (demo, tests) ---------------------------------------------------

    def keys(self) -> list[str]:
        """Every live key, sorted."""
        with self._lock:
            now = self._clock()
            return sorted(k for k in list(self._keys) if self._live(k, now) is not None)

    def hgetall(self, key: str) -> dict[str, str]:
        """A hash's fields (``{}`` when missing), like Redis ``HGETALL``."""
        with self._lock:
            return dict(self._hash(key, self._clock()) or {})

    def get(self, key: str) -> str | None:
        """A string's value, like Redis ``GET``."""
        with self._lock:
            value = self._get(key, self._clock())
            return value if isinstance(value, str) else None

    def ttl(self, key: str) -> int:
        """Seconds to live, like Redis ``TTL``: -1 without expiry, -2 when missing."""
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                return -2
            if entry.expires_at is None:
                return -1
            return max(0, round(entry.expires_at - now))

    # --- internals ------------------------------------------------------------------

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._keys.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self._keys[key]
            return None
        return entry

    def _hash(self, key: str, now: float) -> dict[str, str] | None:
        entry = self._live(key, now)
        return entry.value if entry is not None and isinstance(entry.value, dict) else None

    def _get(self, key: str, now: float) -> dict[str, str] | str | None:
        entry = self._live(key, now)
        return entry.value if entry is not None else None

    def _version(self, key: str, now: float) -> int:
        return int((self._hash(key, now) or {}).get("version", "0"))
