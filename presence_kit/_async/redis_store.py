"""The Redis store of :class:`~presence_kit.AsyncPresenceKit`, written once.

``.ci/unasync.py`` makes :class:`~presence_kit.redis.RedisStore` of it. The
operations are :class:`~presence_kit._async.redis_ops.AsyncRedisOps`'; here are the
port methods, the store's own client and kept connection, the coalescing of handler
calls, the deadlines, and the one translation of every failure into a
:class:`~presence_kit.StoreError` (:meth:`AsyncRedisStore._run`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import ParamSpec, TypeVar

import redis.asyncio.cluster

from presence_kit._async.redis_connection import AsyncKeptConnection
from presence_kit._async.redis_ops import AsyncRedisOps, async_batch_replies, async_script_call
from presence_kit._errors import StoreError
from presence_kit._keys import KeySchema
from presence_kit._model import (
    ConnectOutcome,
    ConnectRequest,
    DisconnectOutcome,
    DisconnectRequest,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    NodeInfo,
    OnlineCount,
    OrgQuery,
    UpdateOutcome,
    UpdateRequest,
    UserPresence,
)
from presence_kit._redis_client import (
    DEFAULT_TIMEOUT,
    AsyncClient,
    async_close_own,
    async_handler_client,
    lone_call_pool,
    pool_size,
)
from presence_kit._redis_scripts import BATCH_CALLS
from presence_kit._redis_seam import PipelineReply, Reply, ScriptCall, store_error
from presence_kit._session import Id
from presence_kit._synchronization import (
    AsyncCoalescer,
    AsyncSlots,
    async_gather,
    async_within,
)

__all__ = ["AsyncRedisStore"]

T = TypeVar("T")
P = ParamSpec("P")

_OPERATION_TIMEOUTS = 2
"""The bound on one whole operation, as a multiple of the store's ``timeout`` (if set).

