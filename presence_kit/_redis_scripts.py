"""The Redis stores' scripts: what each call sends (keys and args) and what its reply means.

Pure functions over the request types of :mod:`presence_kit._model`; no I/O. The
scripts (``lua/*.lua``) are the state machine of presence, and
:class:`~presence_kit.memory.MemoryStore` is their mirror. They return only integers
and strings, so RESP2 and RESP3 and ``decode_responses`` on or off give the same
results: every reply goes through :func:`text` or ``int``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ._codec import (
    ConnectionRecord,
    id_list,
    metas_of,
    parse_index_entry,
    records_of,
    snapshot_metas,
    with_meta,
)
from ._construct import maker
from ._keys import UserKeys
from ._model import (
    ConnectOutcome,
    ConnectRequest,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectRequest,
    DisconnectStatus,
    FinishLeaveOutcome,
    FinishLeaveRequest,
    FinishLeaveStatus,
    NodeInfo,
    OnlineCount,
    StoreLayout,
    UpdateOutcome,
    UpdateRequest,
    UpdateStatus,
    UserPresence,
)
from ._session import Id

Invocation = tuple[list[str], list[str | int]]
"""One script call's keys and args."""

BATCH_CALLS = 50
"""Calls per batched EVALSHA: enough to make a burst cheap, few enough that one script
holds Redis up for only a couple of milliseconds."""


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


_BATCH_LUA = _lua("batch")
INDEX_LUA = _lua("index") + _lua("feed")
"""The functions that change an org index and its counts together (``lua/index.lua``)
and write the presence feed (``lua/feed.lua``), prepended to every script that changes
presence."""


def indexed(name: str) -> str:
    """Script ``name`` with the index functions before it."""
    return INDEX_LUA + _lua(name)


def _batched(script: str, library: str = "") -> str:
    """``script`` run once per call of a batch, in one EVALSHA (see ``lua/batch.lua``),
    with ``library`` (the index functions) defined once, before it."""
    return library + _BATCH_LUA.replace("-- BODY\n", script, 1)


# --- what a call sends -------------------------------------------------------------


def _flag(value: bool) -> int:
    return 1 if value else 0


def _feed(
    keys: UserKeys, layout: StoreLayout, observed_ms: int, local_index: bool
) -> tuple[str, list[str | int]]:
    """The feed's key and args of a script call (``lua/feed.lua``'s ``feed_of``): the
    org's stream on a standalone Redis, the user's feed queue on a cluster (the kit
    moves it to the stream); the user's alive key and mode ``''`` when the feed is off."""
    if not layout.feed:
        return keys.alive, ["", 0, 0]
    if local_index:
        return keys.feed, ["s", layout.feed_retention_ms, observed_ms]
    return keys.feed_queue, ["c", layout.feed_retention_ms, observed_ms]


def connect_call(r: ConnectRequest, *, local_index: bool) -> Invocation:
    """``lua/connect.lua``'s keys and args. On a cluster (``local_index=False``) the
    indexes live in other slots: their keys are passed as the user's own key (never
    touched: the flags say so), so every key of the call hashes to the user's slot."""
    k = r.keys
    index_key = k.org_index if local_index else k.alive
    snapshot = r.snapshot is not None and local_index
    keys = [
        k.alive,
        k.records,
        r.tombstone_key,
        k.held_leave,
        index_key,
        r.snapshot.index_key if snapshot and r.snapshot else k.alive,
        r.node_index_key if local_index else k.alive,
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
        k.queue_member,  # the node entry: the same text
        r.attempt,
        k.org_counts,
        r.meta,
    ]
    feed_key, feed_args = _feed(k, r.layout, r.observed_ms, local_index)
    return [*keys, feed_key], [*args, *feed_args]


def disconnect_call(r: DisconnectRequest, *, local_index: bool) -> Invocation:
    """``lua/disconnect.lua``'s keys and args (``local_index`` as for :func:`connect_call`)."""
    k = r.keys
    keys = [
        k.alive,
        k.records,
        r.tombstone_key,
        k.held_leave,
        k.org_index if local_index else k.alive,
        k.leave_queue if local_index else k.alive,
        r.node_index_key if local_index else k.alive,
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
        k.queue_member,
        _flag(local_index),
        _flag(r.remember),
        r.attempt,
        r.owner,
        k.org_counts,
    ]
    feed_key, feed_args = _feed(k, r.layout, r.observed_ms, local_index)
    return [*keys, feed_key], [*args, *feed_args]


