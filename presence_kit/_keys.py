"""Every Redis key name presence_kit uses: :class:`KeySchema`, and :class:`UserKeys`,
the keys of one (user, role) that each request carries.

A user's keys share the cluster slot of the spec's alive key (they embed its name as
their hash tag); an organisation's index keys share the slot ``{<prefix>:org:<id>}``,
the node registry ``{<prefix>:nodes}`` and each node incarnation's index its own.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import NamedTuple

from ._codec import queue_member
from ._session import Id

__all__ = ["NODE_BUCKETS", "KeySchema", "UserKeys", "count_keys", "feed_shard", "node_bucket"]


class UserKeys(NamedTuple):
    """The keys of one (user, role), from :meth:`KeySchema.user`."""

    alive: str
    """The spec's alive hash; its name is also the cluster hash tag of the others."""
    records: str
    """Hash of the user's connection records in the role (see :meth:`KeySchema.records`)."""
    held_leave: str
    """Hash of the (user, role)'s leave held back by the grace period."""
    org_index: str
    """The organisation's index of connections in the role."""
    leave_queue: str
    """The queue of held-back leaves (one for all users)."""
    queue_member: str
    """The (user, role)'s member of the leave queue (enough to rebuild these keys)."""
    org_counts: str = ""
    """The prefix of the organisation's counts in the role (kept with its index, in its
    slot: see :meth:`KeySchema.org_counts`); empty: not counted."""
    feed: str = ""
    """The presence feed's stream of the organisation's shard (:meth:`KeySchema.feed`)."""
    feed_queue: str = ""
    """The user's feed queue on a Redis Cluster (:meth:`KeySchema.feed_queue`)."""
    feed_pending: str = ""
    """The feed queues to move (:meth:`KeySchema.feed_pending`)."""