The socket timeout bounds each read; an operation may also wait for a pooled
connection, reload its script on NOSCRIPT or follow a cluster redirection, each about
one more round trip. Twice the socket timeout leaves room for one such extra trip and
still ends a stuck call: it bounds the asyncio store's operations, and how long a
blocking store's call queued behind another thread's waits for its turn. (A lone
handler call on the store's own pool, with a connection free, is bounded by the
socket timeout of each read and write instead: no timer per call.)"""

_SECONDS_PER_CALL = 0.001
"""Added to an operation's bound per script call it carries (a batch, a sweep): what
Redis may take to run one call."""


class AsyncRedisStore:
    """Presence in Redis through ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.

    On a standalone Redis every operation is one script call; calls made while one is
    in flight share one round trip. On a cluster the org index lives in another slot
    than the user's keys: it is written before the script (so it is always a superset
    of the truth), cleaned after it, and verified lazily when read. Every failure
    (Redis's, the connection's, a missed deadline, a reply of the wrong shape) is
    raised as a :class:`~presence_kit.StoreError`, its cause attached.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        self._client, self._owned = async_handler_client(client, timeout, max_connections)
        self._timeout = timeout
        cluster = isinstance(self._client, redis.asyncio.cluster.RedisCluster)
        lone_pool = lone_call_pool(self._client, self._owned and not cluster)
        # Lone calls (the coalescer sends one at a time) skip the pool checkout.
        self._lone = None if lone_pool is None else AsyncKeptConnection(lone_pool)
        # Calls in flight at once, besides a lone call on its kept connection: never
        # more than the pool holds (a burst waits).
        size = pool_size(getattr(self._client, "connection_pool", None), max_connections)
        self._slots = AsyncSlots(size if self._lone is None else size - 1)
        self._coalescer: AsyncCoalescer[ScriptCall, Reply] = AsyncCoalescer(
            self._send_one, self._send_batch, self._deadline, BATCH_CALLS
        )
        handler_script = None if cluster else self._coalescer.call
        self._ops = AsyncRedisOps(self._client, cluster=cluster, handler_script=handler_script)
        # A handler's call on a standalone Redis is bounded where it is sent (a lone
        # call by its socket timeout, a batch by the coalescer); on a cluster, whole.
        self._handler_calls: int | None = 1 if cluster else None

    @property
    def client(self) -> AsyncClient:
        """The client the store's handler calls use."""
        return self._client

    @property
    def sending(self) -> bool:
        """Handler calls are being sent to Redis now (calls made meanwhile queue)."""
        return self._coalescer.sending

    @property
    def queued(self) -> int:
        """Handler calls queued behind those being sent (sent together next)."""
        return self._coalescer.queued

    async def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        return await self._run("connect", self._handler_calls, self._ops.connect, request)

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        return await self._run("disconnect", self._handler_calls, self._ops.disconnect, request)

    async def update(self, request: UpdateRequest) -> UpdateOutcome:
        """Change a connection's lesson, room or meta: one atomic script call, idempotent
        per (sid, update), never bringing a connection back."""
        return await self._run("update", self._handler_calls, self._ops.update, request)

    async def count_online(self, query: OrgQuery, lesson: str | None) -> OnlineCount:
        """How many users (and connections) an org index holds, in one lesson if given:
        O(1), from the counts kept beside it."""
        return await self._run("count_online", 1, self._ops.count_online, query, lesson)

    async def rebuild_counts(self, query: OrgQuery) -> tuple[int, int, bool]:
        """Rebuild the counts of an org index from it (one atomic script):
        ``(connections, users, changed)``."""
        return await self._run("rebuild_counts", 1, self._ops.rebuild_counts, query)

    async def move_stale_feeds(
        self, keys: KeySchema, older_than_ms: int, retention_ms: int, limit: int = 100
    ) -> int:
        """Move the presence feed entries that a kit left queued on a Redis Cluster (it
        died between a user's script and the move); nothing to do on a standalone Redis,
        where the scripts write the stream themselves. How many entries were moved."""
        if self._handler_calls is None:
            return 0
        move = self._ops.move_stale_feeds
        pending = keys.feed_pending()
        return await self._run("feed", None, move, pending, older_than_ms, retention_ms, limit)

    async def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Members of the leave queue whose grace has ended (by the Redis clock)."""
        return await self._run("due_leaves", 1, self._ops.due_leaves, queue_key, limit)

    async def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due; exactly one caller gets its outcome."""
        return await self._run("finish_leave", 1, self._ops.finish_leave, request)

    async def presence(
        self, alive_key: str, connections_key: str, state_field: str
    ) -> UserPresence:
        """A (user, role)'s alive hash and connection records (one round trip)."""
        read = self._ops.presence
        return await self._run("presence", 1, read, alive_key, connections_key, state_field)

    async def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's connections in a role."""
        return await self._run("org_connections", 1, self._ops.org_connections, query)

    async def disconnect_many(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        """Many disconnects (a sweep): one pipelined round trip on a standalone Redis; on
        a cluster one call each, each on a pool slot within its own deadline."""
        if self._handler_calls is None:
            many = self._ops.disconnect_many
            return await self._run("disconnect_many", len(requests), many, requests)
        return await self._run("disconnect_many", None, self._each_disconnect, requests)

    async def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp this node incarnation alive; ``False`` when it was fenced (swept)."""
        return await self._run("heartbeat", 1, self._ops.heartbeat, call)

    async def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep (or a stale claim), if any."""
        claim = self._ops.claim_node
        return await self._run("claim_node", 1, claim, keys, timeout_ms, claim_ttl_ms)

    async def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index (one pipelined round trip)."""
        read = self._ops.node_connections
        return await self._run("node_connections", len(index_keys), read, index_keys)

    async def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend this sweeper's claim on ``member`` (between batches)."""
        await self._run("renew_claim", 1, self._ops.renew_claim, keys, member, claim_ttl_ms)

    async def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation (its index must be empty)."""
        await self._run("release_node", 1, self._ops.release_node, keys, member)

    async def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation, for operators (two round trips)."""
        return await self._run("nodes", 1, self._ops.nodes, keys)

    async def aclose(self) -> None:
        """Close the store's own connection pool (never the integrator's client).

        redis-py leaves a pool that was passed in open when its client closes, so the
        pool the store built is disconnected here, on every redis-py version."""
        if self._owned:
            if self._lone is not None:
                await self._lone.aclose()
            await async_close_own(self._client)

    # --- how calls reach Redis ------------------------------------------------------

    async def _run(
        self,
        operation: str,
        calls: int | None,
        fn: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn(*args)``, bounded by the deadline of ``calls`` script calls (``None``:
        bounded where it is sent); whatever fails is raised as a :class:`StoreError`.

        The one place a store translates failures: a Redis error, a connection reset, a
        missed deadline and a reply that is not what the operation reads all come out
        the same way, from both stores and every path a call takes."""
        try:
            if calls is None:
                return await fn(*args, **kwargs)
            return await self._bounded(calls, fn, *args, **kwargs)
        except StoreError:
            raise  # already ours (a reply's parser found a corrupt record)
        except Exception as exc:
            raise store_error(operation, exc) from exc

    def _deadline(self, calls: int) -> float | None:
        """The bound on an operation that carries ``calls`` script calls."""
        if self._timeout is None:
            return None
        return self._timeout * _OPERATION_TIMEOUTS + calls * _SECONDS_PER_CALL

    async def _bounded(
        self, calls: int, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(*args)`` on a pool slot, within the deadline of ``calls`` script calls
        (waiting for a connection, a NOSCRIPT reload, cluster redirections included)."""

        async def limited() -> T:
            async with self._slots:
                return await fn(*args, **kwargs)

        return await async_within(self._deadline(calls), limited)

    async def _each_disconnect(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        """A cluster's sweep: its disconnects are in other slots, so each is its own
        operation (concurrent under asyncio), bounded as a handler's."""
        each = self._ops.disconnect
        return await async_gather(*(self._bounded(1, each, request) for request in requests))

    async def _send_one(self, call: ScriptCall) -> Reply:
        """A lone handler call. On the kept connection, each of its reads and writes is
        bounded by the pool's socket timeout (redis-py arms it), so it needs no pool
        slot and no deadline timer of ours (the handler's hot path)."""
        script, (keys, args) = call
        if self._lone is not None:
            return await async_script_call(self._lone, script, keys, args)
        return await self._bounded(1, async_script_call, self._client, script, keys, args)

    async def _send_batch(self, calls: list[ScriptCall]) -> list[PipelineReply]:
        """Handler calls made while another was in flight: one pipeline, one pool slot
        (the coalescer bounds it by the deadline of ``len(calls)`` calls)."""
        async with self._slots:
            return await async_batch_replies(self._client, self._ops.scripts, calls)