def finish_call(r: FinishLeaveRequest, *, local_index: bool) -> Invocation:
    """``lua/finish_leave.lua``'s keys and args."""
    k = r.keys
    keys = [
        k.alive,
        k.records,
        k.held_leave,
        k.org_index if local_index else k.alive,
        k.leave_queue if local_index else k.alive,
    ]
    args: list[str | int] = [
        r.layout.state_field,
        r.layout.disconnect_state,
        r.layout.offline_ttl,
        k.queue_member,
        _flag(local_index),
        k.org_counts,
    ]
    feed_key, feed_args = _feed(k, r.layout, r.observed_ms, local_index)
    return [*keys, feed_key], [*args, *feed_args]


def update_call(r: UpdateRequest, *, local_index: bool) -> Invocation:
    """``lua/update.lua``'s keys and args (``local_index`` as for :func:`connect_call`)."""
    k = r.keys
    keys = [k.alive, k.records, r.tombstone_key, k.org_index if local_index else k.alive]
    record, session = r.record.to_json(), r.record.session
    owner = f'"{r.record.node_id}/{r.record.incarnation}"'
    head = id_list(session.org_id, session.user_id, session.lesson_id, session.role)[:-1] + ","
    tail = record[len(head) + len(owner) :]
    args: list[str | int] = [
        r.sid,
        head,
        owner[1:-1],
        tail,
        _flag(r.tracks_alive),
        r.seq,
        _flag(r.meta is not None),
        r.meta or "",
        _flag(local_index),
        r.index_entry,
        _flag(r.index_meta),
        r.identity,
        k.org_counts,
        r.layout.connection_ttl,
    ]
    feed_key, feed_args = _feed(k, r.layout, r.observed_ms, local_index)
    return [*keys, feed_key], [*args, *feed_args]


def org_index_call(
    index_key: str, counts_prefix: str, op: str, items: Sequence[str]
) -> Invocation:
    """``lua/org_index.lua``'s keys and args: ``op`` (``set``, ``update``: ``items`` are
    sid, entry pairs; ``del``: sids) on an org index and its counts (a cluster's)."""
    return [index_key], [counts_prefix, op, *items]


# --- what a reply means ------------------------------------------------------------


def text(value: object) -> str:
    """A reply as text (bytes without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _by_value(enum: Any) -> dict[Any, Any]:
    """An enum's members by value, as text and as bytes (replies come as either)."""
    return {**{m.value: m for m in enum}, **{m.value.encode(): m for m in enum}}


_CONNECT_STATUS, _DISCONNECT_STATUS = _by_value(ConnectStatus), _by_value(DisconnectStatus)
_FINISH_STATUS = _by_value(FinishLeaveStatus)


_make_connect_outcome = maker(ConnectOutcome)
_make_disconnect_outcome = maker(DisconnectOutcome)


def connect_outcome(reply: Sequence[Any]) -> ConnectOutcome:
    """What ``lua/connect.lua`` did."""
    status, first, connections, version, now_ms, resumed, snapshot, attempt, earlier = reply[:9]
    return _make_connect_outcome(
        _CONNECT_STATUS.get(status) or ConnectStatus(text(status)),
        int(first) == 1,
        int(connections),
        int(version),
        int(now_ms) / 1000,
        int(resumed) == 1,
        tuple(map(parse_index_entry, snapshot)) if snapshot else (),
        text(attempt),
        int(earlier),
        snapshot_metas(snapshot) if snapshot else (),
    )


def disconnect_outcome(sid: str, reply: Sequence[Any]) -> DisconnectOutcome:
    """What ``lua/disconnect.lua`` did (or, for a repeat, what the first call did)."""
    status, last, version, at_ms, record, deferred, attempt = reply
    return _make_disconnect_outcome(
        _DISCONNECT_STATUS.get(status) or DisconnectStatus(text(status)),
        int(last) == 1,
        ConnectionRecord.from_json(sid, record) if record else None,
        int(version),
        int(at_ms) / 1000,
        int(deferred) == 1,
        text(attempt),
    )


def cancelled_leave(reply: Sequence[Any]) -> str:
    """The sid of the held-back leave a connect cancelled (``""``: none)."""
    return text(reply[9]) if len(reply) > 9 else ""


_UPDATE_STATUS = _by_value(UpdateStatus)


