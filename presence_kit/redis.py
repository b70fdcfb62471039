"""Redis adapters: :class:`RedisStore` (redis-py, blocking) and :class:`AsyncRedisStore`.

Each connect and each disconnect is ONE round trip: an atomic Lua script (EVALSHA,
reloaded on NOSCRIPT, e.g. after a failover) over the keys of one user, which all
hash to one cluster slot. The scripts return only integers and strings, so RESP2 and
RESP3 and ``decode_responses`` on or off give the same results.

Handler calls must not stall a server: by default the store talks to Redis over a
connection pool of its own, built from the integrator's client (same server,
credentials, TLS, protocol), with ``timeout`` as socket deadline and no retries —
redis-py's own defaults (seconds of timeout, several retries) would otherwise apply on
the handler's path. Pass ``timeout=None`` to use the client exactly as given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ._errors import StoreError
from ._model import (
    ConnectionRecord,
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
)

__all__ = ["AsyncRedisStore", "RedisStore"]

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

DEFAULT_TIMEOUT = 0.5
"""Seconds a handler waits for Redis before giving up (and carrying on without it)."""

_CONNECT_LUA = resources.files(__package__).joinpath("lua/connect.lua").read_text()
_DISCONNECT_LUA = resources.files(__package__).joinpath("lua/disconnect.lua").read_text()


# --- script arguments and results (shared by both stores) ---------------------------


def _connect_args(r: ConnectRequest) -> tuple[list[str], list[str | int]]:
    keys = [r.alive_key, r.connections_key, r.tombstone_key]
    args: list[str | int] = [
        r.sid,
        r.record.to_json(),
        int(r.tracks_alive),
        r.layout.state_field,
        r.layout.connect_state,
        r.layout.connection_ttl,
    ]
    return keys, args


def _disconnect_args(r: DisconnectRequest) -> tuple[list[str], list[str | int]]:
    keys = [r.alive_key, r.connections_key, r.tombstone_key]
    args: list[str | int] = [
        r.sid,
        int(r.tracks_alive),
        r.layout.state_field,
        r.layout.disconnect_state,
        r.layout.offline_ttl,
        r.reason,
        r.layout.tombstone_ttl,
    ]
    return keys, args


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _connect_outcome(reply: Sequence[Any]) -> ConnectOutcome:
    status, first, connections, version, now_ms = reply
    return ConnectOutcome(
        status=ConnectStatus(_text(status)),
        first=int(first) == 1,
        connections=int(connections),
        version=int(version),
        at=int(now_ms) / 1000,
    )


def _disconnect_outcome(reply: Sequence[Any]) -> DisconnectOutcome:
    status, last, version, at_ms, record = reply
    record_text = _text(record)
    return DisconnectOutcome(
        status=DisconnectStatus(_text(status)),
        last=int(last) == 1,
        record=ConnectionRecord.from_json(record_text) if record_text else None,
        version=int(version),
        at=int(at_ms) / 1000,
    )


# --- clients with a deadline ---------------------------------------------------------

_NO_RETRY_KWARGS: dict[str, Any] = {"retry_on_error": [], "retry_on_timeout": False}


def _deadline_kwargs(kwargs: dict[str, Any], timeout: float, retry: Any) -> dict[str, Any]:
    out = dict(kwargs)
    out.update(_NO_RETRY_KWARGS)
    out["socket_timeout"] = timeout
    out["socket_connect_timeout"] = timeout
    out["retry"] = retry
    return out


def _sync_handler_client(client: SyncClient, timeout: float | None) -> tuple[SyncClient, bool]:
    """The client for handler calls, and whether we own it (and so close it)."""
    if timeout is None or isinstance(client, redis.cluster.RedisCluster):
        return client, False
    pool = client.connection_pool
    kwargs = _deadline_kwargs(pool.connection_kwargs, timeout, Retry(NoBackoff(), 0))
    own_pool = redis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **kwargs
    )
    return redis.Redis(connection_pool=own_pool), True


def _async_handler_client(client: AsyncClient, timeout: float | None) -> tuple[AsyncClient, bool]:
    if timeout is None or isinstance(client, redis.asyncio.cluster.RedisCluster):
        return client, False
    from redis.asyncio.retry import Retry as AsyncRetry

    pool = client.connection_pool
    kwargs = _deadline_kwargs(pool.connection_kwargs, timeout, AsyncRetry(NoBackoff(), 0))
    own_pool = redis.asyncio.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **kwargs
    )
    return redis.asyncio.Redis(connection_pool=own_pool), True


class RedisStore:
    """Presence in Redis through a blocking redis-py client (``Redis`` or ``RedisCluster``)."""

    def __init__(self, client: SyncClient, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._client, self._owned = _sync_handler_client(client, timeout)
        self._connect = self._client.register_script(_CONNECT_LUA)
        self._disconnect = self._client.register_script(_DISCONNECT_LUA)

    @property
    def client(self) -> SyncClient:
        """The client the store's handler calls use."""
        return self._client

    def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        keys, args = _connect_args(request)
        try:
            return _connect_outcome(self._connect(keys=keys, args=args))
        except RedisError as exc:
            raise StoreError(f"Redis failed during connect: {exc}") from exc

    def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        keys, args = _disconnect_args(request)
        try:
            return _disconnect_outcome(self._disconnect(keys=keys, args=args))
        except RedisError as exc:
            raise StoreError(f"Redis failed during disconnect: {exc}") from exc

    def close(self) -> None:
        """Close the store's own connection pool (never the integrator's client)."""
        if self._owned:
            self._client.close()


class AsyncRedisStore:
    """Presence in Redis through ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``."""

    def __init__(self, client: AsyncClient, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._client, self._owned = _async_handler_client(client, timeout)
        self._timeout = timeout
        self._connect = self._client.register_script(_CONNECT_LUA)
        self._disconnect = self._client.register_script(_DISCONNECT_LUA)

    @property
    def client(self) -> AsyncClient:
        """The client the store's handler calls use."""
        return self._client

    async def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        keys, args = _connect_args(request)
        try:
            reply = await self._deadline(self._connect(keys=keys, args=args))
            return _connect_outcome(reply)
        except (RedisError, TimeoutError) as exc:
            raise StoreError(f"Redis failed during connect: {exc!r}") from exc

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        keys, args = _disconnect_args(request)
        try:
            reply = await self._deadline(self._disconnect(keys=keys, args=args))
            return _disconnect_outcome(reply)
        except (RedisError, TimeoutError) as exc:
            raise StoreError(f"Redis failed during disconnect: {exc!r}") from exc

    async def _deadline(self, call: Any) -> Any:
        # The socket timeout bounds each read; this bounds the whole call (connect,
        # NOSCRIPT reload, reply), and also applies to cluster clients.
        if self._timeout is None:
            return await call
        return await asyncio.wait_for(call, self._timeout * 2)

    async def aclose(self) -> None:
        """Close the store's own connection pool (never the integrator's client)."""
        if self._owned:
            await self._client.aclose()
