"""The Redis stores' operations, written once for redis-py's blocking and asyncio clients.

An operation is a generator: it yields each I/O it needs as a *step* (a command, a
pipeline or a script call) and is sent back the reply; it returns the result.
:func:`run` drives one on a blocking client and :func:`run_async` on an asyncio
client: the only difference between the two stores' Redis logic is that the second
awaits what :func:`_start` returns. So the cluster protocol (indexes written before
the script and cleaned up on ``STALE``, lazy verification of the org index), the
NOSCRIPT reload of batched calls and every pipeline exist once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

from redis.exceptions import NoScriptError, RedisError

from ._codec import RECORD_FIELD
from ._errors import StoreError
from ._keys import KeySchema
from ._model import (
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
    OrgQuery,
    UserPresence,
)
from ._redis_scripts import (
    Commands,
    Invocation,
    Scripts,
    batch_commands,
    connect_call,
    connect_outcome,
    disconnect_call,
    disconnect_outcome,
    finish_call,
    finish_outcome,
    heartbeat_ok,
    index_entries,
    merged_entries,
    node_infos,
    text,
    unbatched,
    user_presence,
)
from ._session import Id

T = TypeVar("T")


class Command(NamedTuple):
    """One command: ``client.<name>(*args)``."""

    name: str
    args: tuple[Any, ...]


class Pipeline(NamedTuple):
    """Commands in one non-transactional pipeline; replies in order (failures as
    exceptions among them unless ``raise_on_error``)."""

    commands: Commands
    raise_on_error: bool = True


class Script(NamedTuple):
    """A registered script's call (EVALSHA, reloaded by redis-py on NOSCRIPT)."""

    script: Any
    keys: list[str]
    args: list[str | int]


Step = Command | Pipeline | Script
Op = Generator[Step, Any, T]
"""A store operation: it yields its steps and is sent each one's reply."""

FAILURES = (RedisError, TimeoutError, asyncio.TimeoutError)
"""What a failed call raises (``asyncio.TimeoutError`` is another class before 3.11)."""


def _start(client: Any, step: Step) -> Any:
    """Send ``step`` with ``client``: its reply, or (asyncio client) an awaitable of it."""
    if isinstance(step, Script):
        return step.script(keys=step.keys, args=step.args)
    if isinstance(step, Pipeline):
        pipe = client.pipeline(transaction=False)
        for command, *command_args in step.commands:
            getattr(pipe, command)(*command_args)
        return pipe.execute(raise_on_error=step.raise_on_error)
    name, args = step
    return getattr(client, name)(*args)


def run(client: Any, op: Op[T]) -> T:
    """Drive ``op`` with a blocking redis-py client (a failed step is raised in ``op``)."""
    try:
        step = next(op)
        while True:
            try:
                reply = _start(client, step)
            except Exception as exc:
                step = op.throw(exc)
            else:
                step = op.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_async(client: Any, op: Op[T]) -> T:
    """Drive ``op`` with a ``redis.asyncio`` client (a failed step is raised in ``op``)."""
    try:
        step = next(op)
        while True:
            try:
                reply = await _start(client, step)
            except Exception as exc:
                step = op.throw(exc)
            else:
                step = op.send(reply)
    except StopIteration as done:
        result: T = done.value
        return result