def update_outcome(sid: str, reply: Sequence[Any]) -> UpdateOutcome:
    """What ``lua/update.lua`` did (or, for a repeat, what the update's first try did)."""
    status, changed, version, now_ms, previous, record, meta, repeat, previous_meta = reply
    current = with_meta(ConnectionRecord.from_json(sid, record), meta) if record else None
    before = None
    if previous:
        before = with_meta(ConnectionRecord.from_json(sid, previous), previous_meta)
    return UpdateOutcome(
        status=_UPDATE_STATUS.get(status) or UpdateStatus(text(status)),
        record=current,
        previous=before,
        lesson_changed=int(changed) == 1,
        version=int(version),
        at=int(now_ms) / 1000,
        repeat=int(repeat) == 1,
    )


def finish_outcome(reply: Sequence[Any]) -> FinishLeaveOutcome:
    """What ``lua/finish_leave.lua`` did (its first field is a
    :class:`~presence_kit.FinishLeaveStatus` value)."""
    status, version, at_ms, sid, record, reason, due_ms = reply
    finish = _FINISH_STATUS.get(status) or FinishLeaveStatus(text(status))
    outcome = None
    if finish is FinishLeaveStatus.LEFT:
        outcome = DisconnectOutcome(
            status=DisconnectStatus.REMOVED,
            last=True,
            record=ConnectionRecord.from_json(text(sid), text(record)),
            version=int(version),
            at=int(at_ms) / 1000,
        )
    return FinishLeaveOutcome(
        outcome=outcome,
        reason=text(reason),
        due=int(due_ms) / 1000 if finish is FinishLeaveStatus.LATER else None,
        status=finish,
    )


def user_presence(
    alive: dict[Any, Any], record_hash: dict[Any, Any], state_field: str
) -> UserPresence:
    """A (user, role)'s presence from its alive hash and its records hash."""
    fields = {text(k): text(v) for k, v in alive.items()}
    stored = {text(k): text(v) for k, v in record_hash.items()}
    records, metas = records_of(stored), metas_of(stored)
    since = fields.get("since")
    return UserPresence(
        state=fields.get(state_field),
        connections=tuple(
            sorted(
                (
                    with_meta(ConnectionRecord.from_json(sid, value), metas.get(sid))
                    for sid, value in records.items()
                ),
                key=lambda record: record.sid,
            )
        ),
        since=int(since) / 1000 if since else None,
        last_reason=fields.get("reason"),
        version=int(fields.get("version", "0")),
    )


def merged_entries(hashes: Sequence[dict[Any, Any]]) -> dict[str, str]:
    """The entries of several hashes as one dict of text."""
    return {text(k): text(v) for entries in hashes for k, v in entries.items()}


def index_entries(raw: dict[Any, Any]) -> dict[str, tuple[Id, Id]]:
    """An org index: ``sid -> (user_id, lesson_id)``."""
    return {text(sid): parse_index_entry(entry) for sid, entry in raw.items()}


def heartbeat_ok(reply: Sequence[Any]) -> bool:
    """Whether ``lua/heartbeat.lua`` stamped the incarnation (``False``: fenced)."""
    return text(reply[0]) == "ok"


def node_infos(
    live: dict[Any, float], info: dict[Any, Any], counts: dict[str, int]
) -> list[NodeInfo]:
    """The node registry: heartbeats, info hashes and index sizes, by member."""
    beats = {text(m): score for m, score in live.items()}
    details = {text(m): json.loads(text(v)) for m, v in info.items()}
    return [
        NodeInfo(
            member=member,
            last_heartbeat=beats[member] / 1000 if member in beats else None,
            connections=int(counts.get(member, 0)),
            info=details.get(member, {}),
        )
        for member in sorted(counts)
    ]


def online_count(users: Any, totals: Any) -> OnlineCount:
    """``count_online``'s answer from the users hash's ``HLEN`` and the totals' ``HGET``."""
    return OnlineCount(users=int(users), connections=int(text(totals)) if totals else 0)


def time_ms() -> int:
    """This node's clock in milliseconds (the feed queues' registration times)."""
    return time.time_ns() // 1_000_000


def xadd_of(stream: str, queued: object, retention_ms: int) -> tuple[str | int, ...]:
    """The ``XADD`` of a feed entry queued by ``lua/feed.lua`` on a cluster (a JSON
    array of its field names and values), trimmed as the script would have."""
    fields = json.loads(text(queued))
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    oldest = max(int(values["at_ms"]) - retention_ms, 0)
    return ("XADD", stream, "MINID", "~", f"{oldest}-0", "*", *fields)
