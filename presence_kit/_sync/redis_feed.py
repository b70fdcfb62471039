# Generated from presence_kit/_async/redis_feed.py by .ci/unasync.py: do not edit.
# Change the asyncio original, then run `make unasync`.
"""The presence feed's consumer, written once as asyncio code (``.ci/unasync.py`` makes
:class:`~presence_kit.feed.PresenceFeed` of it).

A consumer group reads the feed's streams (every shard, or the one of ``org_id``):
first the entries another consumer of the group left pending longer than
``claim_idle`` (``XAUTOCLAIM``), then new ones (``XREADGROUP``). Entries trimmed by
``Settings.feed_retention`` before the group read them are counted as missed and
logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import redis.cluster
from redis.exceptions import ResponseError

from presence_kit._errors import InvalidInputError, StoreError
from presence_kit._feed_entry import FeedEntry, parse_feed_entry
from presence_kit._keys import KeySchema, feed_shard
from presence_kit._redis_client import SyncClient
from presence_kit._redis_scripts import text
from presence_kit._session import Id
from presence_kit._settings import Settings

__all__ = ["PresenceFeed"]

logger = logging.getLogger("presence_kit.feed")


def _fields(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {text(k): text(v) for k, v in raw.items()}
    return {text(raw[i]): text(raw[i + 1]) for i in range(0, len(raw), 2)}


def _stream_items(reply: Any) -> list[tuple[str, Any]]:
    """``(stream, [(id, fields), ...])`` of an ``XREADGROUP`` reply: RESP2's list of
    pairs, or RESP3's map whose values wrap the entries in one more list."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [
            (text(stream), value[0] if value and isinstance(value[0], list) else value)
            for stream, value in reply.items()
        ]
    return [(text(stream), items) for stream, items in reply]


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class PresenceFeed:
    """A consumer of the presence feed, in consumer group ``group``, as ``consumer``.

    ``client`` is a ``redis.Redis`` or ``RedisCluster`` of the deployment;
    ``settings`` must be the nodes' (their ``key_prefix``, ``feed_shards``). The group
    is created on first use, from the start of the streams. With ``org_id`` it reads
    only that organisation's shard and skips (acknowledging, for the whole group)
    other organisations' entries: such a group follows one org only.
    """

    def __init__(
        self,
        client: SyncClient,
        *,
        settings: Settings | None = None,
        group: str,
        consumer: str,
        org_id: Id | None = None,
        claim_idle: float = 30.0,
    ) -> None:
        s = settings if settings is not None else Settings(feed=True)
        for name, value in (("group", group), ("consumer", consumer)):
            if not isinstance(value, str) or not 1 <= len(value) <= 128:
                raise InvalidInputError(name, "must be a str of 1-128 characters")
        if isinstance(claim_idle, bool) or not isinstance(claim_idle, (int, float)):
            raise InvalidInputError("claim_idle", "must be a number of seconds")
        if claim_idle < 0:
            raise InvalidInputError("claim_idle", "must be >= 0")
        self._client = client
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._group, self._consumer = group, consumer
        self._org = None if org_id is None else str(org_id)
        self._claim_idle_ms = round(claim_idle * 1000)
        keys = KeySchema(
            alive_template=s.alive_key, prefix=s.key_prefix, feed_shards=s.feed_shards
        )
        self._shards = s.feed_shards
        self._keys = keys
        self._streams = (
            keys.feeds() if org_id is None else [keys.feed(feed_shard(org_id, s.feed_shards))]
        )
        self._ready: set[str] = set()
        self._missed = 0
        self._reported: dict[str, tuple[str, int]] = {}  # stream -> (last delivered, missed)

    @property
    def streams(self) -> list[str]:
        """The streams this consumer reads (one per shard, or its org's)."""
        return list(self._streams)

    @property
    def missed(self) -> int:
        """Entries the group lost to trimming before reading them (cumulative, as this
        consumer found out): watch it, and keep consumers within ``feed_retention``."""
        return self._missed

    def read(self, count: int = 100, block: float | None = 1.0) -> list[FeedEntry]:
        """Up to ``count`` entries: first those another consumer of the group left
        pending for longer than ``claim_idle``, else new ones, waiting up to ``block``
        seconds for them (``None``: no wait). Acknowledge them with :meth:`ack` once
        processed. A malformed entry is logged with its id, acknowledged and skipped."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidInputError("count", "must be an int >= 1")
        try:
            self._create_groups()
            entries = self._claim(count)
            if entries:
                return entries
            self._check_missed()
            return self._read_new(count, block)
        except ResponseError as exc:
            raise StoreError(f"Redis failed reading the feed: {exc}") from exc

    def ack(self, entries: Iterable[FeedEntry]) -> int:
        """Acknowledge processed entries for the group; how many were pending."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(self._stream_of(entry.org_id), []).append(entry.id)
        acked = 0
        for stream, ids in by_stream.items():
            acked += int(self._client.xack(stream, self._group, *ids))
        return acked

    def lag(self) -> int:
        """Entries of the streams not yet delivered to the group."""
        self._create_groups()
        total = 0
        for stream in self._streams:
            group = self._group_info(stream)
            lag = group.get("lag")
            if lag is None:  # unknown to Redis (after a trim): count what is there
                last = text(group.get("last-delivered-id", "0-0"))
                lag = len(self._client.xrange(stream, f"({last}", "+") or [])
            total += int(lag)
        return total

    # --- the steps of a read --------------------------------------------------------

    def _stream_of(self, org_id: Id) -> str:
        return self._keys.feed(feed_shard(org_id, self._shards))

    def _create_groups(self) -> None:
        for stream in self._streams:
            if stream in self._ready:
                continue
            try:
                self._client.xgroup_create(
                    stream, self._group, id="0", mkstream=True, entries_read=0
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # (created by another consumer: fine)
                    raise
            self._ready.add(stream)

    def _claim(self, count: int) -> list[FeedEntry]:
        entries: list[FeedEntry] = []
        for stream in self._streams:
            reply = self._client.xautoclaim(
                stream, self._group, self._consumer, self._claim_idle_ms, "0-0", count=count
            )
            claimed = reply[1] if len(reply) > 1 else []
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # pending, then trimmed: lost
                self._lost(stream, len(deleted))
            entries += self._parsed(stream, claimed)
        return entries[:count]

    def _read_new(self, count: int, block: float | None) -> list[FeedEntry]:
        block_ms = None if block is None else max(1, round(block * 1000))
        if not self._cluster or len(self._streams) == 1:
            reply = self._client.xreadgroup(
                self._group,
                self._consumer,
                dict.fromkeys(self._streams, ">"),
                count=count,
                block=block_ms,
            )
            return self._entries_of(reply)
        # On a cluster each shard is its own slot: shard by shard, the wait shared out.
        share = None if block_ms is None else max(1, block_ms // len(self._streams))
        entries: list[FeedEntry] = []
        for stream in self._streams:
            reply = self._client.xreadgroup(
                self._group, self._consumer, {stream: ">"}, count=count - len(entries), block=share
            )
            entries += self._entries_of(reply)
            if len(entries) >= count:
                break
        return entries

    def _entries_of(self, reply: Any) -> list[FeedEntry]:
        entries: list[FeedEntry] = []
        for stream, items in _stream_items(reply):
            entries += self._parsed(stream, items)
        return entries

    def _parsed(self, stream: str, items: Sequence[Any]) -> list[FeedEntry]:
        """Entries of ``items`` (``[id, fields]`` pairs) that are this consumer's; the
        malformed ones and other orgs' are acknowledged and skipped."""
        entries: list[FeedEntry] = []
        skipped: list[str] = []
        for entry_id, raw in items:
            ident = text(entry_id)
            if raw is None:  # deleted while pending
                skipped.append(ident)
                continue
            try:
                entry = parse_feed_entry(ident, _fields(raw))
            except ValueError as exc:
                logger.warning(
                    "skipping a malformed presence feed entry %s: %s",
                    ident,
                    exc,
                    extra={"feed_entry_id": ident, "feed_stream": stream},
                )
                skipped.append(ident)
                continue
            if self._org is not None and str(entry.org_id) != self._org:
                skipped.append(ident)
                continue
            entries.append(entry)
        if skipped:
            self._client.xack(stream, self._group, *skipped)
        return entries

    def _group_info(self, stream: str) -> dict[str, Any]:
        for group in self._client.xinfo_groups(stream):
            info = {text(k): v for k, v in group.items()}
            if text(info.get("name", "")) == self._group:
                return info
        return {}

    def _check_missed(self) -> None:
        """Count (and log) entries trimmed before the group read them: when the oldest
        entry left is newer than the group's last delivered id (or an entry after it
        was deleted), the removed entries it had not read were lost (Redis 7's
        entries-added, the length and the group's entries-read tell how many)."""
        for stream in self._streams:
            info = {text(k): v for k, v in (self._client.xinfo_stream(stream)).items()}
            group = self._group_info(stream)
            if not group:
                continue
            last = _id_order(text(group.get("last-delivered-id", "0-0")))
            first = info.get("first-entry")
            # the oldest entry left (all gone: the newest ever written), and the newest
            # removed by XDEL: is any entry after the group's position gone?
            oldest = text(first[0]) if first else text(info.get("last-generated-id") or "0-0")
            deleted = text(info.get("max-deleted-entry-id") or "0-0")
            if _id_order(oldest) <= last and _id_order(deleted) <= last:
                continue
            added = int(info.get("entries-added") or 0)
            trimmed = added - int(info.get("length") or 0)
            read = group.get("entries-read")
            if read is None and group.get("lag") is not None:
                read = added - int(group["lag"])
            missed = trimmed - int(read) if read is not None else int(trimmed > 0)
            if missed <= 0:
                continue
            position = text(group.get("last-delivered-id", "0-0"))
            seen_at, seen = self._reported.get(stream, ("", 0))
            new = missed - seen if seen_at == position else missed
            if new > 0:
                self._lost(stream, new)
                self._reported[stream] = (position, missed)

    def _lost(self, stream: str, n: int) -> None:
        self._missed += n
        logger.warning(
            "the presence feed group %r missed %d entr%s of %s (trimmed by feed_retention "
            "before it read them)",
            self._group,
            n,
            "y" if n == 1 else "ies",
            stream,
            extra={"feed_group": self._group, "feed_missed": n, "feed_stream": stream},
        )
