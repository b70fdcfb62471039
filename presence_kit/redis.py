"""Redis adapters: :class:`RedisStore` (redis-py, blocking) and :class:`AsyncRedisStore`.

Each connect and each disconnect is ONE round trip: an atomic Lua script (EVALSHA,
reloaded on NOSCRIPT, e.g. after a failover) over the keys of one user, which all
hash to one cluster slot. The scripts return only integers and strings, so RESP2 and
RESP3 and ``decode_responses`` on or off give the same results. Under a burst, the
calls made while another is in flight (by other tasks, or other threads) go out
together: batched EVALSHAs (``lua/batch.lua``, up to 50 calls each) in
one pipeline, each call still atomic and failing on its own. Sweeps send their
disconnects the same way. Not on a cluster, where the calls' keys are in other slots.

The Redis logic is written once, for both stores: the scripts' calls and replies in
``_redis_scripts``, the operations (the cluster protocol included) in ``_redis_ops``,
the coalescing in ``_redis_coalesce`` and the store's own client in ``_redis_client``
(private modules; see the architecture page). The classes here are their port methods.

Handler calls must not stall a server: by default the store talks to Redis over a
connection pool of its own, built from the integrator's client (same server,
credentials, TLS, protocol), with ``timeout`` as socket deadline and no retries —
redis-py's own defaults (seconds of timeout, several retries) would otherwise apply on
the handler's path. Pass ``timeout=None`` to use the client exactly as given. That
pool opens at most ``max_connections`` connections (by default the client pool's size,
capped at :data:`DEFAULT_MAX_CONNECTIONS`); a burst beyond it waits for one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio.cluster
import redis.cluster

from . import _redis_client
from . import _redis_ops as ops
from ._keys import KeySchema
from ._model import (
    ConnectOutcome,
    ConnectRequest,
    DisconnectOutcome,
    DisconnectRequest,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    NodeInfo,
    OrgQuery,
    UserPresence,
)
from ._redis_client import (
    AsyncLoneCallConnection,
    LoneCallConnection,
    async_handler_client,
    lone_call_pool,
    pool_size,
    sync_handler_client,
)
from ._redis_coalesce import ScriptCall, TaskCoalescer, ThreadCoalescer, within
from ._redis_ops import FAILURES, run, run_async, store_error, store_errors
from ._redis_scripts import (
    Scripts,
    connect_call,
    connect_outcome,
    disconnect_call,
    disconnect_outcome,
)
from ._session import Id

__all__ = ["AsyncRedisStore", "RedisStore"]

SyncClient = _redis_client.SyncClient
AsyncClient = _redis_client.AsyncClient

DEFAULT_TIMEOUT = 0.5
"""Seconds a handler waits for Redis before giving up (and carrying on without it)."""

DEFAULT_MAX_CONNECTIONS = _redis_client.DEFAULT_MAX_CONNECTIONS
"""The most connections the store's own pool opens, unless ``max_connections`` says.

redis-py 8's default pool size; before 8 a pool's default is 2**31, which a blocking
pool would pre-allocate and a semaphore would not bound at all."""

_OPERATION_TIMEOUTS = 2
"""The bound on one whole operation, as a multiple of the store's ``timeout`` (if set).