_make_user_keys = UserKeys._make  # positional, from one tuple: the cheapest way to build


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySchema:
    """Every Redis key name presence_kit uses, from the settings' templates.

    A user's keys share the cluster slot of the spec's alive key: they embed its name
    as their hash tag. An organisation's index keys share the slot ``{<prefix>:org:<id>}``.
    """

    alive_template: str
    prefix: str
    feed_shards: int = 1
    """Streams the presence feed is partitioned into (``Settings.feed_shards``)."""

    def alive(self, org_id: Id, user_id: Id) -> str:
        """The spec's alive hash of a user."""
        return self.alive_template.format(org_id=org_id, user_id=user_id)

    def user(self, org_id: Id, user_id: Id, role: str, *, tracks_alive: bool) -> UserKeys:
        """Every key of one (user, role), built once per event (from the named methods
        below: each template is written once)."""
        alive = self.alive(org_id, user_id)
        return _make_user_keys(
            (
                alive,
                self.records(alive, role, tracks_alive=tracks_alive),
                self.held_leave(alive, role),
                self.org_index(org_id, role),
                self.leave_queue(),
                queue_member(org_id, user_id, role),
                self.org_counts(org_id, role),
                self.feed(feed_shard(org_id, self.feed_shards)),
                self.feed_queue(alive),
                self.feed_pending(),
            )
        )

    def records(self, alive_key: str, role: str, *, tracks_alive: bool) -> str:
        """Hash of a user's connection records in a role (fields ``c:<sid>``, and ``n``).

        For a role that drives the alive hash the records live in the alive hash itself
        (extra fields beside ``state``): one key per online teacher, not two.
        """
        if tracks_alive:
            return alive_key
        return f"{self.prefix}:{{{alive_key}}}:conns:{role}"

    def tombstone(self, alive_key: str, sid: str) -> str:
        """Marker left by a finished disconnect (its outcome, for repeats)."""
        return f"{self.prefix}:{{{alive_key}}}:gone:{sid}"

    def held_leave(self, alive_key: str, role: str) -> str:
        """Hash of a leave held back by the grace period."""
        return f"{self.prefix}:{{{alive_key}}}:held:{role}"

    def org_index(self, org_id: Id, role: str) -> str:
        """Hash ``sid -> [user_id, lesson_id]`` of an organisation's connections in a role."""
        return f"{self.prefix}:{{{self.prefix}:org:{org_id}}}:online:{role}"

    def org_counts(self, org_id: Id, role: str) -> str:
        """The prefix of the counts kept beside an organisation's index in a role, in its
        slot (``count_online``): ``<prefix>:users`` (hash ``user -> connections``),
        ``<prefix>:users:<lesson>`` (the same in one lesson) and ``<prefix>:conns`` (hash
        of totals: ``org``, and ``l:<lesson>``). The scripts derive the lesson's keys."""
        return f"{self.prefix}:{{{self.prefix}:org:{org_id}}}:count:{role}"

    def feed(self, shard: int) -> str:
        """The presence feed's stream of one shard (each shard its own cluster slot;
        an organisation's entries are all in the shard :func:`feed_shard` gives)."""
        return f"{self.prefix}:{{{self.prefix}:feed:{shard}}}"

    def feeds(self) -> list[str]:
        """Every shard's stream of the presence feed."""
        return [self.feed(shard) for shard in range(self.feed_shards)]

    def feed_queue(self, alive_key: str) -> str:
        """A user's feed entries not yet in the stream (a list, in the user's slot):
        on a cluster the scripts append there and the kit moves them to the stream."""
        return f"{self.prefix}:{{{alive_key}}}:feedq"

    def feed_pending(self) -> str:
        """Sorted set of the feed queues that may hold entries (``<shard>|<queue>`` ->
        when registered, ms): what a kit that died between a script and the move left,
        for any node to move (cluster)."""
        return f"{self.prefix}:{{{self.prefix}:feedq}}:pending"

    def leave_queue(self) -> str:
        """Sorted set of held-back leaves, scored by when their grace ends (ms)."""
        return f"{self.prefix}:{{{self.prefix}:leaves}}:due"

    def live_nodes(self) -> str:
        """Sorted set ``node/incarnation -> last heartbeat (ms, Redis clock)``."""
        return f"{self.prefix}:{{{self.prefix}:nodes}}:live"

    def claimed_nodes(self) -> str:
        """Sorted set of dead nodes being swept: ``node/incarnation -> claim expiry (ms)``."""
        return f"{self.prefix}:{{{self.prefix}:nodes}}:claimed"

    def node_info(self) -> str:
        """Hash ``node/incarnation -> JSON`` (host, pid, start) for operators."""
        return f"{self.prefix}:{{{self.prefix}:nodes}}:info"

    def node_index(self, member: str, bucket: int) -> str:
        """Hash ``sid -> [org_id, user_id, role]``: one of a node incarnation's
        256 buckets of connections (small hashes stay compact listpacks)."""
        return f"{self.prefix}:{{{self.prefix}:node:{member}}}:conns:{bucket}"

    def node_indexes(self, member: str) -> list[str]:
        """Every bucket of a node incarnation's index."""
        return [self.node_index(member, bucket) for bucket in range(NODE_BUCKETS)]


NODE_BUCKETS = 256
"""Buckets of a node's connection index: up to ~32,000 connections per node keep every
bucket under Redis's 128-entry listpack limit (about half the memory of one big hash)."""


def node_bucket(sid: str) -> int:
    """The node-index bucket of a connection."""
    return zlib.crc32(sid.encode()) % NODE_BUCKETS


def count_keys(counts_prefix: str, lesson: str | None) -> tuple[str, str, str]:
    """``(users hash, totals hash, totals field)`` of an organisation's count in a role
    (``counts_prefix``: :meth:`KeySchema.org_counts`), or in one of its lessons
    (``lesson``: :func:`~presence_kit._codec.lesson_key`); ``lua/index.lua`` writes them."""
    if lesson is None:
        return f"{counts_prefix}:users", f"{counts_prefix}:conns", "org"
    return f"{counts_prefix}:users:{lesson}", f"{counts_prefix}:conns", f"l:{lesson}"


def feed_shard(org_id: Id, shards: int) -> int:
    """The feed shard of an organisation: ``crc32(str(org_id)) % shards`` (so ``7`` and
    ``"7"`` share one; the same in every language: CRC-32 of the id's UTF-8 text)."""
    return zlib.crc32(str(org_id).encode()) % shards
