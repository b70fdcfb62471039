# Generated from presence_kit/_async/redis_ops.py by .ci/unasync.py: do not edit.
# Change the asyncio original, then run `make unasync`.
"""Every Redis operation of the store, standalone and cluster, as plain async code.

:class:`RedisOps` holds the client (a redis-py client, typed by
:mod:`~presence_kit._sync.redis_types`) and our registered scripts. Each operation
sends its commands with real method calls (``pipe.hset(...)``, then the pipeline's
``execute()``; ``client.execute_command("EVALSHA", ...)``) and returns its result;
``.ci/unasync.py`` writes the blocking twin. Failures are raised as they come: the
store translates them, in one place.

Standalone and cluster go through the same operations. On a standalone Redis each
connect and disconnect is one script call that writes the indexes too, sent through
the store's coalescer (``handler_script``: alone on the kept connection, or batched
with the calls made meanwhile). On a cluster an organisation's index and a node's
index live in other slots than the user's keys, so a script cannot write them: they
are written before the script (the index is always a superset of the truth), cleaned
after it (and on ``STALE``), and verified lazily when read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace

from redis.exceptions import NoScriptError

from presence_kit._codec import RECORD_FIELD, compact_meta, parse_index_entry, snapshot_metas
from presence_kit._keys import KeySchema, UserKeys, count_keys
from presence_kit._model import (
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    NodeInfo,
    OnlineCount,
    OrgQuery,
    StoreLayout,
    UpdateOutcome,
    UpdateRequest,
    UpdateStatus,
    UserPresence,
)
from presence_kit._redis_scripts import (
    BATCH_CALLS,
    cancelled_leave,
    connect_call,
    connect_outcome,
    disconnect_call,
    disconnect_outcome,
    finish_call,
    finish_outcome,
    heartbeat_ok,
    merged_entries,
    node_infos,
    online_count,
    org_index_call,
    text,
    time_ms,
    update_call,
    update_outcome,
    user_presence,
    xadd_of,
)
from presence_kit._redis_seam import (
    Arg,
    Lua,
    PipelineReply,
    Reply,
    ScriptCall,
    ScriptSet,
    UnexpectedReplyError,
    array,
    integer,
    mapping,
    replied,
)
from presence_kit._session import Id
from presence_kit._sync.redis_types import KeptClient, RedisClient

__all__ = ["RedisOps", "batch_replies", "script_call"]


def script_call(client: KeptClient, script: Lua, keys: list[str], args: list[str | int]) -> Reply:
    """A script call: ``EVALSHA`` sent as a plain command (redis-py's ``Script`` wrapper
    costs about as much again on the hot path); if Redis lost the script (NOSCRIPT,
    e.g. after a failover) it is loaded and sent again, by the same client (the
    store's kept connection, for a lone call: no second connection needed)."""
    command: tuple[Arg, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return client.execute_command(*command)
    except NoScriptError:
        client.execute_command("SCRIPT LOAD", script.source)  # a cluster: every primary
        return client.execute_command(*command)


def _batched(
    batched: dict[str, Lua], calls: Sequence[ScriptCall]
) -> tuple[list[tuple[Arg, ...]], list[int]]:
    """``calls`` as batched EVALSHAs: each run of calls of one script in commands of at
    most :data:`~presence_kit._redis_scripts.BATCH_CALLS` calls; and each one's size."""
    commands: list[tuple[Arg, ...]] = []
    sizes: list[int] = []
    for script, run in itertools.groupby(calls, key=lambda pair: pair[0]):
        same = [call for _script, call in run]
        sha = batched[script.sha].sha
        for start in range(0, len(same), BATCH_CALLS):
            part = same[start : start + BATCH_CALLS]
            keys: list[str] = []
            args: list[str | int] = [len(part[0][0]), len(part[0][1])]
            for call_keys, call_args in part:
                keys += call_keys
                args += call_args
            commands.append(("EVALSHA", sha, len(keys), *keys, *args))
            sizes.append(len(part))
    return commands, sizes


def _send_batched(
    client: RedisClient, commands: list[tuple[Arg, ...]], sizes: list[int]
) -> list[PipelineReply]:
    """Send batched EVALSHAs in one pipeline: one reply (or failure) per call."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    out: list[PipelineReply] = []
    for reply, size in zip(pipe.execute(raise_on_error=False), sizes, strict=True):
        if isinstance(reply, Exception):
            out += [reply] * size
        elif not isinstance(reply, (list, tuple)) or len(reply) != size:
            wrong = UnexpectedReplyError(f"a batch of {size} calls got {reply!r:.80}")
            out += [wrong] * size
        else:
            out += reply
    return out


def batch_replies(
    client: RedisClient, scripts: ScriptSet, calls: Sequence[ScriptCall]
) -> list[PipelineReply]:
    """One reply (or failure) per call: batched EVALSHAs in one pipelined round trip,
    and a second one after loading the scripts if Redis had lost them (NOSCRIPT)."""
    replies = _send_batched(client, *_batched(scripts.batched, calls))
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
            client.execute_command("SCRIPT LOAD", scripts.batched[script.sha].source)
        again = _send_batched(client, *_batched(scripts.batched, [calls[i] for i in missing]))
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


class RedisOps:
    """The store's operations over one client: ``handler_script`` sends a handler's
    script call (the store's coalescer on a standalone Redis)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        cluster: bool,
        handler_script: Callable[[ScriptCall], Reply] | None = None,
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.scripts = ScriptSet(client.register_script)
        self._handler_script = handler_script or self._script

    def _script(self, call: ScriptCall) -> Reply:
        script, (keys, args) = call
        return script_call(self.client, script, keys, args)

    # --- a handler's connect and disconnect ------------------------------------------

    def connect(self, r: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one script call (on a cluster, indexes first)."""
        if not self.cluster:
            call = (self.scripts.connect, connect_call(r, local_index=True))
            return connect_outcome(array(self._handler_script(call)))
        extra: list[tuple[Arg, ...]] = [("HSET", r.node_index_key, r.sid, r.node_entry)]
        if r.layout.feed:
            extra.append(self._pending_feed(r.keys))
        k = r.keys
        self._org_index(k.org_index, k.org_counts, "set", r.sid, r.index_entry, extra=extra)
        call = (self.scripts.connect, connect_call(r, local_index=False))
        reply = array(self._handler_script(call))
        self._move_feed(r.keys, r.layout)
        outcome = connect_outcome(reply)
        if outcome.status is ConnectStatus.STALE:
            unindex: list[tuple[Arg, ...]] = [("HDEL", r.node_index_key, r.sid)]
            self._org_index(k.org_index, k.org_counts, "del", r.sid, extra=unindex)
        elif cancelled := cancelled_leave(reply):  # its entry was kept for the grace
            self._org_index(r.keys.org_index, r.keys.org_counts, "del", cancelled)
        if r.snapshot is not None:
            raw = list((self._verified_index(r.snapshot)).values())
            snapshot = tuple(map(parse_index_entry, raw))
            outcome = replace(outcome, snapshot=snapshot, snapshot_meta=snapshot_metas(raw))
        return outcome

    def disconnect(self, r: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one script call (on a cluster, then the indexes: a
        held-back leave is queued, its org index entry kept until the leave runs)."""
        self._pend_feed(r.keys, r.layout)
        call = (self.scripts.disconnect, disconnect_call(r, local_index=not self.cluster))
        outcome = disconnect_outcome(r.sid, array(self._handler_script(call)))
        if not self.cluster:
            return outcome
        self._move_feed(r.keys, r.layout)
        extra: list[tuple[Arg, ...]] = [("HDEL", r.node_index_key, r.sid)]
        if outcome.deferred:  # queued until its grace ends; its org index entry stays
            due = round(outcome.at * 1000) + r.layout.leave_grace_ms
            extra.append(("ZADD", r.keys.leave_queue, due, r.keys.queue_member))
        if not outcome.deferred and not (r.owner and outcome.status is DisconnectStatus.UNKNOWN):
            # (a record not this owner's may be live: reads verify the entry instead)
            k = r.keys
            self._org_index(k.org_index, k.org_counts, "del", r.sid, extra=extra)
        else:
            self._send(extra)
        return outcome

    def update(self, r: UpdateRequest) -> UpdateOutcome:
        """Change a connection's lesson, room or meta: one script call (on a cluster,
        then its org index entry and the counts, in the org's slot: only if the entry
        is still there, so an update racing a disconnect never brings it back)."""
        self._pend_feed(r.keys, r.layout)
        call = (self.scripts.update, update_call(r, local_index=not self.cluster))
        outcome = update_outcome(r.sid, array(self._handler_script(call)))
        self._move_feed(r.keys, r.layout)
        if self.cluster and outcome.status is UpdateStatus.UPDATED and outcome.record:
            entry = r.index_entry
            if r.index_meta:
                meta = outcome.record.meta
                entry += f",{compact_meta(meta)}]" if meta else "]"
            self._org_index(r.keys.org_index, r.keys.org_counts, "update", r.sid, entry)
        return outcome

    # --- the presence feed on a cluster (lua/feed.lua) ------------------------------

    def _pend_feed(self, keys: UserKeys, layout: StoreLayout) -> None:
        """On a cluster with the feed on, before a user's script: register the user's
        feed queue as one to move, so that entries the script appends reach the stream
        even if this kit dies before it moves them (another node's step does)."""
        if self.cluster and layout.feed:
            self.client.execute_command(*self._pending_feed(keys))

    @staticmethod
    def _pending_feed(keys: UserKeys) -> tuple[Arg, ...]:
        """The command that registers a user's feed queue (see :meth:`_pend_feed`)."""
        return ("ZADD", keys.feed_pending, time_ms(), f"{keys.feed}|{keys.feed_queue}")

    def _move_feed(self, keys: UserKeys, layout: StoreLayout) -> None:
        """On a cluster with the feed on, after a user's script: move its feed entries
        from the user's queue to the org's stream."""
        if self.cluster and layout.feed:
            pending, stream, queue = keys.feed_pending, keys.feed, keys.feed_queue
            self.move_feed_queue(pending, stream, queue, layout.feed_retention_ms)

    def move_feed_queue(self, pending_key: str, stream: str, queue: str, retention_ms: int) -> int:
        """Move a user's queued feed entries to their stream (at least once: a move cut
        short is made again), then unregister the queue unless it was registered again
        meanwhile. Returns how many entries were moved."""
        member = f"{stream}|{queue}"
        # one round trip: the registration as it is now, and the entries to move
        found, queued = self._send([("ZSCORE", pending_key, member), ("LRANGE", queue, 0, -1)])
        registered, entries = replied(found), array(replied(queued))
        if entries:
            for reply in self._send([xadd_of(stream, e, retention_ms) for e in entries]):
                replied(reply)
            self.client.execute_command("LTRIM", queue, len(entries), -1)
        if registered is not None:
            score: str | int = int(float(text(registered)))
            keys, args = [pending_key], [member, score]
            script_call(self.client, self.scripts.unpend, keys, args)
        return len(entries)

    def move_stale_feeds(
        self, pending_key: str, older_than_ms: int, retention_ms: int, limit: int
    ) -> int:
        """Move the feed queues registered longer than ``older_than_ms`` ago (their kit
        died between its script and the move); how many entries were moved."""
        members = array(
            self.client.execute_command(
                "ZRANGEBYSCORE", pending_key, "-inf", time_ms() - older_than_ms, "LIMIT", 0, limit
            )
        )
        moved = 0
        for member in members:
            stream, _, queue = text(member).partition("|")
            moved += self.move_feed_queue(pending_key, stream, queue, retention_ms)
        return moved

    def _org_index(
        self,
        index_key: str,
        counts_prefix: str,
        op: str,
        *items: str,
        extra: Sequence[tuple[Arg, ...]] = (),
    ) -> None:
        """Change entries of an org index and its counts on a cluster (their slot),
        with ``extra`` plain commands in the same round trip (a pipeline; the script
        is loaded and called again alone if Redis lost it)."""
        keys, args = org_index_call(index_key, counts_prefix, op, items)
        script = self.scripts.org_index
        call: tuple[Arg, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = self._send([call, *extra])
        if isinstance(replies[0], NoScriptError):
            script_call(self.client, script, keys, args)
        for reply in replies:
            if not isinstance(reply, NoScriptError):
                replied(reply)

    def _send(self, commands: Sequence[tuple[Arg, ...]]) -> list[PipelineReply]:
        """Plain commands in one pipelined round trip; their replies or failures."""
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    def disconnect_many(self, requests: Sequence[DisconnectRequest]) -> list[DisconnectOutcome]:
        """Many disconnects on a standalone Redis (a sweep): batched EVALSHAs in one
        pipelined round trip. (On a cluster the calls' keys are in other slots: the
        store sends each as :meth:`disconnect`.)"""
        disconnect = self.scripts.disconnect
        calls = [(disconnect, disconnect_call(r, local_index=True)) for r in requests]
        replies = batch_replies(self.client, self.scripts, calls)
        return [
            disconnect_outcome(r.sid, array(replied(reply)))
            for r, reply in zip(requests, replies, strict=True)
        ]

    # --- held-back leaves -----------------------------------------------------------

    def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Members of the leave queue whose grace has ended (by the Redis clock)."""
        args: list[str | int] = [limit]
        reply = self._script((self.scripts.due, ([queue_key], args)))
        return [text(member) for member in array(reply)]

    def finish_leave(self, r: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due (on a cluster, then unqueue it and clean its index)."""
        self._pend_feed(r.keys, r.layout)
        call = (self.scripts.finish, finish_call(r, local_index=not self.cluster))
        finished = finish_outcome(array(self._script(call)))
        self._move_feed(r.keys, r.layout)
        if self.cluster and finished.due is None:
            unqueue: list[tuple[Arg, ...]] = [("ZREM", r.keys.leave_queue, r.keys.queue_member)]
            if finished.outcome is not None and finished.outcome.record is not None:
                sid, k = finished.outcome.record.sid, r.keys
                self._org_index(k.org_index, k.org_counts, "del", sid, extra=unqueue)
            else:
                self._send(unqueue)
        return finished

    # --- reads ----------------------------------------------------------------------

    def presence(self, alive_key: str, connections_key: str, state_field: str) -> UserPresence:
        """A (user, role)'s alive hash and connection records (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(alive_key)
        pipe.hgetall(connections_key)
        alive, records = pipe.execute()
        return user_presence(mapping(replied(alive)), mapping(replied(records)), state_field)

    def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """An org index; on a cluster, verified against each user's records (entries
        whose connection is gone, and not held back by a grace period, are removed)."""
        return {
            sid: parse_index_entry(entry) for sid, entry in (self._verified_index(query)).items()
        }

    def _verified_index(self, query: OrgQuery) -> dict[str, str]:
        """An org index's raw entries (on a cluster, verified: see :meth:`org_connections`)."""
        raw = mapping(self.client.execute_command("HGETALL", query.index_key))
        texts = {text(sid): text(entry) for sid, entry in raw.items()}
        if not self.cluster or not texts:
            return texts
        entries = {sid: parse_index_entry(entry) for sid, entry in texts.items()}
        pipe = self.client.pipeline(transaction=False)
        for sid, (user_id, _lesson) in entries.items():
            keys = query.user_keys(user_id)
            pipe.hexists(keys.records, RECORD_FIELD + sid)
            pipe.hget(keys.held_leave, "sid")
        replies = [replied(reply) for reply in pipe.execute()]
        stale = [
            sid
            for sid, live, held_sid in zip(entries, replies[::2], replies[1::2], strict=True)
            if not live and (held_sid is None or text(held_sid) != sid)
        ]
        if stale:
            self._org_index(query.index_key, query.counts_prefix, "del", *stale)
        return {sid: entry for sid, entry in texts.items() if sid not in stale}

    def count_online(self, query: OrgQuery, lesson: str | None) -> OnlineCount:
        """The counts kept beside an org index (one round trip, two O(1) reads)."""
        users, totals, field = count_keys(query.counts_prefix, lesson)
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(users)
        pipe.hget(totals, field)
        n_users, connections = [replied(reply) for reply in pipe.execute()]
        return online_count(integer(n_users), connections)

    def rebuild_counts(self, query: OrgQuery) -> tuple[int, int, bool]:
        """Rebuild the counts of an org index from it: ``(connections, users, changed)``."""
        args: list[str | int] = [query.counts_prefix]
        reply = self._script((self.scripts.rebuild, ([query.index_key], args)))
        connections, users, changed = array(reply)
        return integer(connections), integer(users), integer(changed) == 1

    # --- the node registry ----------------------------------------------------------

    def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp a node incarnation alive; ``False`` when it was fenced (swept)."""
        return heartbeat_ok(array(self._script((self.scripts.heartbeat, (call.keys, call.args)))))

    def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep (or a stale claim), if any."""
        args: list[str | int] = [timeout_ms, claim_ttl_ms]
        invocation = ([keys.live_nodes(), keys.claimed_nodes()], args)
        reply = array(self._script((self.scripts.claim, invocation)))
        return text(reply[0]) if reply else None

    def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index (one pipelined round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for key in index_keys:
            pipe.hgetall(key)
        return merged_entries([mapping(replied(reply)) for reply in pipe.execute()])

    def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend a sweeper's claim on ``member``."""
        self._script((self.scripts.renew, ([keys.claimed_nodes()], [member, claim_ttl_ms])))

    def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(keys.claimed_nodes(), member)
        pipe.zrem(keys.live_nodes(), member)
        pipe.hdel(keys.node_info(), member)
        # One hash tag: one slot, one command (as a plain command: redis-py's blocking
        # cluster pipeline refuses a multi-key delete()).
        pipe.execute_command("DEL", *keys.node_indexes(member))
        pipe.execute()

    def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation, with its index's size (two round trips)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(keys.live_nodes(), 0, -1, False, True)  # desc=False, withscores=True
        pipe.zrange(keys.claimed_nodes(), 0, -1)
        pipe.hgetall(keys.node_info())
        scored, claimed, info = [replied(reply) for reply in pipe.execute()]
        live: dict[str, float] = {}
        for pair in array(scored):
            member, score = array(pair)
            live[text(member)] = float(text(score))
        members = sorted({*live, *map(text, array(claimed)), *map(text, mapping(info))})
        indexes = [(member, index) for member in members for index in keys.node_indexes(member)]
        pipe = self.client.pipeline(transaction=False)
        for _member, index in indexes:
            pipe.hlen(index)
        counts = dict.fromkeys(members, 0)
        for (member, _), length in zip(indexes, pipe.execute(), strict=True):
            counts[member] += integer(replied(length))
        return node_infos(live, mapping(info), counts)
