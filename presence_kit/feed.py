"""The presence feed: every presence change, durable in Redis Streams, for the rest of
the backend (``Settings(feed=True)`` on every node).

:class:`PresenceFeed` (blocking, over ``redis.Redis`` or ``RedisCluster``) and
:class:`AsyncPresenceFeed` (over their asyncio twins) read it in a consumer group;
each entry is a :class:`FeedEntry`. Other languages read the same streams: the
docs' field reference lists every field.
"""

from __future__ import annotations

from ._async.redis_feed import AsyncPresenceFeed
from ._feed_entry import FEED_FIELDS, FEED_KINDS, FeedEntry
from ._keys import feed_shard
from ._sync.redis_feed import PresenceFeed

__all__ = [
    "FEED_FIELDS",
    "FEED_KINDS",
    "AsyncPresenceFeed",
    "FeedEntry",
    "PresenceFeed",
    "feed_shard",
]