The socket timeout bounds each read; an operation may also wait for a pooled
connection, reload its script on NOSCRIPT or follow a cluster redirection, each about
one more round trip. Twice the socket timeout leaves room for one such extra trip and
still ends a stuck call: it bounds :class:`AsyncRedisStore`'s operations, and how long
a :class:`RedisStore` call queued behind another thread's waits for its turn. (A lone
handler call of :class:`AsyncRedisStore` on its own pool, with a connection free, is
bounded by the socket timeout of each read and write instead: no timer per call.)"""

_SECONDS_PER_CALL = 0.001
"""Added to an operation's bound per script call it carries (a batch, a sweep): what
Redis may take to run one call."""


T = TypeVar("T")


class RedisStore:
    """Presence in Redis through a blocking redis-py client (``Redis`` or ``RedisCluster``).

    On a standalone Redis every operation is one script call; calls made by other
    threads while one is in flight share one round trip. On a cluster the org index
    lives in another slot than the user's keys: it is written before the script (so it
    is always a superset of the truth), cleaned after it, and verified lazily when read.
    """

    def __init__(
        self,
        client: SyncClient,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        self._client, self._owned = sync_handler_client(client, timeout, max_connections)
        self._cluster = isinstance(self._client, redis.cluster.RedisCluster)
        lone_pool = lone_call_pool(self._client, self._owned and not self._cluster)
        # Lone calls (the coalescer sends one at a time) skip the pool checkout.
        self._lone = None if lone_pool is None else LoneCallConnection(lone_pool)
        self._scripts = Scripts(self._client.register_script)
        self._coalescer = ThreadCoalescer(
            self._send_one,
            self._send_batch,
            turn_timeout=None if timeout is None else timeout * _OPERATION_TIMEOUTS,
        )

    @property
    def client(self) -> SyncClient:
        """The client the store's handler calls use."""
        return self._client

    @property
    def sending(self) -> bool:
        """A thread is sending handler calls to Redis now (calls of others queue)."""
        return self._coalescer.sending

    @property
    def queued(self) -> int:
        """Handler calls queued behind the sending thread (sent together next)."""
        return self._coalescer.queued

    def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        if self._cluster:
            return self._run("connect", ops.cluster_connect(self._scripts, request))
        call = (self._scripts.connect, connect_call(request, local_index=True))
        return connect_outcome(self._coalesced("connect", call))

    def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        if self._cluster:
            return self._run("disconnect", ops.cluster_disconnect(self._scripts, request))
        call = (self._scripts.disconnect, disconnect_call(request, local_index=True))
        return disconnect_outcome(request.sid, self._coalesced("disconnect", call))

    def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Members of the leave queue whose grace has ended (by the Redis clock)."""
        return self._run("due_leaves", ops.due_leaves(self._scripts, queue_key, limit))

    def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due; exactly one caller gets its outcome."""
        op = ops.finish_leave(self._scripts, request, cluster=self._cluster)
        return self._run("finish_leave", op)

    def presence(self, alive_key: str, connections_key: str, state_field: str) -> UserPresence:
        """A (user, role)'s alive hash and connection records (one round trip)."""
        return self._run("presence", ops.presence(alive_key, connections_key, state_field))

    def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's connections in a role."""
        return self._run("org_connections", ops.org_connections(query, cluster=self._cluster))

    def disconnect_many(self, requests: Sequence[DisconnectRequest]) -> list[DisconnectOutcome]:
        """Many disconnects (a sweep): one pipelined round trip on a standalone Redis."""
        if self._cluster:
            return [self.disconnect(request) for request in requests]
        return self._run("disconnect_many", ops.disconnect_many(self._scripts, requests))

    def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp this node incarnation alive; ``False`` when it was fenced (swept)."""
        return self._run("heartbeat", ops.heartbeat(self._scripts, call))

    def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep (or a stale claim), if any."""
        op = ops.claim_node(self._scripts, keys, timeout_ms, claim_ttl_ms)
        return self._run("claim_node", op)

    def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index (one pipelined round trip)."""
        return self._run("node_connections", ops.node_connections(index_keys))

    def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend this sweeper's claim on ``member`` (between batches)."""
        self._run("renew_claim", ops.renew_claim(self._scripts, keys, member, claim_ttl_ms))

    def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation (its index must be empty)."""
        self._run("release_node", ops.release_node(keys, member))

    def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation, for operators (two round trips)."""
        return self._run("nodes", ops.nodes(keys))

    def close(self) -> None:
        """Close the store's own connection pool (never the integrator's client).

        redis-py leaves a pool that was passed in open when its client closes, so the
        pool the store built is disconnected here, on every redis-py version."""
        if self._owned:
            if self._lone is not None:
                self._lone.close()
            self._client.close()
            pool = getattr(self._client, "connection_pool", None)  # none on a cluster
            if pool is not None:
                pool.disconnect()

    def _run(self, operation: str, op: ops.Op[T]) -> T:
        with store_errors(operation):
            return run(self._client, op)

    def _coalesced(self, operation: str, call: ScriptCall) -> Any:
        try:
            return self._coalescer.call(call)
        except Exception as exc:
            raise store_error(operation, exc) from exc

    def _send_one(self, call: ScriptCall) -> Any:
        script, (keys, args) = call
        client = self._client if self._lone is None else self._lone
        return run(client, ops.script_call(script, keys, args))

    def _send_batch(self, calls: list[ScriptCall]) -> list[Any]:
        return run(self._client, ops.batch_replies(self._scripts, calls))


