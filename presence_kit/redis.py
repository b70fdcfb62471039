"""Redis adapters: :class:`RedisStore` (redis-py, blocking) and :class:`AsyncRedisStore`.

Each connect and each disconnect is ONE round trip: an atomic Lua script (EVALSHA,
reloaded on NOSCRIPT, e.g. after a failover) over the keys of one user, which all
hash to one cluster slot. The scripts return only integers and strings, so RESP2 and
RESP3 and ``decode_responses`` on or off give the same results. Under a burst, the
calls made while another is in flight (by other tasks, or other threads) go out
together: batched EVALSHAs (``lua/batch.lua``, up to ``_BATCH_CALLS`` calls each) in
one pipeline, each call still atomic and failing on its own. Sweeps send their
disconnects the same way. Not on a cluster, where the calls' keys are in other slots.

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
import itertools
import json
import threading
from collections.abc import Awaitable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import NoScriptError, RedisError

from . import _redis_client
from ._errors import StoreError
from ._model import (
    RECORD_FIELD,
    ConnectionRecord,
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    Heartbeat,
    KeySchema,
    NodeInfo,
    OrgQuery,
    UserPresence,
    parse_index_entry,
    records_of,
)
from ._redis_client import async_handler_client, pool_size, sync_handler_client
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
a :class:`RedisStore` call queued behind another thread's waits for its turn."""

_SECONDS_PER_CALL = 0.001
"""Added to an operation's bound per script call it carries (a batch, a sweep): what
Redis may take to run one call."""


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


_CONNECT_LUA, _DISCONNECT_LUA = _lua("connect"), _lua("disconnect")
_FINISH_LUA, _DUE_LUA = _lua("finish_leave"), _lua("due_leaves")
_HEARTBEAT_LUA, _CLAIM_LUA = _lua("heartbeat"), _lua("claim_node")
_RENEW_LUA = _lua("renew_claim")
_BATCH_LUA = _lua("batch")
T = TypeVar("T")
_timeout_block: Any = getattr(asyncio, "timeout", None)  # asyncio.timeout: Python 3.11+


# --- script arguments and results (shared by both stores) ---------------------------


def _flag(value: bool) -> int:
    return 1 if value else 0


Invocation = tuple[list[str], list[str | int]]
"""One script call's keys and args."""

_BATCH_CALLS = 50
"""Calls per batched EVALSHA: enough to make a burst cheap, few enough that one script
holds Redis up for only a couple of milliseconds."""


def _batched(script: str) -> str:
    """``script`` run once per call of a batch, in one EVALSHA (see ``lua/batch.lua``)."""
    return _BATCH_LUA.replace("-- BODY\n", script, 1)


def _queue_batched(pipe: Any, batch_script: Any, calls: Sequence[Invocation]) -> list[int]:
    """Queue ``calls`` of one script as batched EVALSHAs; the number of calls in each."""
    sizes = []
    for start in range(0, len(calls), _BATCH_CALLS):
        part = calls[start : start + _BATCH_CALLS]
        keys: list[str] = []
        args: list[str | int] = [len(part[0][0]), len(part[0][1])]
        for call_keys, call_args in part:
            keys += call_keys
            args += call_args
        pipe.evalsha(batch_script.sha, len(keys), *keys, *args)
        sizes.append(len(part))
    return sizes


def _queue_runs(
    pipe: Any, batched: dict[str, Any], calls: Sequence[tuple[Any, Invocation]]
) -> list[int]:
    """Queue ``(script, call)`` pairs in order: each run of calls of the same script as
    batched EVALSHAs (``batched``: script sha -> its batch script)."""
    sizes: list[int] = []
    for script, run in itertools.groupby(calls, key=lambda pair: pair[0]):
        sizes += _queue_batched(pipe, batched[script.sha], [call for _script, call in run])
    return sizes


def _unbatched(replies: Sequence[Any], sizes: Sequence[int]) -> list[Any]:
    """One reply per call from the batches' replies (a failed batch fails each call)."""
    out: list[Any] = []
    for reply, size in zip(replies, sizes, strict=True):
        if isinstance(reply, Exception):
            out += [reply] * size
        elif len(reply) != size:
            out += [RedisError(f"a batch of {size} calls returned {len(reply)} replies")] * size
        else:
            out += reply
    return out


