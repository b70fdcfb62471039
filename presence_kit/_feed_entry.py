"""The presence feed's entries: what ``lua/feed.lua`` writes, field by field, and
:class:`FeedEntry`, what a consumer reads. Pure: no I/O.

Every field is a flat string, so a consumer in any language reads it with a plain
``XREADGROUP`` (docs: "The presence feed: field reference").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from ._session import Id

__all__ = ["FEED_FIELDS", "FEED_KINDS", "FeedEntry", "parse_feed_entry"]

FEED_KINDS = ("join", "leave", "online", "offline", "update")
"""What an entry records: a connection joined or left (every role); a user came online
or went offline (a role that tracks the alive key: ``TeacherAPP``); a connection's
lesson, room or meta changed."""

FEED_FIELDS: dict[str, str] = {
    "schema": '`"1"`: the entry\'s format. A consumer skips an entry of a schema it does '
    "not know.",
    "kind": "`join`, `leave`, `online`, `offline` or `update`.",
    "org_id": "The organisation's id, as text (its JSON type in `id_types`).",
    "user_id": "The user's id, as text (its JSON type in `id_types`).",
    "role": "The connection's role (`TeacherAPP`, `TeacherHub`, `ParticipantWeb`, or yours).",
    "sid": "The connection's Socket.IO sid (for `online`/`offline`: the connection whose "
    "connect or leave made the change).",
    "lesson_id": "The connection's lesson, as text (at the time of the change).",
    "room_id": "The connection's `room_id`, as text; empty when it has none.",
    "reason": "A leave's (and `offline`'s) disconnect reason (`transport close`, `node lost`, "
    "...); empty otherwise.",
    "version": "`online`, `offline` and a tracking role's `update`: the user's transition "
    "counter after the change (it only grows); empty otherwise.",
    "node": "The node id of the connection's server.",
    "at_ms": "When Redis wrote the change: milliseconds since the epoch, Redis's clock.",
    "observed_ms": "When a handler saw it (that node's clock): the same moment as `at_ms` for "
    "a live call, earlier for one replayed from the outbox after an outage.",
    "id_types": "The JSON types of `org_id`, `user_id`, `lesson_id` and `room_id`, one "
    "character each: `i` (an integer), `s` (a string), `-` (none): `iis-`.",
}
"""Every field of an entry, with its meaning (the docs' field reference)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedEntry:
    """One entry of the presence feed, typed (ids keep the types the session had)."""

    id: str
    """The stream entry's id (``<ms>-<seq>``): acknowledge it once processed."""
    kind: str
    """``join``, ``leave``, ``online``, ``offline`` or ``update``."""
    org_id: Id
    user_id: Id
    role: str
    sid: str
    lesson_id: Id
    room_id: Id | None
    reason: str | None
    """A leave's (or ``offline``'s) reason; ``None`` for the other kinds."""
    version: int | None
    """The user's transition counter after ``online``, ``offline`` (and a tracking
    role's ``update``); ``None`` otherwise. Drop an ``(org, user, role, version)`` you
    already applied: on a Redis Cluster an entry may come twice, and late."""
    node: str
    at: datetime
    """When Redis wrote the change (UTC)."""
    observed_at: datetime
    """When a handler saw it (UTC): earlier than ``at`` for a replay after an outage."""


def _id(text: str, kind: str) -> Id | None:
    if kind == "i":
        return int(text)
    if kind == "s":
        return text
    if kind == "-":
        return None
    raise ValueError(f"unknown id type {kind!r}")


def _time(ms: str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


def parse_feed_entry(entry_id: str, fields: Mapping[str, str]) -> FeedEntry:
    """A :class:`FeedEntry` from a stream entry's fields; ``ValueError`` for one that
    is not a presence feed entry of schema 1 (written by someone else)."""
    try:
        if fields["schema"] != "1" or fields["kind"] not in FEED_KINDS:
            raise ValueError(f"not a schema 1 entry: {dict(fields)!r:.120}")
        types = fields["id_types"]
        if len(types) != 4:
            raise ValueError(f"bad id_types {types!r}")
        org_id, user_id = _id(fields["org_id"], types[0]), _id(fields["user_id"], types[1])
        lesson_id = _id(fields["lesson_id"], types[2])
        if org_id is None or user_id is None or lesson_id is None:
            raise ValueError("an entry needs org_id, user_id and lesson_id")
        return FeedEntry(
            id=entry_id,
            kind=fields["kind"],
            org_id=org_id,
            user_id=user_id,
            role=fields["role"],
            sid=fields["sid"],
            lesson_id=lesson_id,
            room_id=_id(fields["room_id"], types[3]),
            reason=fields["reason"] or None,
            version=int(fields["version"]) if fields["version"] else None,
            node=fields["node"],
            at=_time(fields["at_ms"]),
            observed_at=_time(fields["observed_ms"]),
        )
    except KeyError as exc:
        raise ValueError(f"missing field {exc}") from None
