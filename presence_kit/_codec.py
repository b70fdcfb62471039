"""How presence_kit's data is stored: the encodings of every value it writes to Redis.

Connection records, the org, node and leave-queue index entries, tombstones and the
heartbeat's arguments. The Lua scripts (``lua/*.lua``) read and write the same texts,
and :class:`~presence_kit.memory.MemoryStore` mirrors them; the scripts, with that
mirror, are the state machine of presence. Every encoding here is compact JSON or
colon-separated fields, and the ids keep their JSON types (``7`` and ``"7"`` differ).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, NamedTuple

from ._construct import maker
from ._errors import StoreError
from ._session import Id, Session, make_session

compact = json.JSONEncoder(separators=(",", ":")).encode
"""Compact JSON, with one shared encoder (``json.dumps`` with options builds one per call)."""

_raw_decode = json.JSONDecoder().raw_decode


def loads(text: str | bytes) -> Any:
    """``json.loads`` for the texts we stored, about three times faster: a reply's bytes
    are decoded as UTF-8 directly (no encoding detection) and parsed by the decoder's
    scanner; anything after the value is refused (``ValueError``), as ``loads`` does."""
    string = text.decode() if isinstance(text, bytes) else text
    value, end = _raw_decode(string)
    if end != len(string):
        raise ValueError(f"extra data after the value: {string[:80]!r}")
    return value


def id_list(*values: object) -> str:
    """``compact(list(values))`` for ids and role names, without the encoder's overhead
    (these are built on every connect and disconnect): the same text, byte for byte."""
    parts = []
    for value in values:
        if type(value) is str:
            parts.append(_json_str(value))
        elif type(value) is int:
            parts.append(int.__repr__(value))
        else:  # an int or str subclass (an IntEnum, say), None: as json would write it
            parts.append(compact(value))
    return "[" + ",".join(parts) + "]"


RECORD_FIELD = "c:"
"""Prefix of the hash fields that hold connection records (``c:<sid>``)."""


META_FIELD = "m:"
"""Prefix of the hash fields that hold a connection's ``meta`` (``m:<sid>`` -> compact
JSON object), beside its record; absent when the connection has none."""


UPDATE_FIELD = "u:"
"""Prefix of the hash fields that keep a connection's last applied update (``u:<sid>``
-> ``seq:status:lesson_changed:version``): later updates are ordered by its ``seq``,
and a repeat of it gets its outcome again. Absent until the first update."""


OUTCOME_FIELD = "o:"
"""Prefix of the hash fields that keep each recorded connect's outcome (``o:<sid>`` ->
``first:version:attempt``), returned again to its repeats."""


def encode_connect_outcome(first: bool, version: int, attempt: str) -> str:
    """The stored outcome of a connect (``lua/connect.lua`` writes the same text)."""
    return f"{int(first)}:{version}:{attempt}"


def decode_connect_outcome(text: str | None) -> tuple[bool, int, str]:
    """``(first, version, attempt)`` of a stored connect outcome; a record kept before
    outcomes were (``None``) reads as ``(False, 0, "?")``."""
    if text is None:
        return False, 0, "?"
    first, version, attempt = text.split(":", 2)
    return first == "1", int(version), attempt


def records_of(fields: dict[str, str]) -> dict[str, str]:
    """``sid -> record`` from a record hash's fields."""
    n = len(RECORD_FIELD)
    return {k[n:]: v for k, v in fields.items() if k.startswith(RECORD_FIELD)}


def metas_of(fields: dict[str, str]) -> dict[str, str]:
    """``sid -> meta`` (JSON text) from a record hash's fields."""
    n = len(META_FIELD)
    return {k[n:]: v for k, v in fields.items() if k.startswith(META_FIELD)}


def encode_update_outcome(seq: int, status: str, lesson_changed: bool, version: int) -> str:
    """The stored outcome of an update (``lua/update.lua`` writes the same text)."""
    return f"{seq}:{status}:{int(lesson_changed)}:{version}"


def decode_update_outcome(text: str | None) -> tuple[int, str, bool, int]:
    """``(seq, status, lesson_changed, version)`` of a stored update outcome (``(0, "",
    False, 0)``: never updated)."""
    if not text:
        return 0, "", False, 0
    seq, status, changed, version = text.split(":", 3)
    return int(seq), status, changed == "1", int(version)


def parse_node_entry(text: str | bytes) -> tuple[Id, Id, str]:
    """``(org_id, user_id, role)`` of a node index value (written as the
    :func:`queue_member` of the connection's user and role)."""
    org_id, user_id, role = loads(text)
    return org_id, user_id, role


def index_entry(user_id: Id, lesson_id: Id, meta: str = "") -> str:
    """The org index value of a connection: ``[user_id, lesson_id]``, and its ``meta``
    (JSON text) third when given (``Settings.snapshot_meta``)."""
    entry = id_list(user_id, lesson_id)
    return f"{entry[:-1]},{meta}]" if meta else entry


def parse_index_entry(text: str | bytes) -> tuple[Id, Id]:
    """``(user_id, lesson_id)`` of an org index value."""
    user_id, lesson_id, *_meta = loads(text)
    return user_id, lesson_id


def parse_index_meta(text: str | bytes) -> dict[str, Any] | None:
    """The ``meta`` of an org index value (``None``: none kept there)."""
    _user_id, _lesson_id, *meta = loads(text)
    return meta[0] if meta and isinstance(meta[0], dict) else None


def snapshot_metas(entries: list[Any] | tuple[Any, ...]) -> tuple[dict[str, Any] | None, ...]:
    """The ``meta`` of each org index entry (empty when none of them keeps one)."""
    metas = tuple(map(parse_index_meta, entries))
    return metas if any(meta is not None for meta in metas) else ()