def _raise_failed(replies: Sequence[Any]) -> Sequence[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _connect_call(r: ConnectRequest, *, local_index: bool) -> tuple[list[str], list[str | int]]:
    # Keys a cluster node doesn't hold are passed as the user's own key (never touched:
    # the flags say so), so every key of the call hashes to the user's slot.
    index_key = r.org_index_key if local_index else r.alive_key
    snapshot = r.snapshot is not None and local_index
    keys = [
        r.alive_key,
        r.connections_key,
        r.tombstone_key,
        r.held_leave_key,
        index_key,
        r.snapshot.index_key if snapshot and r.snapshot else r.alive_key,
        r.node_index_key if local_index else r.alive_key,
    ]
    args: list[str | int] = [
        r.sid,
        r.record.to_json(),
        _flag(r.tracks_alive),
        r.layout.state_field,
        r.layout.connect_state,
        r.layout.connection_ttl,
        r.index_entry,
        _flag(local_index),
        _flag(snapshot),
        r.node_entry,
    ]
    return keys, args


def _disconnect_call(
    r: DisconnectRequest, *, local_index: bool
) -> tuple[list[str], list[str | int]]:
    keys = [
        r.alive_key,
        r.connections_key,
        r.tombstone_key,
        r.held_leave_key,
        r.org_index_key if local_index else r.alive_key,
        r.leave_queue_key if local_index else r.alive_key,
        r.node_index_key if local_index else r.alive_key,
    ]
    args: list[str | int] = [
        r.sid,
        _flag(r.tracks_alive),
        r.layout.state_field,
        r.layout.disconnect_state,
        r.layout.offline_ttl,
        r.reason,
        r.layout.tombstone_ttl,
        r.layout.leave_grace_ms,
        r.queue_member,
        _flag(local_index),
        _flag(r.remember),
        r.attempt,
    ]
    return keys, args


def _finish_call(r: FinishLeaveRequest, *, local_index: bool) -> tuple[list[str], list[str | int]]:
    keys = [
        r.alive_key,
        r.connections_key,
        r.held_leave_key,
        r.org_index_key if local_index else r.alive_key,
        r.leave_queue_key if local_index else r.alive_key,
    ]
    args: list[str | int] = [
        r.layout.state_field,
        r.layout.disconnect_state,
        r.layout.offline_ttl,
        r.queue_member,
        _flag(local_index),
    ]
    return keys, args


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _by_value(enum: Any) -> dict[Any, Any]:
    """An enum's members by value, as text and as bytes (replies come as either)."""
    return {**{m.value: m for m in enum}, **{m.value.encode(): m for m in enum}}


_CONNECT_STATUS, _DISCONNECT_STATUS = _by_value(ConnectStatus), _by_value(DisconnectStatus)


def _connect_outcome(reply: Sequence[Any]) -> ConnectOutcome:
    status, first, connections, version, now_ms, resumed, snapshot = reply
    return ConnectOutcome(
        status=_CONNECT_STATUS.get(status) or ConnectStatus(_text(status)),
        first=int(first) == 1,
        connections=int(connections),
        version=int(version),
        at=int(now_ms) / 1000,
        resumed=int(resumed) == 1,
        snapshot=tuple(parse_index_entry(entry) for entry in snapshot),
    )


def _disconnect_outcome(sid: str, reply: Sequence[Any]) -> DisconnectOutcome:
    status, last, version, at_ms, record, deferred, attempt = reply
    record_text = _text(record)
    return DisconnectOutcome(
        status=_DISCONNECT_STATUS.get(status) or DisconnectStatus(_text(status)),
        last=int(last) == 1,
        record=ConnectionRecord.from_json(sid, record_text) if record_text else None,
        version=int(version),
        at=int(at_ms) / 1000,
        deferred=int(deferred) == 1,
        attempt=_text(attempt),
    )


def _finish_outcome(reply: Sequence[Any]) -> FinishLeaveOutcome:
    status, version, at_ms, sid, record, reason, due_ms = reply
    status_text = _text(status)
    outcome = None
    if status_text == "left":
        outcome = DisconnectOutcome(
            status=DisconnectStatus.REMOVED,
            last=True,
            record=ConnectionRecord.from_json(_text(sid), _text(record)),
            version=int(version),
            at=int(at_ms) / 1000,
        )
    return FinishLeaveOutcome(
        outcome=outcome,
        reason=_text(reason),
        due=int(due_ms) / 1000 if status_text == "later" else None,
    )


def _user_presence(
    alive: dict[Any, Any], record_hash: dict[Any, Any], layout_field: str
) -> UserPresence:
    fields = {_text(k): _text(v) for k, v in alive.items()}
    records = records_of({_text(k): _text(v) for k, v in record_hash.items()})
    since = fields.get("since")
    return UserPresence(
        state=fields.get(layout_field),
        connections=tuple(
            sorted(
                (ConnectionRecord.from_json(sid, text) for sid, text in records.items()),
                key=lambda record: record.sid,
            )
        ),
        since=int(since) / 1000 if since else None,
        last_reason=fields.get("reason"),
        version=int(fields.get("version", "0")),
    )


def _merge_entries(hashes: Sequence[dict[Any, Any]]) -> dict[str, str]:
    return {_text(k): _text(v) for entries in hashes for k, v in entries.items()}


def _heartbeat_ok(reply: Sequence[Any]) -> bool:
    return _text(reply[0]) == "ok"


def _release_commands(pipe: Any, keys: KeySchema, member: str) -> Any:
    """Queue the commands that forget a swept node incarnation (one round trip)."""
    pipe.zrem(keys.claimed_nodes(), member)
    pipe.zrem(keys.live_nodes(), member)
    pipe.hdel(keys.node_info(), member)
    pipe.delete(*keys.node_indexes(member))  # one hash tag: one slot, one command
    return pipe


_Commands = list[tuple[Any, ...]]
"""Redis commands for one pipeline: ``(method name, *args)`` of a redis-py client."""


def _nodes_op(keys: KeySchema) -> Generator[_Commands, list[Any], list[NodeInfo]]:
    """The node listing, written once: it yields each pipeline it needs and is sent
    back the replies; the sync and the asyncio store only run the pipelines."""
    scored, claimed, info = yield [
        ("zrange", keys.live_nodes(), 0, -1, False, True),  # desc=False, withscores=True
        ("zrange", keys.claimed_nodes(), 0, -1),
        ("hgetall", keys.node_info()),
    ]
    live = {member: float(score) for member, score in scored}
    members = sorted({_text(m) for m in [*live, *claimed, *info]})
    indexes = [(member, index) for member in members for index in keys.node_indexes(member)]
    lengths = yield [("hlen", index) for _, index in indexes]
    counts = dict.fromkeys(members, 0)
    for (member, _), length in zip(indexes, lengths, strict=True):
        counts[member] += int(length)
    return _node_infos(live, info, counts)


def _queued(client: Any, commands: _Commands) -> Any:
    """A non-transactional pipeline of ``client`` holding ``commands``."""
    pipe = client.pipeline(transaction=False)
    for name, *args in commands:
        getattr(pipe, name)(*args)
    return pipe


def _run_pipelined(client: SyncClient, op: Generator[_Commands, list[Any], T]) -> T:
    """Drive ``op`` on a blocking client: each yielded batch is one pipeline."""
    commands = next(op)
    while True:
        try:
            commands = op.send(_queued(client, commands).execute())
        except StopIteration as done:
            result: T = done.value
            return result


def _node_infos(
    live: dict[Any, float], info: dict[Any, Any], counts: dict[str, int]
) -> list[NodeInfo]:
    beats = {_text(m): score for m, score in live.items()}
    details = {_text(m): json.loads(_text(v)) for m, v in info.items()}
    return [
        NodeInfo(
            member=member,
            last_heartbeat=beats[member] / 1000 if member in beats else None,
            connections=int(counts.get(member, 0)),
            info=details.get(member, {}),
        )
        for member in sorted(counts)
    ]


def _index_entries(raw: dict[Any, Any]) -> dict[str, tuple[Id, Id]]:
    return {_text(sid): parse_index_entry(entry) for sid, entry in raw.items()}


def _stale_checks(
    query: OrgQuery, entries: dict[str, tuple[Id, Id]]
) -> list[tuple[str, str, str]]:
    """``(sid, connections key, held-leave key)`` per entry, to verify on a cluster."""
    return [
        (sid, query.records_key(user_id), query.held_leave_key(user_id))
        for sid, (user_id, _lesson) in entries.items()
    ]


class _Scripts:
    """Our scripts, registered with one client (redis-py ``Script`` objects), and the
    batched form of those that handler calls send in bursts, by the plain one's sha."""

    def __init__(self, register: Any) -> None:
        self.connect, self.disconnect = register(_CONNECT_LUA), register(_DISCONNECT_LUA)
        self.finish, self.due = register(_FINISH_LUA), register(_DUE_LUA)
        self.heartbeat, self.claim = register(_HEARTBEAT_LUA), register(_CLAIM_LUA)
        self.renew = register(_RENEW_LUA)
        self.batched = {
            self.connect.sha: register(_batched(_CONNECT_LUA)),
            self.disconnect.sha: register(_batched(_DISCONNECT_LUA)),
        }


class _Turn:
    """A script call of a thread, queued while another thread sends (RedisStore)."""

    __slots__ = ("call", "done", "promoted", "reply", "script")

    def __init__(self, script: Any, call: Invocation) -> None:
        self.script, self.call = script, call
        self.done = threading.Event()  # sent by another thread, or our turn to send
        self.promoted = False  # our turn: send this call and those queued since
        self.reply: Any = None


class RedisStore:
    """Presence in Redis through a blocking redis-py client (``Redis`` or ``RedisCluster``).

    On a standalone Redis every operation is one script call. On a cluster the org
    index lives in another slot than the user's keys: it is written before the script
    (so it is always a superset of the truth), cleaned after it, and verified lazily
    when read.
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
        self._timeout = timeout
        self._scripts = _Scripts(self._client.register_script)
        self._turns = threading.Lock()
        self._busy = False  # a thread is sending script calls
        self._waiting: list[_Turn] = []

    @property
    def client(self) -> SyncClient:
        """The client the store's handler calls use."""
        return self._client

    def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        keys, args = _connect_call(request, local_index=not self._cluster)
        if not self._cluster:
            return _connect_outcome(self._script("connect", self._scripts.connect, keys, args))
        with _store_errors("connect"):
            self._client.hset(request.org_index_key, request.sid, request.index_entry)
            self._client.hset(request.node_index_key, request.sid, request.node_entry)
            outcome = _connect_outcome(self._scripts.connect(keys=keys, args=args))
            if outcome.status is ConnectStatus.STALE:
                self._client.hdel(request.org_index_key, request.sid)
                self._client.hdel(request.node_index_key, request.sid)
            if request.snapshot is not None:
                entries = self.org_connections(request.snapshot)
                outcome = replace(outcome, snapshot=tuple(entries.values()))
            return outcome

    def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        keys, args = _disconnect_call(request, local_index=not self._cluster)
        if not self._cluster:
            reply = self._script("disconnect", self._scripts.disconnect, keys, args)
            return _disconnect_outcome(request.sid, reply)
        with _store_errors("disconnect"):
            outcome = _disconnect_outcome(
                request.sid, self._scripts.disconnect(keys=keys, args=args)
            )
            self._client.hdel(request.node_index_key, request.sid)
            if outcome.deferred:
                due = outcome.at * 1000 + request.layout.leave_grace_ms
                self._client.zadd(request.leave_queue_key, {request.queue_member: due})
            else:
                self._client.hdel(request.org_index_key, request.sid)
            return outcome

    def _script(self, operation: str, script: Any, keys: list[str], args: list[str | int]) -> Any:
        """Run a script on a standalone Redis; calls made by other threads while one is
        in flight share one round trip.

        One thread at a time sends: alone, its own call; otherwise its call and every
        call that queued meanwhile, as batched EVALSHAs in one pipeline (as
        :class:`AsyncRedisStore` does). Then it hands the turn to the first thread that
        queued since, so no thread sends more than one round trip for the others.
        """
        mine = _Turn(script, (keys, args))
        with self._turns:
            leads = not self._busy
            if leads:
                self._busy = True
            else:
                self._waiting.append(mine)
        if leads or self._await_turn(mine, operation):
            try:
                with self._turns:
                    others, self._waiting = self._waiting, []
                if others:
                    self._send_turns([mine, *others])
                else:
                    try:
                        mine.reply = script(keys=keys, args=args)
                    except Exception as exc:
                        mine.reply = exc
            finally:
                self._hand_over()
        if isinstance(mine.reply, Exception):
            raise _store_error(operation, mine.reply) from mine.reply
        return mine.reply

    def _await_turn(self, mine: _Turn, operation: str) -> bool:
        """Wait until another thread sent this call (``False``) or handed us the turn."""
        deadline = None if self._timeout is None else self._timeout * _OPERATION_TIMEOUTS
        if mine.done.wait(deadline):
            return mine.promoted
        with self._turns:
            if mine.promoted:
                return True
            if mine in self._waiting:
                self._waiting.remove(mine)  # never sent
        raise _store_error(operation, TimeoutError("no turn to send within the deadline"))

    def _send_turns(self, turns: list[_Turn]) -> None:
        # Every queued thread gets a reply, even if this one is interrupted (GreenletExit).
        replies: list[Any] = [RedisError("the sending thread was interrupted")] * len(turns)
        try:
            replies = self._batch_replies([(turn.script, turn.call) for turn in turns])
        except Exception as exc:
            replies = [exc] * len(turns)
        finally:
            for turn, reply in zip(turns, replies, strict=True):
                turn.reply = reply
                turn.done.set()

    def _batch_replies(self, calls: list[tuple[Any, Invocation]]) -> list[Any]:
        """One reply (or error) per call: batched EVALSHAs in one pipelined round trip,
        and a second one after loading the scripts if Redis had lost them (NOSCRIPT)."""
        replies = self._pipelined(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # e.g. after a failover
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                self._client.script_load(self._scripts.batched[script.sha].script)
            again = self._pipelined([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _pipelined(self, calls: list[tuple[Any, Invocation]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        sizes = _queue_runs(pipe, self._scripts.batched, calls)
        return _unbatched(pipe.execute(raise_on_error=False), sizes)

    def _hand_over(self) -> None:
        with self._turns:
            if self._waiting:
                successor = self._waiting.pop(0)
                successor.promoted = True
                successor.done.set()
            else:
                self._busy = False

    def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Members of the leave queue whose grace has ended (by the Redis clock)."""
        with _store_errors("due_leaves"):
            return [_text(m) for m in self._scripts.due(keys=[queue_key], args=[limit])]

    def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due; exactly one caller gets its outcome."""
        keys, args = _finish_call(request, local_index=not self._cluster)
        with _store_errors("finish_leave"):
            finished = _finish_outcome(self._scripts.finish(keys=keys, args=args))
            if self._cluster and finished.due is None:
                self._client.zrem(request.leave_queue_key, request.queue_member)
                if finished.outcome is not None and finished.outcome.record is not None:
                    self._client.hdel(request.org_index_key, finished.outcome.record.sid)
            return finished

    def presence(self, alive_key: str, connections_key: str, state_field: str) -> UserPresence:
        """A (user, role)'s alive hash and connection records (one round trip)."""
        with _store_errors("presence"):
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(alive_key)
            pipe.hgetall(connections_key)
            alive, records = pipe.execute()
            return _user_presence(alive, records, state_field)

    def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's connections in a role."""
        with _store_errors("org_connections"):
            entries = _index_entries(self._client.hgetall(query.index_key))
            if not self._cluster or not entries:
                return entries
            checks = _stale_checks(query, entries)
            pipe = self._client.pipeline(transaction=False)
            for sid, conns, held in checks:
                pipe.hexists(conns, RECORD_FIELD + sid)
                pipe.hget(held, "sid")
            replies = pipe.execute()
            stale = [
                sid
                for (sid, _c, _h), live, held_sid in zip(
                    checks, replies[::2], replies[1::2], strict=True
                )
                if not live and (held_sid is None or _text(held_sid) != sid)
            ]
            if stale:
                self._client.hdel(query.index_key, *stale)
            return {sid: entry for sid, entry in entries.items() if sid not in stale}

    def disconnect_many(self, requests: Sequence[DisconnectRequest]) -> list[DisconnectOutcome]:
        """Many disconnects (a sweep): one pipelined round trip on a standalone Redis."""
        if self._cluster:
            return [self.disconnect(request) for request in requests]
        with _store_errors("disconnect_many"):
            calls = [
                (self._scripts.disconnect, _disconnect_call(r, local_index=True)) for r in requests
            ]
            replies = _raise_failed(self._batch_replies(calls))
            return [
                _disconnect_outcome(r.sid, reply)
                for r, reply in zip(requests, replies, strict=True)
            ]

    def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp this node incarnation alive; ``False`` when it was fenced (swept)."""
        with _store_errors("heartbeat"):
            return _heartbeat_ok(self._scripts.heartbeat(keys=call.keys, args=call.args))

    def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep (or a stale claim), if any."""
        with _store_errors("claim_node"):
            reply = self._scripts.claim(
                keys=[keys.live_nodes(), keys.claimed_nodes()], args=[timeout_ms, claim_ttl_ms]
            )
            return _text(reply[0]) if reply else None

    def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index (one pipelined round trip)."""
        with _store_errors("node_connections"):
            pipe = self._client.pipeline(transaction=False)
            for key in index_keys:
                pipe.hgetall(key)
            return _merge_entries(pipe.execute())

    def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend this sweeper's claim on ``member`` (between batches)."""
        with _store_errors("renew_claim"):
            self._scripts.renew(keys=[keys.claimed_nodes()], args=[member, claim_ttl_ms])

    def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation (its index must be empty)."""
        with _store_errors("release_node"):
            _release_commands(self._client.pipeline(transaction=False), keys, member).execute()

    def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation, for operators (two round trips)."""
        with _store_errors("nodes"):
            return _run_pipelined(self._client, _nodes_op(keys))

    def close(self) -> None:
        """Close the store's own connection pool (never the integrator's client).

        redis-py leaves a pool that was passed in open when its client closes, so the
        pool the store built is disconnected here, on every redis-py version."""
        if self._owned:
            self._client.close()
            pool = getattr(self._client, "connection_pool", None)  # none on a cluster
            if pool is not None:
                pool.disconnect()


async def _within(deadline: float | None, call: Awaitable[T]) -> T:
    """``await call``, given up (``TimeoutError``) after ``deadline`` seconds."""
    if deadline is None:
        return await call
    if _timeout_block is None:  # Python 3.10
        return await asyncio.wait_for(call, deadline)
    async with _timeout_block(deadline):
        return await call


_FAILURES = (RedisError, TimeoutError, asyncio.TimeoutError)
"""What a failed call raises (``asyncio.TimeoutError`` is another class before 3.11)."""

_Waiting = tuple[Any, Invocation, "asyncio.Future[Any]", str]
"""A coalesced script call: the script, its keys and args, its caller's future and the
operation (for the error)."""


def _failure(operation: str, exc: Exception) -> Exception:
    """What a coalesced call raises: a Redis failure as a :class:`StoreError`."""
    if not isinstance(exc, _FAILURES):
        return exc
    error = _store_error(operation, exc)
    error.__cause__ = exc
    return error


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
        # Calls in flight at once: never more than the pool holds (a burst waits).
        self._slots = asyncio.Semaphore(pool_size(pool, max_connections))
        self._in_flight = 0
        self._waiting: list[_Waiting] = []
        self._batches: set[asyncio.Future[None]] = set()
        self._scripts = _Scripts(self._client.register_script)

    @property
    def client(self) -> AsyncClient:
        """The client the store's handler calls use."""
        return self._client

    async def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection: one atomic script call."""
        if self._cluster:
            return await self._bounded("connect", self._cluster_connect(request))
        keys, args = _connect_call(request, local_index=True)
        return _connect_outcome(await self._script("connect", self._scripts.connect, keys, args))

    async def _cluster_connect(self, request: ConnectRequest) -> ConnectOutcome:
        keys, args = _connect_call(request, local_index=False)
        await self._client.hset(request.org_index_key, request.sid, request.index_entry)
        await self._client.hset(request.node_index_key, request.sid, request.node_entry)
        outcome = _connect_outcome(await self._scripts.connect(keys=keys, args=args))
        if outcome.status is ConnectStatus.STALE:
            await self._client.hdel(request.org_index_key, request.sid)
            await self._client.hdel(request.node_index_key, request.sid)
        if request.snapshot is not None:
            entries = await self._org_connections(request.snapshot)
            outcome = replace(outcome, snapshot=tuple(entries.values()))
        return outcome

    async def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection: one atomic script call, idempotent per sid."""
        if self._cluster:
            return await self._bounded("disconnect", self._cluster_disconnect(request))
        keys, args = _disconnect_call(request, local_index=True)
        reply = await self._script("disconnect", self._scripts.disconnect, keys, args)
        return _disconnect_outcome(request.sid, reply)

    async def _cluster_disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        keys, args = _disconnect_call(request, local_index=False)
        outcome = _disconnect_outcome(
            request.sid, await self._scripts.disconnect(keys=keys, args=args)
        )
        await self._client.hdel(request.node_index_key, request.sid)
        if outcome.deferred:
            due = outcome.at * 1000 + request.layout.leave_grace_ms
            await self._client.zadd(request.leave_queue_key, {request.queue_member: due})
        else:
            await self._client.hdel(request.org_index_key, request.sid)
        return outcome

    async def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Members of the leave queue whose grace has ended (by the Redis clock)."""
        replies = await self._bounded(
            "due_leaves", self._scripts.due(keys=[queue_key], args=[limit])
        )
        return [_text(m) for m in replies]

    async def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due; exactly one caller gets its outcome."""
        return await self._bounded("finish_leave", self._do_finish(request))

    async def _do_finish(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        keys, args = _finish_call(request, local_index=not self._cluster)
        finished = _finish_outcome(await self._scripts.finish(keys=keys, args=args))
        if self._cluster and finished.due is None:
            await self._client.zrem(request.leave_queue_key, request.queue_member)
            if finished.outcome is not None and finished.outcome.record is not None:
                await self._client.hdel(request.org_index_key, finished.outcome.record.sid)
        return finished

    async def presence(
        self, alive_key: str, connections_key: str, state_field: str
    ) -> UserPresence:
        """A (user, role)'s alive hash and connection records (one round trip)."""

        async def read() -> UserPresence:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(alive_key)
            pipe.hgetall(connections_key)
            alive, records = await pipe.execute()
            return _user_presence(alive, records, state_field)

        return await self._bounded("presence", read())

    async def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's connections in a role."""
        return await self._bounded("org_connections", self._org_connections(query))

    async def _org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        entries = _index_entries(await self._client.hgetall(query.index_key))
        if not self._cluster or not entries:
            return entries
        checks = _stale_checks(query, entries)
        pipe = self._client.pipeline(transaction=False)
        for sid, conns, held in checks:
            pipe.hexists(conns, RECORD_FIELD + sid)
            pipe.hget(held, "sid")
        replies = await pipe.execute()
        stale = [
            sid
            for (sid, _c, _h), live, held_sid in zip(
                checks, replies[::2], replies[1::2], strict=True
            )
            if not live and (held_sid is None or _text(held_sid) != sid)
        ]
        if stale:
            await self._client.hdel(query.index_key, *stale)
        return {sid: entry for sid, entry in entries.items() if sid not in stale}

    async def disconnect_many(
        self, requests: Sequence[DisconnectRequest]
    ) -> list[DisconnectOutcome]:
        """Many disconnects (a sweep): one pipelined round trip on a standalone Redis."""
        if self._cluster:
            return list(await asyncio.gather(*(self.disconnect(r) for r in requests)))

        async def run() -> list[DisconnectOutcome]:
            calls = [
                (self._scripts.disconnect, _disconnect_call(r, local_index=True)) for r in requests
            ]
            replies = _raise_failed(await self._batch_replies(calls))
            return [
                _disconnect_outcome(r.sid, reply)
                for r, reply in zip(requests, replies, strict=True)
            ]

        return await self._bounded("disconnect_many", run(), scale=len(requests))

    async def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp this node incarnation alive; ``False`` when it was fenced (swept)."""
        reply = await self._bounded(
            "heartbeat", self._scripts.heartbeat(keys=call.keys, args=call.args)
        )
        return _heartbeat_ok(reply)

    async def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation to sweep (or a stale claim), if any."""
        reply = await self._bounded(
            "claim_node",
            self._scripts.claim(
                keys=[keys.live_nodes(), keys.claimed_nodes()], args=[timeout_ms, claim_ttl_ms]
            ),
        )
        return _text(reply[0]) if reply else None

    async def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index (one pipelined round trip)."""

        async def run() -> dict[str, str]:
            pipe = self._client.pipeline(transaction=False)
            for key in index_keys:
                pipe.hgetall(key)
            return _merge_entries(await pipe.execute())

        return await self._bounded("node_connections", run(), scale=len(index_keys))

    async def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend this sweeper's claim on ``member`` (between batches)."""

        renewal = self._scripts.renew(keys=[keys.claimed_nodes()], args=[member, claim_ttl_ms])
        await self._bounded("renew_claim", renewal)

    async def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation (its index must be empty)."""

        pipe = _release_commands(self._client.pipeline(transaction=False), keys, member)
        await self._bounded("release_node", pipe.execute())

    async def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation, for operators (two round trips)."""
        return await self._run_pipelined("nodes", _nodes_op(keys))

    async def _run_pipelined(self, operation: str, op: Generator[_Commands, list[Any], T]) -> T:
        """Drive ``op`` (as :func:`_run_pipelined` does): each batch is one bounded
        pipeline."""
        commands = next(op)
        while True:
            replies = await self._bounded(operation, _queued(self._client, commands).execute())
            try:
                commands = op.send(replies)
            except StopIteration as done:
                result: T = done.value
                return result

    def _script(
        self, operation: str, script: Any, keys: list[str], args: list[str | int]
    ) -> Awaitable[Any]:
        """Run a script on a standalone Redis; calls made while others are in flight
        share one round trip.

        Alone, a call goes straight to Redis. Under a burst (a disconnect storm), the
        calls that arrive while one is in flight are sent together when the event loop
        next runs: one batched EVALSHA per run of calls of the same script, in order, at
        most ``_BATCH_CALLS`` calls per batch and each batch on its own connection. A
        batch takes one connection slot and one deadline for all its calls.
        """
        if not self._in_flight:
            return self._alone(operation, script(keys=keys, args=args))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()  # failed with a StoreError
        self._waiting.append((script, (keys, args), future, operation))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return future

    async def _alone(self, operation: str, call: Awaitable[Any]) -> Any:
        self._in_flight += 1
        try:
            return await self._bounded(operation, call)
        finally:
            self._in_flight -= 1

    def _send_waiting(self) -> None:
        # Each batch on its own connection: Redis runs one while we read the last.
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), _BATCH_CALLS):
            task = asyncio.ensure_future(self._send_batch(waiting[start : start + _BATCH_CALLS]))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send_batch(self, batch: list[_Waiting]) -> None:
        self._in_flight += 1
        try:
            deadline = (
                None
                if self._timeout is None
                else self._timeout * _OPERATION_TIMEOUTS + len(batch) * _SECONDS_PER_CALL
            )
            calls = [(script, call) for script, call, _future, _operation in batch]
            # One connection (pool slot) and one deadline for the whole batch.
            replies = await _within(deadline, self._limited(self._batch_replies(calls)))
            for (_script, _call, future, operation), reply in zip(batch, replies, strict=True):
                if not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(_failure(operation, reply))
                    else:
                        future.set_result(reply)
        except Exception as exc:
            for _script, _call, future, operation in batch:
                if not future.done():
                    future.set_exception(_failure(operation, exc))
        finally:
            self._in_flight -= 1

    async def _batch_replies(self, calls: list[tuple[Any, Invocation]]) -> list[Any]:
        """One reply (or error) per call: batched EVALSHAs in one pipelined round trip,
        and a second one after loading the scripts if Redis had lost them (NOSCRIPT)."""
        replies = await self._pipelined(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # e.g. after a failover
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                await self._client.script_load(self._scripts.batched[script.sha].script)
            again = await self._pipelined([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipelined(self, calls: list[tuple[Any, Invocation]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        sizes = _queue_runs(pipe, self._scripts.batched, calls)
        return _unbatched(await pipe.execute(raise_on_error=False), sizes)

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
            if self._timeout is None:
                return await self._limited(call)
            deadline = self._timeout * _OPERATION_TIMEOUTS + scale * _SECONDS_PER_CALL
            if _timeout_block is None:  # Python 3.10
                return await asyncio.wait_for(self._limited(call), deadline)
            async with _timeout_block(deadline):  # no extra task per call
                return await self._limited(call)
        except _FAILURES as exc:
            raise _store_error(operation, exc) from exc

    async def aclose(self) -> None:
        """Close the store's own connection pool (never the integrator's client).

        As :meth:`RedisStore.close`: the pool the store built is disconnected too."""
        if self._owned:
            client: Any = self._client  # owned: a redis.asyncio.Redis (never a cluster)
            await client.aclose()
            await client.connection_pool.disconnect()


def _store_error(operation: str, exc: BaseException) -> StoreError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return StoreError(f"Redis failed during {operation}: {detail}")


@contextmanager
def _store_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise _store_error(operation, exc) from exc
