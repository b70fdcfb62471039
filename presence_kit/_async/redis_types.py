"""What the Redis store uses of a redis-py client, as Protocols.

``redis.asyncio.Redis`` and ``redis.asyncio.cluster.RedisCluster`` both fit
:class:`AsyncRedisClient`, and their pipelines :class:`AsyncPipeline`; the blocking
twins (``RedisClient``, ``Pipeline``) are what ``redis.Redis`` and
``redis.cluster.RedisCluster`` fit. Commands are sent by calling their methods (or
``execute_command`` for a script call), never looked up by name. A pipeline's command
methods only buffer the command (their return value is not used); ``execute`` sends
them all in one round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from presence_kit._redis_seam import Arg, PipelineReply, RegisteredScript, Reply

__all__ = ["AsyncKeptClient", "AsyncPipeline", "AsyncRedisClient"]


class AsyncPipeline(Protocol):
    """A non-transactional pipeline: the commands we buffer in one, and sending them."""

    def execute_command(self, *args: Arg) -> object: ...

    def hset(self, name: str, key: str, value: str) -> object: ...

    def hdel(self, name: str, *keys: str) -> object: ...

    def hget(self, name: str, key: str) -> object: ...

    def hexists(self, name: str, key: str) -> object: ...

    def hgetall(self, name: str) -> object: ...

    def hlen(self, name: str) -> object: ...

    def zadd(self, name: str, mapping: Mapping[str, float]) -> object: ...

    def zrem(self, name: str, *values: str) -> object: ...

    def zrange(
        self, name: str, start: int, end: int, desc: bool = False, withscores: bool = False
    ) -> object: ...

    def delete(self, *names: str) -> object: ...

    async def execute(self, raise_on_error: bool = True) -> list[PipelineReply]:
        """Every buffered command's reply, in order; with ``raise_on_error=False`` a
        failed command's error is its reply instead of being raised."""
        ...


class AsyncKeptClient(Protocol):
    """What sends one command and returns its reply (an error reply raised): either
    a client, or the connection a store keeps for lone calls."""

    async def execute_command(self, *args: Arg) -> Reply: ...


class AsyncRedisClient(AsyncKeptClient, Protocol):
    """What the store uses of a redis-py client, standalone or cluster."""

    def pipeline(self, transaction: bool = True) -> AsyncPipeline: ...

    def register_script(self, script: str) -> RegisteredScript: ...