def lesson_key(lesson_id: Id) -> str:
    """A lesson's name in the counts' keys and fields (``str(lesson_id)``: as
    :meth:`~presence_kit.PresenceKit.online_users` compares lessons, 7 and "7" are one)."""
    return str(lesson_id)


def queue_member(org_id: Id, user_id: Id, role: str) -> str:
    """The leave-queue member of a (user, role): enough to rebuild every key."""
    return id_list(org_id, user_id, role)


def parse_queue_member(text: str | bytes) -> tuple[Id, Id, str]:
    """``(org_id, user_id, role)`` of a leave-queue member."""
    org_id, user_id, role = loads(text)
    return org_id, user_id, role


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionRecord:
    """One live connection as the store keeps it: enough to run its leave later."""

    sid: str
    namespace: str
    node_id: str
    incarnation: str
    session: Session
    meta: dict[str, Any] | None = None
    """The connection's ``meta`` (the integrator's small JSON object, given at connect
    or by :meth:`~presence_kit.PresenceKit.handle_update`); ``None`` when it has none.
    Kept beside the record (a hash field of its own), not in :meth:`to_json`."""

    def to_json(self) -> str:
        """Serialise compactly (the sid is the hash field, so it is left out).

        ``[org_id, user_id, lesson_id, role, "node/incarnation"]``, then ``room_id`` and
        the namespace when they are set; ids keep their JSON types. Short enough (under
        Redis's 64-byte ``hash-max-listpack-value`` for usual ids) that a user's
        connections hash stays a compact listpack.
        """
        s = self.session
        fields: list[object] = [
            s.org_id,
            s.user_id,
            s.lesson_id,
            s.role,
            f"{self.node_id}/{self.incarnation}",
        ]
        if s.room_id is not None or self.namespace != "/":
            fields.append(s.room_id)
        if self.namespace != "/":
            fields.append(self.namespace)
        return id_list(*fields)

    @classmethod
    def from_json(cls, sid: str, text: str | bytes) -> ConnectionRecord:
        """Parse what :meth:`to_json` wrote; a corrupt record raises :class:`StoreError`."""
        try:
            org_id, user_id, lesson_id, role, node, *rest = loads(text)
            node_id, _, incarnation = node.rpartition("/")
            room_id = rest[0] if rest else None
            session = make_session(role, org_id, user_id, lesson_id, room_id)
            namespace = rest[1] if len(rest) > 1 else "/"
            return make_record(sid, namespace, node_id, incarnation, session, None)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"corrupt connection record: {str(text)[:80]!r}") from exc


make_record = maker(ConnectionRecord)
"""A :class:`ConnectionRecord` from its parts: ``(sid, namespace, node_id, incarnation,
session, meta)``."""


def compact_meta(meta: dict[str, Any]) -> str:
    """A ``meta`` object as stored: compact JSON, keys sorted (as validated)."""
    return json.dumps(meta, separators=(",", ":"), sort_keys=True)


def with_meta(record: ConnectionRecord, meta: str | bytes | None) -> ConnectionRecord:
    """``record`` with the ``meta`` kept beside it (JSON text; ``None``/empty: none)."""
    if not meta:
        return record
    try:
        value = loads(meta)
    except ValueError as exc:
        raise StoreError(f"corrupt connection meta: {str(meta)[:80]!r}") from exc
    if not isinstance(value, dict):
        raise StoreError(f"corrupt connection meta: {str(meta)[:80]!r}")
    s = record
    return make_record(s.sid, s.namespace, s.node_id, s.incarnation, s.session, value)


class Tombstone(NamedTuple):
    """What a finished disconnect leaves behind for its repeats (``lua/disconnect.lua``
    writes it as ``last:version:at_ms:deferred:attempt:record``)."""

    last: bool
    version: int
    at_ms: int
    deferred: bool
    attempt: str
    record: str
    """The removed connection's record, as :func:`encode_record` wrote it."""


SOFT_TOMBSTONE = "~"
"""First character of a sweep's tombstone: its repeats get its outcome, but it refuses
no connect (a node that was only cut off registers the sid again, which deletes it)."""

HARD_TOMBSTONE = "+"
"""First character of every other tombstone: a late connect of the sid is refused."""


def encode_tombstone(stone: Tombstone, *, connect: str, soft: bool = False) -> str:
    """The tombstone's stored text, ``<mark><connect>:<outcome>``: the removed
    connection's connect outcome (:func:`encode_connect_outcome`), for a replay of that
    connect, then the removal's."""
    last, version, at_ms, deferred, attempt, record = stone
    mark = SOFT_TOMBSTONE if soft else HARD_TOMBSTONE
    return f"{mark}{connect}:{int(last)}:{version}:{at_ms}:{int(deferred)}:{attempt}:{record}"


def split_tombstone(text: str) -> tuple[str | None, str]:
    """``(the removed connect's outcome, the removal's)`` of a tombstone's text (``None``:
    a tombstone of 0.2, which lacks it)."""
    if not text.startswith((SOFT_TOMBSTONE, HARD_TOMBSTONE)):
        return None, text
    first, version, attempt, rest = text[1:].split(":", 3)
    return f"{first}:{version}:{attempt}", rest


def decode_tombstone(text: str) -> Tombstone:
    """Parse the removal's outcome from what :func:`encode_tombstone` (or the script)
    wrote."""
    last, version, at_ms, deferred, attempt, record = split_tombstone(text)[1].split(":", 5)
    return Tombstone(last == "1", int(version), int(at_ms), deferred == "1", attempt, record)


def heartbeat_args(member: str, *, first: bool, info: str, offset_ms: int) -> list[str | int]:
    """``lua/heartbeat.lua``'s arguments."""
    return [member, 1 if first else 0, info, offset_ms]