class AsyncRedisStore:
    """Presence in Redis through ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``.

    The same semantics as :class:`RedisStore`; each call is bounded by ``timeout``.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        self._client, self._owned = async_handler_client(client, timeout, max_connections)
        self._cluster = isinstance(self._client, redis.asyncio.cluster.RedisCluster)
        self._timeout = timeout
        pool: Any = getattr(self._client, "connection_pool", None)
        lone_pool = lone_call_pool(self._client, self._owned and not self._cluster)
        self._lone = None if lone_pool is None else AsyncLoneCallConnection(lone_pool)
        # Calls in flight at once, besides a lone call on its kept connection: never
        # more than the pool holds (a burst waits).
        size = pool_size(pool, max_connections)
        self._slots = asyncio.Semaphore(size if self._lone is None else size - 1)
        self._scripts = Scripts(self._client.register_script)
        self._coalescer = TaskCoalescer(self._send_one, self._send_batch, self._deadline)

    @property
    def client(self) -> AsyncClient:
        """The client the store's handler calls use."""
        return self._client

    async def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        if self._cluster:
            return await self._run("connect", ops.cluster_connect(self._scripts, request))
        call = (self._scripts.connect, connect_call(request, local_index=True))
        return connect_outcome(await self._coalescer.call("connect", call))

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        if self._cluster:
            return await self._run("disconnect", ops.cluster_disconnect(self._scripts, request))
        call = (self._scripts.disconnect, disconnect_call(request, local_index=True))
        return disconnect_outcome(request.sid, await self._coalescer.call("disconnect", call))

    async def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Members of the leave queue whose grace has ended (by the Redis clock)."""
        return await self._run("due_leaves", ops.due_leaves(self._scripts, queue_key, limit))

    async def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due; exactly one caller gets its outcome."""
        op = ops.finish_leave(self._scripts, request, cluster=self._cluster)
        return await self._run("finish_leave", op)

    async def presence(
        self, alive_key: str, connections_key: str, state_field: str
    ) -> UserPresence:
        """A (user, role)'s alive hash and connection records (one round trip)."""
        op = ops.presence(alive_key, connections_key, state_field)
        return await self._run("presence", op)

    async def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's connections in a role."""
        op = ops.org_connections(query, cluster=self._cluster)
        return await self._run("org_connections", op)

    async def disconnect_many(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        """Many disconnects (a sweep): one pipelined round trip on a standalone Redis."""
        if self._cluster:
            return list(await asyncio.gather(*(self.disconnect(r) for r in requests)))
        op = ops.disconnect_many(self._scripts, requests)
        return await self._run("disconnect_many", op, scale=len(requests))

    async def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp this node incarnation alive; ``False`` when it was fenced (swept)."""
        return await self._run("heartbeat", ops.heartbeat(self._scripts, call))

    async def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep (or a stale claim), if any."""
        op = ops.claim_node(self._scripts, keys, timeout_ms, claim_ttl_ms)
        return await self._run("claim_node", op)

    async def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index (one pipelined round trip)."""
        op = ops.node_connections(index_keys)
        return await self._run("node_connections", op, scale=len(index_keys))

    async def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend this sweeper's claim on ``member`` (between batches)."""
        op = ops.renew_claim(self._scripts, keys, member, claim_ttl_ms)
        await self._run("renew_claim", op)

    async def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation (its index must be empty)."""
        await self._run("release_node", ops.release_node(keys, member))

    async def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation, for operators (two round trips)."""
        return await self._run("nodes", ops.nodes(keys))

    async def aclose(self) -> None:
        """Close the store's own connection pool (never the integrator's client).

        As :meth:`RedisStore.close`: the pool the store built is disconnected too."""
        if self._owned:
            if self._lone is not None:
                await self._lone.aclose()
            client: Any = self._client  # owned: a redis.asyncio.Redis (never a cluster)
            await client.aclose()
            await client.connection_pool.disconnect()

    def _deadline(self, calls: int) -> float | None:
        """The bound on an operation that carries ``calls`` script calls."""
        if self._timeout is None:
            return None
        return self._timeout * _OPERATION_TIMEOUTS + calls * _SECONDS_PER_CALL

    async def _run(self, operation: str, op: ops.Op[T], scale: int = 1) -> T:
        return await self._bounded(operation, run_async(self._client, op), scale)

    def _send_one(self, operation: str, call: ScriptCall) -> Awaitable[Any]:
        lone = self._lone
        # Busy only if a caller held a lone call unawaited: then this one takes the pool.
        if lone is not None and not lone.busy:
            return self._lone_call(operation, lone, call)  # awaited at once: busy first
        script, (keys, args) = call
        sent = run_async(self._client, ops.script_call(script, keys, args))
        return self._bounded(operation, sent)

    async def _lone_call(
        self, operation: str, lone: AsyncLoneCallConnection, call: ScriptCall
    ) -> Any:
        """A lone script call on the store's kept connection: each of its reads and
        writes is bounded by the pool's socket timeout (redis-py arms it), so it needs
        no pool slot and no deadline timer of ours (the handler's hot path)."""
        script, (keys, args) = call
        lone.busy = True
        try:
            return await run_async(lone, ops.script_call(script, keys, args))
        except FAILURES as exc:
            raise store_error(operation, exc) from exc
        finally:
            lone.busy = False

    def _send_batch(self, calls: list[ScriptCall]) -> Awaitable[list[Any]]:
        return self._limited(run_async(self._client, ops.batch_replies(self._scripts, calls)))

    async def _limited(self, call: Awaitable[T]) -> T:
        try:
            await self._slots.acquire()
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()  # timed out waiting for a connection: it never ran
            raise
        try:
            return await call
        finally:
            self._slots.release()

    async def _bounded(self, operation: str, call: Awaitable[T], scale: int = 1) -> T:
        # The socket timeout bounds each read; this bounds the whole operation (waiting
        # for a connection, NOSCRIPT reload, cluster redirections), cluster clients too.
        try:
            return await within(self._deadline(scale), self._limited(call))
        except FAILURES as exc:
            raise store_error(operation, exc) from exc
