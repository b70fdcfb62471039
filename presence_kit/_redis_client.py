"""The Redis stores' own clients: a pool built from the integrator's client, with the
handler's deadline and no retries.

Same server, credentials, TLS and protocol as the client given; ``timeout`` as socket
and connect timeout; no redis-py retries on the handler's path; at most
``max_connections`` connections (:data:`DEFAULT_MAX_CONNECTIONS` unless said). For a
Sentinel-managed client, a Sentinel pool of the store's own that follows failovers; for
asyncio connections, commands packed by hiredis's C packer when it is installed. The
stores in :mod:`presence_kit.redis` use these and own (and close) what they return.
"""

from __future__ import annotations

import codecs
import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncWire",
    "SyncClient",
    "Wire",
    "async_close_own",
    "async_handler_client",
    "checkout_takes_name",
    "close_own",
    "handler_client",
    "lone_call_pool",
    "pool_size",
]

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

DEFAULT_TIMEOUT = 0.5
"""Seconds a handler waits for Redis before giving up (and carrying on without it)."""

DEFAULT_MAX_CONNECTIONS = 100
"""The most connections the store's own pool opens, unless ``max_connections`` says.

redis-py 8's default pool size; before 8 a pool's default is 2**31, which a blocking
pool would pre-allocate and a semaphore would not bound at all."""


_NO_RETRY_KWARGS: dict[str, Any] = {"retry_on_error": []}


def _deadline_kwargs(kwargs: dict[str, Any], timeout: float, retry: Any) -> dict[str, Any]:
    out = {k: v for k, v in kwargs.items() if k != "retry_on_timeout"}
    out.update(_NO_RETRY_KWARGS)
    out["socket_timeout"] = timeout
    out["socket_connect_timeout"] = timeout
    out["retry"] = retry
    return out


def pool_size(pool: Any, max_connections: int | None) -> int:
    """How many connections the store's own pool may open (at least 1)."""
    if max_connections is not None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, not {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        return max_connections
    given = getattr(pool, "max_connections", None)
    if not isinstance(given, int) or given < 1:
        return DEFAULT_MAX_CONNECTIONS
    return min(given, DEFAULT_MAX_CONNECTIONS)


def handler_client(
    client: SyncClient, timeout: float | None, max_connections: int | None
) -> tuple[SyncClient, bool]:
    """The client for handler calls, and whether we own it (and so close it)."""
    if timeout is None:
        return client, False
    no_retry = Retry(NoBackoff(), 0)
    if isinstance(client, redis.cluster.RedisCluster):
        # redis-py leaves these cluster methods unannotated.
        cluster: Any = client
        pool = cluster.get_default_node().redis_connection.connection_pool
        kwargs = _deadline_kwargs(pool.connection_kwargs, timeout, no_retry)
        for key in ("host", "port", "db"):  # the cluster client sets these itself
            kwargs.pop(key, None)
        if issubclass(pool.connection_class, redis.SSLConnection):
            kwargs["ssl"] = True
        node_class: Any = redis.cluster.ClusterNode
        nodes = [node_class(n.host, n.port) for n in cluster.get_nodes()]
        # A NAT's or a proxy's address map too: without it the store's client would
        # reach the nodes at the addresses they announce, not where the integrator's does.
        remap = getattr(cluster.nodes_manager, "address_remap", None)
        if remap is not None:
            kwargs["address_remap"] = remap
        return redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs), True
    pool = client.connection_pool
    kwargs = _deadline_kwargs(pool.connection_kwargs, timeout, no_retry)
    size = pool_size(pool, max_connections)
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        sentinel_pool: Any = _BlockingSentinelPool  # unannotated in redis-py
        own_sentinel_pool = sentinel_pool(
            pool.service_name,
            pool.sentinel_manager,
            connection_class=pool.connection_class,
            max_connections=size,
            timeout=timeout,
            **_sentinel_pool_kwargs(pool, kwargs),
        )
        return redis.Redis(connection_pool=own_sentinel_pool), True
    # Blocking: a burst of handlers beyond max_connections waits (within the deadline)
    # for a connection instead of failing at once with MaxConnectionsError.
    blocking_pool: Any = redis.BlockingConnectionPool  # unannotated in redis-py
    own_pool = blocking_pool(
        connection_class=pool.connection_class,
        max_connections=size,
        timeout=timeout,
        **kwargs,
    )
    return redis.Redis(connection_pool=own_pool), True


