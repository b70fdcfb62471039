"""Redis adapters: :class:`RedisStore` (redis-py, blocking) and :class:`AsyncRedisStore`.

Each connect and each disconnect is ONE round trip: an atomic Lua script (EVALSHA,
reloaded on NOSCRIPT, e.g. after a failover) over the keys of one user, which all
hash to one cluster slot. The scripts return only integers and strings, so RESP2 and
RESP3 and ``decode_responses`` on or off give the same results. Under a burst, the
calls made while another is in flight (by other tasks, or other threads) go out
together: batched EVALSHAs (``lua/batch.lua``, up to 50 calls each) in
one pipeline, each call still atomic and failing on its own. Sweeps send their
disconnects the same way. Not on a cluster, where the calls' keys are in other slots.

The Redis logic is written once, for both stores: the store, its operations (the
cluster protocol included) and its kept connection as asyncio code in
``presence_kit/_async/redis_*.py``, from which ``.ci/unasync.py`` writes the blocking
ones; the scripts' calls and replies in ``_redis_scripts``, the typed seam with
redis-py in ``_redis_seam`` and ``_async/redis_types``, the store's own client in
``_redis_client``, and what differs between threads and tasks (coalescing, slots,
deadlines) in ``_synchronization`` (private modules; see the architecture page).

Every failure, whatever it is (a Redis error, a connection reset, a missed deadline,
a reply of an unexpected shape), is raised as a :class:`~presence_kit.StoreError`
with the original as ``__cause__``, by both stores alike.

Handler calls must not stall a server: by default the store talks to Redis over a
connection pool of its own, built from the integrator's client (same server,
credentials, TLS, protocol), with ``timeout`` as socket deadline and no retries —
redis-py's own defaults (seconds of timeout, several retries) would otherwise apply on
the handler's path. Pass ``timeout=None`` to use the client exactly as given. That
pool opens at most ``max_connections`` connections (by default the client pool's size,
capped at :data:`DEFAULT_MAX_CONNECTIONS`); a burst beyond it waits for one.
"""

from __future__ import annotations

from . import _redis_client
from ._async.redis_store import AsyncRedisStore
from ._sync.redis_store import RedisStore

__all__ = ["AsyncRedisStore", "RedisStore"]

SyncClient = _redis_client.SyncClient
AsyncClient = _redis_client.AsyncClient

DEFAULT_TIMEOUT = _redis_client.DEFAULT_TIMEOUT
"""Seconds a handler waits for Redis before giving up (and carrying on without it)."""

DEFAULT_MAX_CONNECTIONS = _redis_client.DEFAULT_MAX_CONNECTIONS
"""The most connections the store's own pool opens, unless ``max_connections`` says.

redis-py 8's default pool size; before 8 a pool's default is 2**31, which a blocking
pool would pre-allocate and a semaphore would not bound at all."""

for _store in (RedisStore, AsyncRedisStore):
    _store.__module__ = __name__  # documented, and shown in reprs, as presence_kit.redis's
del _store