def store_error(operation: str, exc: BaseException) -> StoreError:
    """The :class:`StoreError` for a failure of ``operation``."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return StoreError(f"Redis failed during {operation}: {detail}")


@contextmanager
def store_errors(operation: str) -> Iterator[None]:
    """Raise a Redis failure inside the block as a :class:`StoreError`."""
    try:
        yield
    except RedisError as exc:
        raise store_error(operation, exc) from exc


# --- script calls ------------------------------------------------------------------


def script_call(script: Any, keys: list[str], args: list[str | int]) -> Op[Any]:
    """A handler's script call: ``EVALSHA`` sent as a plain command (redis-py's ``Script``
    wrapper costs about as much again on the hot path); if Redis lost the script
    (NOSCRIPT, e.g. after a failover) it is loaded and sent again, by the same client
    (the store's kept connection, for a lone call: no second connection needed)."""
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return (yield Command("execute_command", command))
    except NoScriptError:
        yield Command("execute_command", ("SCRIPT", "LOAD", script.script))
        return (yield Command("execute_command", command))


def batch_replies(scripts: Scripts, calls: Sequence[tuple[Any, Invocation]]) -> Op[list[Any]]:
    """One reply (or error) per ``(script, call)``: batched EVALSHAs in one pipelined round
    trip, and a second one after loading the scripts if Redis had lost them (NOSCRIPT,
    e.g. after a failover)."""
    commands, sizes = batch_commands(scripts.batched, calls)
    replies = unbatched((yield Pipeline(commands, raise_on_error=False)), sizes)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            yield Command("script_load", (scripts.batched[script.sha].script,))
        commands, sizes = batch_commands(scripts.batched, [calls[i] for i in missing])
        again = unbatched((yield Pipeline(commands, raise_on_error=False)), sizes)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


def disconnect_many(
    scripts: Scripts, requests: Sequence[DisconnectRequest]
) -> Op[list[DisconnectOutcome]]:
    """Many disconnects on a standalone Redis (a sweep): one pipelined round trip."""
    calls = [(scripts.disconnect, disconnect_call(r, local_index=True)) for r in requests]
    replies = yield from batch_replies(scripts, calls)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return [disconnect_outcome(r.sid, reply) for r, reply in zip(requests, replies, strict=True)]


# --- the cluster protocol ----------------------------------------------------------
# On a cluster an organisation's index and a node's index live in other slots than the
# user's keys, so a script cannot write them: they are written before the script (the
# index is always a superset of the truth), cleaned after it, and verified when read.


def cluster_connect(scripts: Scripts, r: ConnectRequest) -> Op[ConnectOutcome]:
    """A connect on a cluster: index first, then the script; cleanup if refused."""
    keys, args = connect_call(r, local_index=False)
    yield Pipeline(
        [
            ("hset", r.keys.org_index, r.sid, r.index_entry),
            ("hset", r.node_index_key, r.sid, r.node_entry),
        ]
    )
    outcome = connect_outcome((yield Script(scripts.connect, keys, args)))
    if outcome.status is ConnectStatus.STALE:
        yield Pipeline([("hdel", r.keys.org_index, r.sid), ("hdel", r.node_index_key, r.sid)])
    if r.snapshot is not None:
        entries = yield from org_connections(r.snapshot, cluster=True)
        outcome = replace(outcome, snapshot=tuple(entries.values()))
    return outcome


def cluster_disconnect(scripts: Scripts, r: DisconnectRequest) -> Op[DisconnectOutcome]:
    """A disconnect on a cluster: the script, then the indexes (a held-back leave is
    queued, its org index entry kept until the leave runs)."""
    keys, args = disconnect_call(r, local_index=False)
    outcome = disconnect_outcome(r.sid, (yield Script(scripts.disconnect, keys, args)))
    cleanup: Commands = [("hdel", r.node_index_key, r.sid)]
    if outcome.deferred:  # queued until its grace ends; its org index entry stays
        due = outcome.at * 1000 + r.layout.leave_grace_ms
        cleanup.append(("zadd", r.keys.leave_queue, {r.keys.queue_member: due}))
    elif not (r.owner and outcome.status is DisconnectStatus.UNKNOWN):
        # (a record not this owner's may be live: reads verify the entry instead)
        cleanup.append(("hdel", r.keys.org_index, r.sid))
    yield Pipeline(cleanup)
    return outcome


def finish_leave(
    scripts: Scripts, r: FinishLeaveRequest, *, cluster: bool
) -> Op[FinishLeaveOutcome]:
    """Run a held-back leave if due (on a cluster, then unqueue it and clean its index)."""
    keys, args = finish_call(r, local_index=not cluster)
    finished = finish_outcome((yield Script(scripts.finish, keys, args)))
    if cluster and finished.due is None:
        cleanup: Commands = [("zrem", r.keys.leave_queue, r.keys.queue_member)]
        if finished.outcome is not None and finished.outcome.record is not None:
            cleanup.append(("hdel", r.keys.org_index, finished.outcome.record.sid))
        yield Pipeline(cleanup)
    return finished


def org_connections(query: OrgQuery, *, cluster: bool) -> Op[dict[str, tuple[Id, Id]]]:
    """An org index; on a cluster, verified against each user's records (entries whose
    connection is gone, and not held back by a grace period, are removed)."""
    entries = index_entries((yield Command("hgetall", (query.index_key,))))
    if not cluster or not entries:
        return entries
    checks: Commands = []
    for sid, (user_id, _lesson) in entries.items():
        keys = query.user_keys(user_id)
        checks.append(("hexists", keys.records, RECORD_FIELD + sid))
        checks.append(("hget", keys.held_leave, "sid"))
    replies = yield Pipeline(checks)
    stale = [
        sid
        for sid, live, held_sid in zip(entries, replies[::2], replies[1::2], strict=True)
        if not live and (held_sid is None or text(held_sid) != sid)
    ]
    if stale:
        yield Command("hdel", (query.index_key, *stale))
    return {sid: entry for sid, entry in entries.items() if sid not in stale}


# --- reads and the node registry ---------------------------------------------------


def presence(alive_key: str, connections_key: str, state_field: str) -> Op[UserPresence]:
    """A (user, role)'s alive hash and connection records (one round trip)."""
    alive, records = yield Pipeline([("hgetall", alive_key), ("hgetall", connections_key)])
    return user_presence(alive, records, state_field)


def due_leaves(scripts: Scripts, queue_key: str, limit: int) -> Op[list[str]]:
    """Members of the leave queue whose grace has ended (by the Redis clock)."""
    return [text(m) for m in (yield Script(scripts.due, [queue_key], [limit]))]


def heartbeat(scripts: Scripts, call: Heartbeat) -> Op[bool]:
    """Stamp a node incarnation alive; ``False`` when it was fenced (swept)."""
    return heartbeat_ok((yield Script(scripts.heartbeat, call.keys, call.args)))


def claim_node(
    scripts: Scripts, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int
) -> Op[str | None]:
    """Claim one dead node incarnation to sweep (or a stale claim), if any."""
    reply = yield Script(
        scripts.claim, [keys.live_nodes(), keys.claimed_nodes()], [timeout_ms, claim_ttl_ms]
    )
    return text(reply[0]) if reply else None


def node_connections(index_keys: Sequence[str]) -> Op[dict[str, str]]:
    """Every entry of these buckets of a node's index (one pipelined round trip)."""
    return merged_entries((yield Pipeline([("hgetall", key) for key in index_keys])))


def renew_claim(scripts: Scripts, keys: KeySchema, member: str, claim_ttl_ms: int) -> Op[None]:
    """Extend a sweeper's claim on ``member``."""
    yield Script(scripts.renew, [keys.claimed_nodes()], [member, claim_ttl_ms])


def release_node(keys: KeySchema, member: str) -> Op[None]:
    """Forget a swept node incarnation (one round trip)."""
    yield Pipeline(
        [
            ("zrem", keys.claimed_nodes(), member),
            ("zrem", keys.live_nodes(), member),
            ("hdel", keys.node_info(), member),
            ("delete", *keys.node_indexes(member)),  # one hash tag: one slot, one command
        ]
    )


def nodes(keys: KeySchema) -> Op[list[NodeInfo]]:
    """Every registered node incarnation, with its index's size (two round trips)."""
    scored, claimed, info = yield Pipeline(
        [
            ("zrange", keys.live_nodes(), 0, -1, False, True),  # desc=False, withscores=True
            ("zrange", keys.claimed_nodes(), 0, -1),
            ("hgetall", keys.node_info()),
        ]
    )
    live = {member: float(score) for member, score in scored}
    members = sorted({text(m) for m in [*live, *claimed, *info]})
    indexes = [(member, index) for member in members for index in keys.node_indexes(member)]
    lengths = yield Pipeline([("hlen", index) for _, index in indexes])
    counts = dict.fromkeys(members, 0)
    for (member, _), length in zip(indexes, lengths, strict=True):
        counts[member] += int(length)
    return node_infos(live, info, counts)
