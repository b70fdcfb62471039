"""The connection a Redis store keeps for lone handler calls.

A store's coalescer sends at most one lone script call at a time (a burst goes out as
batches, through the pool). That call needs no pool checkout: taking a connection from
redis-py 8's pool and giving it back, with the client's ``execute_command`` around the
round trip, costs more Python than the round trip itself (about 60,000 instructions
per call, measured with callgrind). So the store keeps one connection of its own pool
for them and talks to it through redis-py's connection API (``send_command``,
``read_response``), as redis-py's own ``PubSub`` keeps one. What differs between
blocking and asyncio connections is :class:`~presence_kit._redis_client.AsyncWire`.
"""

from __future__ import annotations

from typing import Any

from presence_kit._redis_client import AsyncWire, checkout_takes_name
from presence_kit._redis_seam import Arg, Reply

__all__ = ["AsyncKeptConnection"]


class AsyncKeptConnection:
    """One connection of the store's own pool, kept for lone script calls.

    ``execute_command(*args)`` like a client's, for the one caller the coalescer lets
    send at a time. Before each call the connection is checked the way the pool checks
    one it hands out (unread data or a closed socket: reconnected); a failed call
    disconnects it, as redis-py's client does, and the next call reconnects (to a
    Sentinel's current master)."""

    __slots__ = ("_args", "_connection", "_pool", "_wire")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._args: tuple[str, ...] = ("EVALSHA",) if checkout_takes_name(pool) else ()
        self._connection: Any = None
        self._wire = AsyncWire(pool)

    async def execute_command(self, *args: Arg) -> Reply:
        """Send one command on the kept connection; its reply (an error reply raised)."""
        connection = self._connection
        fresh = connection is None or not self._wire.ours(connection)
        if fresh:
            connection = self._connection = await self._pool.get_connection(*self._args)
        reply: Reply = await self._wire.call(connection, args, fresh)
        return reply

    async def aclose(self) -> None:
        """Give the connection back to the pool (the store then closes the pool)."""
        connection, self._connection = self._connection, None
        if connection is not None and self._wire.ours(connection):
            await self._pool.release(connection)
