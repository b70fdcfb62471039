"""The embedded in-process store: the same semantics as Redis, for one process.

:class:`MemoryStore` is the default store of both facades, the store of the demo, and
a convenient store for integrators' own tests. It keeps the same keys, values and
TTLs as :class:`~presence_kit.redis.RedisStore` (so the demo shows what Redis would
hold), is thread-safe, and never blocks, so :class:`~presence_kit.AsyncPresenceKit`
can call it from the event loop (each of its calls made awaitable by
``presence_kit._inline``). It is not shared between processes: a multi-node
deployment needs Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._codec import (
    HARD_TOMBSTONE,
    META_FIELD,
    OUTCOME_FIELD,
    RECORD_FIELD,
    SOFT_TOMBSTONE,
    UPDATE_FIELD,
    ConnectionRecord,
    Tombstone,
    decode_connect_outcome,
    decode_tombstone,
    decode_update_outcome,
    encode_connect_outcome,
    encode_tombstone,
    encode_update_outcome,
    id_list,
    lesson_key,
    metas_of,
    parse_index_entry,
    records_of,
    snapshot_metas,
    split_tombstone,
    with_meta,
)
from ._keys import KeySchema, UserKeys, count_keys
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
from ._session import Id

__all__ = ["MemoryStore"]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _owner(record: str) -> object:
    """The ``node/incarnation`` that wrote a record (``None``: unreadable)."""
    try:
        return json.loads(record)[4]
    except (ValueError, IndexError, TypeError):
        return None


def _owned(record: str | None, owner: str) -> bool:
    """A record exists and ``owner`` (``node/incarnation``; empty: anyone) wrote it (a
    record that cannot be parsed is anyone's, as ``lua/disconnect.lua`` has it)."""
    if record is None or not owner:
        return record is not None
    try:
        return bool(json.loads(record)[4] == owner)
    except (ValueError, IndexError, TypeError):
        return True


@dataclass(slots=True)
class _Entry:
    value: dict[str, str] | str
    expires_at: float | None = None


class MemoryStore:
    """A thread-safe, in-memory presence store with Redis's semantics.

    ``clock`` (seconds since the epoch) is injectable so tests can move time forward.
    """

    blocking = False
    """Calls never block, so the asyncio facade may call them from the event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, _Entry] = {}
        self._queue: dict[str, int] = {}  # the leave queue: member -> due (ms)
        self._live_nodes: dict[str, int] = {}  # node/incarnation -> last heartbeat (ms)
        self._claimed_nodes: dict[str, int] = {}  # node/incarnation -> claim expiry (ms)
        self._node_info: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- the Store port -------------------------------------------------------------

    def connect(self, request: ConnectRequest) -> ConnectOutcome:
        """Record a connection atomically (see :class:`~presence_kit.ConnectRequest`)."""
        with self._lock:
            now = self._clock()
            layout = request.layout
            records = self._hash(request.connections_key, now) or {}
            count = int(records.get("n", "0"))
            field = RECORD_FIELD + request.sid
            snapshot = self._snapshot(request, now)
            stone = self._get(request.tombstone_key, now)
            earlier = 0
            if isinstance(stone, str):
                connected = split_tombstone(stone)[0]
                first, version, attempt = decode_connect_outcome(connected)
                if first and attempt == request.attempt:  # see ConnectOutcome
                    earlier = version
                if not stone.startswith(SOFT_TOMBSTONE):
                    return ConnectOutcome(
                        status=ConnectStatus.STALE,
                        first=False,
                        connections=count,
                        version=0,
                        at=now,
                        snapshot=snapshot,
                        snapshot_meta=self._snapshot_meta(request, now),
                        attempt=request.attempt,
                        earlier_version=earlier,
                    )
                del self._keys[request.tombstone_key]  # swept, registered again
            outcome_field = OUTCOME_FIELD + request.sid
            if field in records:
                record = request.record.to_json()
                stored = records[field]
                if stored != record and _owner(stored) != _owner(record):
                    # an earlier incarnation's: make it ours
                    records[field] = record
                    node_index = self._hash(request.node_index_key, now) or {}
                    node_index[request.sid] = request.node_entry
                    self._keys[request.node_index_key] = _Entry(node_index)
                first, version, attempt = decode_connect_outcome(records.get(outcome_field))
                if attempt == "?":  # kept before outcomes were: the version now
                    version = self._version(request.alive_key, now) if request.tracks_alive else 0
                return ConnectOutcome(
                    status=ConnectStatus.REPEAT,
                    first=first,
                    connections=count,
                    version=version,
                    at=now,
                    snapshot=snapshot,
                    snapshot_meta=self._snapshot_meta(request, now),
                    attempt=attempt,
                )
            records[field] = request.record.to_json()
            count += 1
            records["n"] = str(count)
            separate = request.connections_key != request.alive_key
            expiry = now + layout.connection_ttl if separate else None
            self._keys[request.connections_key] = _Entry(records, expiry)
            self._index_set(request.keys, request.sid, request.index_entry, now)
            node_index = self._hash(request.node_index_key, now) or {}
            node_index[request.sid] = request.node_entry
            self._keys[request.node_index_key] = _Entry(node_index)
            first = count == 1
            held = self._hash(request.held_leave_key, now)
            resumed = held is not None
            if held is not None:
                del self._keys[request.held_leave_key]
                self._index_del(request.keys.org_index, request.keys.org_counts, held["sid"], now)
                first = False
            version = 0
            if request.tracks_alive:
                alive = records  # the records of such a role live in the alive hash
                version = int(alive.get("version", "0"))
                if first:
                    version += 1
                    alive["version"] = str(version)
                    alive["since"] = str(_ms(now))
                alive[layout.state_field] = layout.connect_state
                self._keys[request.alive_key] = _Entry(alive, None)
            records[outcome_field] = encode_connect_outcome(first, version, request.attempt)
            if request.meta:
                records[META_FIELD + request.sid] = request.meta
            return ConnectOutcome(
                status=ConnectStatus.NEW,
                first=first,
                connections=count,
                version=version,
                at=now,
                resumed=resumed,
                snapshot=self._snapshot(request, now),
                snapshot_meta=self._snapshot_meta(request, now),
                attempt=request.attempt,
                earlier_version=earlier,
            )

    def disconnect(self, request: DisconnectRequest) -> DisconnectOutcome:
        """Remove a connection atomically (see :class:`~presence_kit.DisconnectRequest`)."""
        with self._lock:
            now = self._clock()
            layout = request.layout
            done = self._get(request.tombstone_key, now)
            if isinstance(done, str) and done.startswith(SOFT_TOMBSTONE) and request.remember:
                done = HARD_TOMBSTONE + done[1:]  # a handler call after the sweep
                self._keys[request.tombstone_key] = _Entry(done, now + layout.tombstone_ttl)
            if isinstance(done, str):
                stone = decode_tombstone(done)
                return DisconnectOutcome(
                    status=DisconnectStatus.REPEAT,
                    last=stone.last,
                    record=ConnectionRecord.from_json(request.sid, stone.record),
                    version=stone.version,
                    at=stone.at_ms / 1000,
                    deferred=stone.deferred,
                    attempt=stone.attempt,
                )
            records = self._hash(request.connections_key, now)
            field = RECORD_FIELD + request.sid
            self._hdel(request.node_index_key, request.sid, now)
            if records is None or not _owned(records.get(field), request.owner):
                return DisconnectOutcome(
                    status=DisconnectStatus.UNKNOWN,
                    last=False,
                    record=None,
                    version=0,
                    at=now,
                    attempt=request.attempt,
                )
            record = records.pop(field)
            connected = records.pop(OUTCOME_FIELD + request.sid, "0:0:")
            records.pop(META_FIELD + request.sid, None)
            records.pop(UPDATE_FIELD + request.sid, None)
            count = int(records.pop("n", "1")) - 1
            if count > 0:
                records["n"] = str(count)
            elif not records:
                del self._keys[request.connections_key]
            last, deferred, version = count <= 0, False, 0
            if request.tracks_alive:
                alive = self._hash(request.alive_key, now) or {}
                version = int(alive.get("version", "0"))
                if last and layout.leave_grace_ms > 0:
                    due = _ms(now) + layout.leave_grace_ms
                    held = {"sid": request.sid, "record": record, "reason": request.reason}
                    held["due"] = str(due)
                    expiry = now + layout.leave_grace_ms / 1000 + layout.offline_ttl
                    self._keys[request.held_leave_key] = _Entry(held, expiry)
                    self._queue[request.queue_member] = due
                    last, deferred = False, True
                elif last:
                    version += 1
                    self._mark_offline(alive, layout, request.reason, version, now)
                    self._keys[request.alive_key] = _Entry(alive, now + layout.offline_ttl)
            if not deferred:
                self._index_del(request.org_index_key, request.keys.org_counts, request.sid, now)
            at_ms = _ms(now)
            stone = Tombstone(last, version, at_ms, deferred, request.attempt, record)
            self._keys[request.tombstone_key] = _Entry(
                encode_tombstone(stone, connect=connected, soft=not request.remember),
                now + layout.tombstone_ttl,
            )
            return DisconnectOutcome(
                status=DisconnectStatus.REMOVED,
                last=last,
                record=ConnectionRecord.from_json(request.sid, record),
                version=version,
                at=at_ms / 1000,
                deferred=deferred,
                attempt=request.attempt,
            )

    def update(self, request: UpdateRequest) -> UpdateOutcome:
        """Change a connection's lesson, room or meta atomically (see ``lua/update.lua``)."""
        with self._lock:
            now = self._clock()
            sid = request.sid
            records = self._hash(request.connections_key, now)
            current = None if records is None else records.get(RECORD_FIELD + sid)
            if (
                self._get(request.tombstone_key, now) is not None
                or records is None
                or current is None
                or not current.startswith(request.identity)
            ):
                return UpdateOutcome(status=UpdateStatus.UNKNOWN, record=None, version=0, at=now)
            tracks = request.tracks_alive
            version = int(records.get("version", "0")) if tracks else 0
            stored_meta = records.get(META_FIELD + sid, "")
            last, status, changed, last_version = decode_update_outcome(
                records.get(UPDATE_FIELD + sid)
            )
            before = with_meta(ConnectionRecord.from_json(sid, current), stored_meta)
            if request.seq < last:
                return UpdateOutcome(
                    status=UpdateStatus.STALE, record=before, previous=before,
                    version=version, at=now,
                )  # fmt: skip
            if request.seq == last:
                return UpdateOutcome(
                    status=UpdateStatus(status), record=before, lesson_changed=changed,
                    version=last_version, at=now, repeat=True,
                )  # fmt: skip
            owner = _owner(current)
            record = request.record
            if isinstance(owner, str):  # the record keeps the owner that wrote it
                node_id, _, incarnation = owner.rpartition("/")
                record = replace(record, node_id=node_id, incarnation=incarnation)
            text = record.to_json()
            meta = stored_meta if request.meta is None else request.meta
            if text == current and meta == stored_meta:
                records[UPDATE_FIELD + sid] = encode_update_outcome(
                    request.seq, UpdateStatus.UNCHANGED.value, False, version
                )
                return UpdateOutcome(
                    status=UpdateStatus.UNCHANGED, record=before, previous=before,
                    version=version, at=now,
                )  # fmt: skip
            changed = record.session.lesson_id != before.session.lesson_id or type(
                record.session.lesson_id
            ) is not type(before.session.lesson_id)
            records[RECORD_FIELD + sid] = text
            if meta:
                records[META_FIELD + sid] = meta
            else:
                records.pop(META_FIELD + sid, None)
            if tracks:
                version += 1
                records["version"] = str(version)
            records[UPDATE_FIELD + sid] = encode_update_outcome(
                request.seq, UpdateStatus.UPDATED.value, changed, version
            )
            entry = request.index_entry
            if request.index_meta:
                entry += f",{meta}]" if meta else "]"
            index = self._hash(request.org_index_key, now)
            if index is not None and sid in index:  # never brings an entry back
                self._index_set(request.keys, sid, entry, now)
            return UpdateOutcome(
                status=UpdateStatus.UPDATED,
                record=with_meta(ConnectionRecord.from_json(sid, text), meta),
                previous=before,
                lesson_changed=changed,
                version=version,
                at=now,
            )

    def count_online(self, query: OrgQuery, lesson: str | None) -> OnlineCount:
        """The counts kept beside an org index (in ``lesson``, if given)."""
        with self._lock:
            now = self._clock()
            users, totals, field = count_keys(query.counts_prefix, lesson)
            connections = (self._hash(totals, now) or {}).get(field, "0")
            return OnlineCount(
                users=len(self._hash(users, now) or {}), connections=int(connections)
            )

    def rebuild_counts(self, query: OrgQuery) -> tuple[int, int, bool]:
        """Rebuild the counts of an org index from it: ``(connections, users, changed)``."""
        with self._lock:
            now = self._clock()
            prefix = query.counts_prefix
            before = {
                key: dict(entry.value)
                for key, entry in self._keys.items()
                if key.startswith(prefix + ":") and isinstance(entry.value, dict)
            }
            for key in before:
                del self._keys[key]
            for entry in (self._hash(query.index_key, now) or {}).values():
                self._count(prefix, entry, 1, now)
            after = {
                key: dict(entry.value)
                for key, entry in self._keys.items()
                if key.startswith(prefix + ":") and isinstance(entry.value, dict)
            }
            users, totals, field = count_keys(prefix, None)
            connections = int((after.get(totals) or {}).get(field, "0"))
            return connections, len(after.get(users) or {}), after != before

    def due_leaves(self, queue_key: str, limit: int) -> list[str]:
        """Queued held-back leaves whose grace has ended."""
        with self._lock:
            now_ms = _ms(self._clock())
            due = sorted((at, member) for member, at in self._queue.items() if at <= now_ms)
            return [member for _at, member in due[:limit]]

    def finish_leave(self, request: FinishLeaveRequest) -> FinishLeaveOutcome:
        """Run a held-back leave if due; exactly one caller gets its outcome."""
        with self._lock:
            now = self._clock()
            held = self._hash(request.held_leave_key, now)
            if held is None:
                self._queue.pop(request.queue_member, None)
                return FinishLeaveOutcome(
                    outcome=None, reason="", due=None, status=FinishLeaveStatus.GONE
                )
            due_ms = int(held["due"])
            if due_ms > _ms(now):
                return FinishLeaveOutcome(
                    outcome=None, reason="", due=due_ms / 1000, status=FinishLeaveStatus.LATER
                )
            del self._keys[request.held_leave_key]
            self._queue.pop(request.queue_member, None)
            self._index_del(request.org_index_key, request.keys.org_counts, held["sid"], now)
            layout = request.layout
            alive = self._hash(request.alive_key, now) or {}
            version = int(alive.get("version", "0")) + 1
            self._mark_offline(alive, layout, held["reason"], version, now)
            self._keys[request.alive_key] = _Entry(alive, now + layout.offline_ttl)
            outcome = DisconnectOutcome(
                status=DisconnectStatus.REMOVED,
                last=True,
                record=ConnectionRecord.from_json(held["sid"], held["record"]),
                version=version,
                at=_ms(now) / 1000,
            )
            return FinishLeaveOutcome(
                outcome=outcome, reason=held["reason"], due=None, status=FinishLeaveStatus.LEFT
            )

    def presence(self, alive_key: str, connections_key: str, state_field: str) -> UserPresence:
        """A (user, role)'s alive hash and connection records."""
        with self._lock:
            now = self._clock()
            alive = self._hash(alive_key, now) or {}
            fields = self._hash(connections_key, now) or {}
            records, metas = records_of(fields), metas_of(fields)
            since = alive.get("since")
            return UserPresence(
                state=alive.get(state_field),
                connections=tuple(
                    with_meta(ConnectionRecord.from_json(sid, records[sid]), metas.get(sid))
                    for sid in sorted(records)
                ),
                since=int(since) / 1000 if since else None,
                last_reason=alive.get("reason"),
                version=int(alive.get("version", "0")),
            )

    def org_connections(self, query: OrgQuery) -> dict[str, tuple[Id, Id]]:
        """``sid -> (user_id, lesson_id)`` of an organisation's connections in a role."""
        with self._lock:
            index = self._hash(query.index_key, self._clock()) or {}
            return {sid: parse_index_entry(entry) for sid, entry in index.items()}

    def disconnect_many(self, requests: Sequence[DisconnectRequest]) -> list[DisconnectOutcome]:
        """Many disconnects (a sweep)."""
        return [self.disconnect(request) for request in requests]

    def heartbeat(self, call: Heartbeat) -> bool:
        """Stamp a node incarnation alive; ``False`` when it was swept."""
        with self._lock:
            if not call.first and call.member not in self._live_nodes:
                return False
            self._live_nodes[call.member] = _ms(self._clock()) + call.offset_ms
            self._node_info[call.member] = call.info
            return True

    def claim_node(self, keys: KeySchema, timeout_ms: int, claim_ttl_ms: int) -> str | None:
        """Claim one dead node incarnation (or a stale claim), if any."""
        with self._lock:
            now_ms = _ms(self._clock())
            for member, expiry in sorted(self._claimed_nodes.items(), key=lambda i: i[1]):
                if expiry <= now_ms:
                    self._claimed_nodes[member] = now_ms + claim_ttl_ms
                    return member
            for member, beat in sorted(self._live_nodes.items(), key=lambda i: i[1]):
                if beat <= now_ms - timeout_ms:
                    del self._live_nodes[member]
                    self._claimed_nodes[member] = now_ms + claim_ttl_ms
                    return member
            return None

    def node_connections(self, index_keys: Sequence[str]) -> dict[str, str]:
        """Every entry of these buckets of a node's index."""
        with self._lock:
            now, entries = self._clock(), {}
            for key in index_keys:
                entries.update(self._hash(key, now) or {})
            return entries

    def renew_claim(self, keys: KeySchema, member: str, claim_ttl_ms: int) -> None:
        """Extend a claim."""
        with self._lock:
            if member in self._claimed_nodes:
                self._claimed_nodes[member] = _ms(self._clock()) + claim_ttl_ms

    def release_node(self, keys: KeySchema, member: str) -> None:
        """Forget a swept node incarnation."""
        with self._lock:
            self._claimed_nodes.pop(member, None)
            self._live_nodes.pop(member, None)
            self._node_info.pop(member, None)
            for index in keys.node_indexes(member):
                self._keys.pop(index, None)

    def nodes(self, keys: KeySchema) -> list[NodeInfo]:
        """Every registered node incarnation."""
        with self._lock:
            now = self._clock()
            members = set(self._live_nodes) | set(self._claimed_nodes) | set(self._node_info)
            return [
                NodeInfo(
                    member=member,
                    last_heartbeat=(
                        self._live_nodes[member] / 1000 if member in self._live_nodes else None
                    ),
                    connections=sum(
                        len(self._hash(index, now) or {}) for index in keys.node_indexes(member)
                    ),
                    info=json.loads(self._node_info.get(member, "{}")),
                )
                for member in sorted(members)
            ]

    def close(self) -> None:
        """Nothing to release (the data stays readable)."""

    # --- inspection (demo, tests) ---------------------------------------------------

    def keys(self) -> list[str]:
        """Every live key, sorted."""
        with self._lock:
            now = self._clock()
            return sorted(k for k in list(self._keys) if self._live(k, now) is not None)

    def hgetall(self, key: str) -> dict[str, str]:
        """A hash's fields (``{}`` when missing), like Redis ``HGETALL``."""
        with self._lock:
            return dict(self._hash(key, self._clock()) or {})

    def get(self, key: str) -> str | None:
        """A string's value, like Redis ``GET``."""
        with self._lock:
            value = self._get(key, self._clock())
            return value if isinstance(value, str) else None

    def ttl(self, key: str) -> int:
        """Seconds to live, like Redis ``TTL``: -1 without expiry, -2 when missing."""
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                return -2
            if entry.expires_at is None:
                return -1
            return max(0, round(entry.expires_at - now))

    # --- internals ------------------------------------------------------------------

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._keys.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self._keys[key]
            return None
        return entry

    def _hash(self, key: str, now: float) -> dict[str, str] | None:
        entry = self._live(key, now)
        return entry.value if entry is not None and isinstance(entry.value, dict) else None

    def _get(self, key: str, now: float) -> dict[str, str] | str | None:
        entry = self._live(key, now)
        return entry.value if entry is not None else None

    def _snapshot_meta(
        self, request: ConnectRequest, now: float
    ) -> tuple[dict[str, Any] | None, ...]:
        if request.snapshot is None:
            return ()
        index = self._hash(request.snapshot.index_key, now) or {}
        return snapshot_metas(list(index.values()))

    def _snapshot(self, request: ConnectRequest, now: float) -> tuple[tuple[Id, Id], ...]:
        if request.snapshot is None:
            return ()
        index = self._hash(request.snapshot.index_key, now) or {}
        return tuple(parse_index_entry(entry) for entry in index.values())

    # --- an org index and its counts (lua/index.lua) ----------------------------------

    def _index_set(self, keys: UserKeys, sid: str, entry: str, now: float) -> None:
        index = self._hash(keys.org_index, now)
        if index is None:
            index = {}
            self._keys[keys.org_index] = _Entry(index)
        old = index.get(sid)
        if old == entry:
            return
        index[sid] = entry
        if not keys.org_counts:
            return
        moved = False  # the same user's connection, in another lesson
        if old is not None:
            (old_user, old_lesson), (user, lesson) = (
                parse_index_entry(old),
                parse_index_entry(entry),
            )
            if id_list(old_user, lesson_key(old_lesson)) == id_list(user, lesson_key(lesson)):
                return
            moved = id_list(old_user) == id_list(user)
            self._count(keys.org_counts, old, -1, now, only_lesson=moved)
        self._count(keys.org_counts, entry, 1, now, only_lesson=moved)

    def _index_del(self, index_key: str, counts_prefix: str, sid: str, now: float) -> None:
        index = self._hash(index_key, now)
        old = None if index is None else index.get(sid)
        if old is None:
            return
        self._hdel(index_key, sid, now)
        if counts_prefix:
            self._count(counts_prefix, old, -1, now)

    def _count(
        self, prefix: str, entry: str, d: int, now: float, *, only_lesson: bool = False
    ) -> None:
        user_id, lesson_id = parse_index_entry(entry)
        user, lesson = id_list(user_id)[1:-1], lesson_key(lesson_id)
        users, totals, _ = count_keys(prefix, None)
        lesson_users, _, lesson_field = count_keys(prefix, lesson)
        fields = [(lesson_users, user), (totals, lesson_field)]
        if not only_lesson:
            fields += [(users, user), (totals, "org")]
        for key, field in fields:
            counts = self._hash(key, now)
            if counts is None:
                counts = {}
                self._keys[key] = _Entry(counts)
            n = int(counts.get(field, "0")) + d
            if n > 0:
                counts[field] = str(n)
            else:
                counts.pop(field, None)
                if not counts:
                    del self._keys[key]

    def _hdel(self, key: str, field: str, now: float) -> None:
        index = self._hash(key, now)
        if index is not None:
            index.pop(field, None)
            if not index:
                del self._keys[key]

    @staticmethod
    def _mark_offline(
        alive: dict[str, str], layout: StoreLayout, reason: str, version: int, now: float
    ) -> None:
        alive.update(
            {
                "version": str(version),
                layout.state_field: layout.disconnect_state,
                "reason": reason,
                "since": str(_ms(now)),
            }
        )

    def _version(self, key: str, now: float) -> int:
        return int((self._hash(key, now) or {}).get("version", "0"))