# Sentinel (``Sentinel.master_for``): the client's pool asks the sentinels for the
# master's address at each (re)connect and, when it has changed, drops its idle
# connections. A copy of its connection kwargs would carry the client pool's own
# ``connection_pool`` back-reference, so the store's connections would report to (and
# flush the idle connections of) the integrator's pool, and the store's idle connections
# would stay pinned to the old master after a failover. The store's pool is therefore a
# Sentinel pool of its own: same service, sentinel manager and role, our deadlines.
# Master discovery runs on the handler's path, bounded by the sentinel clients' own
# ``socket_timeout`` (``Sentinel(..., sentinel_kwargs=...)``), which only the integrator
# can set.


def _sentinel_pool_kwargs(pool: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs of a Sentinel pool like ``pool`` (its back-reference left out)."""
    out = {k: v for k, v in kwargs.items() if k != "connection_pool"}
    out["is_master"] = pool.is_master
    out["check_connection"] = pool.check_connection
    return out


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel pool that, like the store's plain one, waits (up to ``timeout``) for a
    free connection instead of failing at once when all are in use.

    Before redis-py 7 ``BlockingConnectionPool.disconnect`` takes no
    ``inuse_connections``, which the Sentinel pool passes when the master changes, so
    that case (drop the idle connections only) is done here on every version.
    """

    def disconnect(self, inuse_connections: bool = True) -> None:
        if inuse_connections:
            super().disconnect()
            return
        with self.pool.mutex:  # the idle connections are those in the queue
            idle = [connection for connection in self.pool.queue if connection is not None]
        for connection in idle:
            connection.disconnect()


def async_handler_client(
    client: AsyncClient, timeout: float | None, max_connections: int | None
) -> tuple[AsyncClient, bool]:
    """As :func:`handler_client`; an asyncio cluster client is used as given."""
    if timeout is None or isinstance(client, redis.asyncio.cluster.RedisCluster):
        return client, False
    from redis.asyncio.retry import Retry as AsyncRetry

    pool = client.connection_pool
    kwargs = _deadline_kwargs(pool.connection_kwargs, timeout, AsyncRetry(NoBackoff(), 0))
    connection_class = _hiredis_packing(pool.connection_class, kwargs)
    size = pool_size(pool, max_connections)
    # Plain pool (cheaper per command than the blocking one); the store's semaphore
    # makes a burst beyond max_connections wait for a connection instead of failing.
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        # A Sentinel pool of the store's own (see the comment above _sentinel_pool_kwargs).
        sentinel_pool: Any = redis.asyncio.sentinel.SentinelConnectionPool  # unannotated
        own_pool: redis.asyncio.ConnectionPool = sentinel_pool(
            pool.service_name,
            pool.sentinel_manager,
            connection_class=connection_class,
            max_connections=size,
            **_sentinel_pool_kwargs(pool, kwargs),
        )
    else:
        own_pool = redis.asyncio.ConnectionPool(
            connection_class=connection_class, max_connections=size, **kwargs
        )
    return redis.asyncio.Redis(connection_pool=own_pool), True


def _hiredis_packing(connection_class: Any, kwargs: dict[str, Any]) -> Any:
    """``connection_class`` packing commands with hiredis's C packer, when installed.

    redis-py's blocking connections pack with hiredis already; its asyncio ones pack in
    Python, one argument at a time, which was the largest client-side cost of a burst
    (about 15 µs per EVALSHA of ours, against 2). The same packer as the blocking
    connections', so the bytes on the wire are the same. Left as is for an encoding
    other than strict UTF-8 (hiredis's) or a class that packs on its own.
    """
    serializer_class = getattr(redis.connection, "HiredisRespSerializer", None)
    base_pack = redis.asyncio.connection.AbstractConnection.pack_command
    if (
        not HIREDIS_AVAILABLE
        or serializer_class is None
        or getattr(connection_class, "pack_command", None) is not base_pack
        or codecs.lookup(kwargs.get("encoding", "utf-8")).name != "utf-8"
        or kwargs.get("encoding_errors", "strict") != "strict"
    ):
        return connection_class
    import hiredis

    serializer = serializer_class()

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if type(args[0]) is str and " " not in args[0]:  # ours: str, int and bytes only
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        packed: list[bytes] = serializer.pack(*args)  # its checks and errors
        return packed

    return type(connection_class.__name__, (connection_class,), {"pack_command": pack_command})


# --- the connection kept for lone calls -------------------------------------------
# The kept connection itself is written once (presence_kit/_async/redis_connection.py);
# what differs between redis-py's blocking and asyncio connections is here, one class
# per side: :class:`AsyncWire` and :class:`Wire`.


_RECONNECT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
"""What the pool's check of a connection it hands out recovers from by reconnecting."""


def lone_call_pool(client: Any, owned: bool) -> Any:
    """The store's own pool if it can spare a connection for lone calls, else ``None``.

    Only a pool the store built (never the integrator's) and of at least two
    connections: the kept one counts against ``max_connections``, and the pipelines,
    heartbeats and sweeps share the rest."""
    pool = getattr(client, "connection_pool", None)
    if not owned or pool is None:
        return None
    size = getattr(pool, "max_connections", None)
    return pool if isinstance(size, int) and size >= 2 else None


def checkout_takes_name(pool: Any) -> bool:
    """Before redis-py 5.3 ``get_connection`` requires a command name; later ones
    deprecate passing it."""
    parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _hiredis_packer(pool: Any) -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's ``pack_command`` if the pool's blocking connections pack with it
    (redis-py does whenever hiredis is installed, unless a ``command_packer`` is given
    or the class packs or sends its own way, or a client-side cache wraps it): then our
    arguments (``str`` and ``int`` only) are packed by it directly, skipping
    redis-py's per-argument pass that only converts ``bytearray`` and ``memoryview``."""
    base = redis.connection.AbstractConnection
    cls = pool.connection_class
    if not (
        getattr(redis.utils, "HIREDIS_PACK_AVAILABLE", HIREDIS_AVAILABLE)
        and pool.connection_kwargs.get("command_packer") is None
        and getattr(cls, "pack_command", None) is base.pack_command
        and getattr(cls, "send_command", None) is base.send_command
        and getattr(pool, "cache", None) is None
    ):
        return None
    import hiredis

    pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
    return pack


def _can_read(connection_class: Any) -> Callable[[Any], Awaitable[bool]]:
    """An asyncio connection's check for unread data or a closed socket: ``can_read``
    from redis-py 8, ``can_read_destructive`` before."""
    check: Callable[[Any], Awaitable[bool]] = (
        getattr(connection_class, "can_read", None) or connection_class.can_read_destructive
    )
    return check


class AsyncWire:
    """How the kept connection talks to one of an asyncio pool's connections."""

    __slots__ = ("_can_read",)

    def __init__(self, pool: Any) -> None:
        self._can_read = _can_read(pool.connection_class)

    def ours(self, connection: Any) -> bool:
        """The connection may be used by this process (asyncio: always)."""
        return True

    async def call(self, connection: Any, args: tuple[Any, ...], fresh: bool) -> Any:
        """One command's reply on ``connection`` (an error reply raised).

        A connection not ``fresh`` from the pool is checked first, as the pool checks
        one it hands out (also where redis-py 8's pool skips it, with maintenance
        notifications on): a connection Redis closed while idle is replaced before the
        call instead of failing it. A failed call closes the connection, as the client
        does; the next one reconnects."""
        if not fresh:
            await connection.connect()  # at once when connected
            try:
                stale = await self._can_read(connection)
            except _RECONNECT:
                stale = True
            if stale:
                await connection.disconnect()
                await connection.connect()
        try:
            await connection.send_command(*args)  # the store's pool packs with hiredis
            return await connection.read_response()
        except redis.exceptions.ResponseError:
            raise  # an error reply: the connection is in step
        except BaseException:
            await connection.disconnect(nowait=True)
            raise


class Wire:
    """How the kept connection talks to one of a blocking pool's connections: checked
    as the pool checks one it hands out; a forked child takes its own; commands packed
    by hiredis directly when the pool's connections would pack with it."""

    __slots__ = ("_pack",)

    def __init__(self, pool: Any) -> None:
        self._pack = _hiredis_packer(pool)

    def ours(self, connection: Any) -> bool:
        """The connection was opened by this process (not inherited through a fork)."""
        return bool(connection.pid == os.getpid())

    def call(self, connection: Any, args: tuple[Any, ...], fresh: bool) -> Any:
        """As :meth:`AsyncWire.call` (hiredis's packer, as send_command's, without its
        copy; a Sentinel's client would not close a failed connection: this does)."""
        if not fresh:
            connection.connect()  # at once when connected
            try:
                stale = connection.can_read()
            except _RECONNECT:
                stale = True
            if stale:
                connection.disconnect()
                connection.connect()
        try:
            if self._pack is not None and " " not in args[0]:  # ("SCRIPT LOAD": split)
                connection.send_packed_command([self._pack(args)])
            else:
                connection.send_command(*args)
            return connection.read_response()
        except redis.exceptions.ResponseError:
            raise
        except BaseException:
            connection.disconnect()
            raise


async def async_close_own(client: AsyncClient) -> None:
    """Close a client the store built, and its pool (redis-py leaves a pool that was
    passed in open when its client closes). Owned asyncio clients are never clusters."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        await pool.disconnect()


def close_own(client: SyncClient) -> None:
    """As :func:`async_close_own` (a blocking cluster client has no single pool)."""
    client.close()
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.disconnect()
