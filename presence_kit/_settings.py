"""Settings: every name, duration and switch of presence_kit in one frozen object.

The defaults reproduce what the spec lets a client or another system observe: the
alive key's name, its ``state`` field and values, the one-hour TTL after a leave, the
event names and payload shapes. The deliberate departures (namespaced rooms, the
leave announced when a user's *last* connection goes, the added events) are listed
in the docs and can be switched back here.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, fields
from typing import Any

from ._errors import InvalidSettingsError
from ._session import DEFAULT_ID_PATTERN, REASON_PATTERN

__all__ = ["Settings"]

_TEMPLATE_FIELDS = {
    "alive_key": {"org_id", "user_id"},
    "org_room": {"org_id"},
    "lesson_room": {"lesson_id"},
}
_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,64}")


def _template_fields(name: str, template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidSettingsError(name, f"is not a valid format template: {exc}") from None
    found: set[str] = set()
    for _literal, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if spec or conversion:
            raise InvalidSettingsError(name, "placeholders take no format spec or conversion")
        found.add(field_name)
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Configuration of a kit. Frozen; every field is validated when built.

    Use :func:`dataclasses.replace` to derive a variant.
    """

    # --- Redis key schema (the alive key is the spec's, read by other systems) ---
    alive_key: str = "alive:org_{org_id}_user_{user_id}"
    """Template of the spec's alive hash; ``{org_id}`` and ``{user_id}`` are required."""
    key_prefix: str = "presence"
    """Prefix of every companion key presence_kit writes (connection records, tombstones)."""
    state_field: str = "state"
    """Hash field of the alive key that holds the state."""
    connect_state: str = "connect"
    """Value of ``state_field`` while a teacher is online."""
    disconnect_state: str = "disconnect"
    """Value of ``state_field`` once a teacher went offline."""
    offline_ttl: int = 3600
    """Seconds the alive key lives after the teacher went offline (the spec's 1 hour)."""
    connection_ttl: int = 86400
    """Safety TTL (seconds) of a user's connection records, refreshed on every connect."""
    tombstone_ttl: int = 600
    """Seconds a finished disconnect is remembered, so a repeat returns the same outcome."""

    # --- identifiers ---
    id_pattern: str = DEFAULT_ID_PATTERN
    """Regular expression (full match) that ``org_id``, ``user_id``, ``lesson_id`` and
    ``room_id`` must match once turned into text. Must refuse ``{``, ``}`` and ``_``
    only if your key templates rely on it; the default refuses both."""

    # --- Socket.IO rooms and events ---
    org_room: str = "org:{org_id}"
    """Room of an organisation, where hubs hear teacher events. ``"{org_id}"`` is the
    spec's raw id (then org 5 and lesson 5 share a room)."""
    lesson_room: str = "lesson:{lesson_id}"
    """Room of a lesson. ``"{lesson_id}"`` is the spec's raw id."""
    teacher_disconnect_event: str = "teacher_disconnect"
    """Event emitted to the org room when a teacher goes offline."""
    teacher_connect_event: str = "teacher_connect"
    """Event emitted to the org room when a teacher comes online."""
    announce_connect: bool = True
    """Emit ``teacher_connect_event`` on offline -> online."""
    teacher_update_event: str = "teacher_update"
    """Event emitted to the org room when a teacher's connection moves to another lesson
    (:meth:`~presence_kit.PresenceKit.handle_update`): ``{"user_id": ..., "lesson_id": ...}``."""
    announce_update: bool = True
    """Emit ``teacher_update_event`` when an update moves a teacher to another lesson."""
    presence_state_event: str = "presence_state"
    """Event sent to a hub's own socket when it connects: the org's online teachers."""
    send_presence_snapshot: bool = True
    """Send ``presence_state_event`` to each connecting hub."""
    snapshot_meta: bool = False
    """Also send each connection's ``meta`` in the hub's snapshot (``presence_state``
    gains ``"connections"``: ``user_id``, ``lesson_id`` and ``meta`` of each). Off by
    default: 20,000 participants with 1 KiB of meta each would be a 20 MB emit. The org
    index then keeps each connection's meta beside its entry."""
    include_version: bool = False
    """Add the user's transition counter (``"version"``) to teacher event payloads, so
    hubs can order events that arrive out of order from different nodes. Off by
    default: the spec's payload is exactly ``{"user_id": ...}``."""

    # --- grace period ---
    leave_grace: float = 0.0
    """Seconds a teacher's leave is held back after their last connection goes; a
    reconnect on any node within it cancels the leave. 0 announces at once (the spec)."""
    leave_poll_interval: float = 0.5
    """How often a kit looks for held-back leaves that are due (seconds)."""

    # --- analytics ---
    analytics_disconnect_event: str = "disconnect"
    """Analytics event sent when a participant's connection ends."""

    # --- nodes and crash recovery ---
    node_id: str | None = None
    """This kit's node id (recorded with each connection); generated from the host
    name, the pid and a random part when ``None``. Each kit is also a new incarnation."""
    heartbeat_interval: float = 2.0
    """Seconds between a node's heartbeats (stamped with the Redis clock)."""
    node_timeout: float = 10.0
    """A node without a heartbeat for this long is dead: its connections are swept."""
    shutdown_grace: float = 15.0
    """At ``close()``, connections are handed over: they are swept this long later, so
    clients that reconnect elsewhere meanwhile cause no leave."""
    reconcile_interval: float = 30.0
    """Seconds between comparisons of this node's records with its live sockets."""
    sweep_batch: int = 500
    """Connections handled per Redis round trip when sweeping a dead node."""
    lost_reason: str = "node lost"
    """The disconnect reason of connections recovered from a dead node."""

    # --- the presence feed ---
    feed: bool = False
    """Write every presence change into Redis Streams (the presence feed: read it with
    :mod:`presence_kit.feed`). Off by default: a default deployment writes exactly what
    it wrote before. Turn it on on every node (a mixed deployment leaves gaps)."""
    feed_retention: float = 86400.0
    """Seconds the feed keeps an entry (trimmed, approximately, as entries are added;
    trimming ignores consumers' acknowledgements). At least 1."""
    feed_shards: int = 1
    """Streams the feed is partitioned into (each its own cluster slot; an organisation
    always in one: CRC-32 of its id's text, modulo this)."""

    # --- failure handling ---
    outbox_size: int = 10_000
    """Store operations kept for replay while Redis is down (the oldest is dropped
    beyond this; reconciling and the sweeper then repair what it would have)."""
    strict_connect: bool = False
    """If true, ``handle_connect`` raises :class:`~presence_kit.StoreError` when the
    store fails (after joining the rooms); by default it logs and returns."""

    def __post_init__(self) -> None:
        for name, required in _TEMPLATE_FIELDS.items():
            template = getattr(self, name)
            if not isinstance(template, str) or not template:
                raise InvalidSettingsError(name, "must be a non-empty str")
            found = _template_fields(name, template)
            if found != required:
                raise InvalidSettingsError(
                    name,
                    f"must use exactly the placeholders {sorted(required)}, got {sorted(found)}",
                )
        if "{" in self.alive_key.replace("{org_id}", "").replace("{user_id}", "") or "}" in (
            self.alive_key.replace("{org_id}", "").replace("{user_id}", "")
        ):
            raise InvalidSettingsError("alive_key", "must not contain literal braces (hash tags)")
        for name in (
            "key_prefix",
            "state_field",
            "connect_state",
            "disconnect_state",
            "teacher_disconnect_event",
            "teacher_connect_event",
            "teacher_update_event",
            "analytics_disconnect_event",
            "presence_state_event",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise InvalidSettingsError(name, "must be 1-64 characters of A-Z a-z 0-9 _ : . -")
        if self.connect_state == self.disconnect_state:
            raise InvalidSettingsError("disconnect_state", "must differ from connect_state")
        for name in ("offline_ttl", "connection_ttl", "tombstone_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidSettingsError(name, "must be a positive int (seconds)")
        if self.node_id is not None and (
            not isinstance(self.node_id, str) or not _NAME.fullmatch(self.node_id)
        ):
            raise InvalidSettingsError("node_id", "must be 1-64 characters of A-Z a-z 0-9 _ : . -")
        for name in (
            "leave_grace",
            "leave_poll_interval",
            "heartbeat_interval",
            "node_timeout",
            "shutdown_grace",
            "reconcile_interval",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidSettingsError(name, "must be a number of seconds >= 0")
        for name in ("leave_poll_interval", "heartbeat_interval", "reconcile_interval"):
            if getattr(self, name) <= 0:
                raise InvalidSettingsError(name, "must be > 0")
        if self.node_timeout <= self.heartbeat_interval:
            raise InvalidSettingsError("node_timeout", "must be longer than heartbeat_interval")
        if (
            isinstance(self.outbox_size, bool)
            or not isinstance(self.outbox_size, int)
            or not 1 <= self.outbox_size <= 10_000_000
        ):
            raise InvalidSettingsError("outbox_size", "must be an int from 1 to 10000000")
        if (
            isinstance(self.sweep_batch, bool)
            or not isinstance(self.sweep_batch, int)
            or not 1 <= self.sweep_batch <= 10_000
        ):
            raise InvalidSettingsError("sweep_batch", "must be an int from 1 to 10000")
        if (
            isinstance(self.feed_retention, bool)
            or not isinstance(self.feed_retention, (int, float))
            or not math.isfinite(self.feed_retention)
            or self.feed_retention < 1
        ):
            raise InvalidSettingsError("feed_retention", "must be a number of seconds >= 1")
        if (
            isinstance(self.feed_shards, bool)
            or not isinstance(self.feed_shards, int)
            or not 1 <= self.feed_shards <= 1024
        ):
            raise InvalidSettingsError("feed_shards", "must be an int from 1 to 1024")
        if not isinstance(self.lost_reason, str) or not REASON_PATTERN.fullmatch(self.lost_reason):
            raise InvalidSettingsError("lost_reason", "must be 1-128 printable ASCII characters")
        for name in (
            "announce_connect",
            "strict_connect",
            "send_presence_snapshot",
            "include_version",
            "announce_update",
            "snapshot_meta",
            "feed",
        ):
            if not isinstance(getattr(self, name), bool):
                raise InvalidSettingsError(name, "must be a bool")
        if not isinstance(self.id_pattern, str):
            raise InvalidSettingsError("id_pattern", "must be a str")
        try:
            re.compile(self.id_pattern)
        except re.error as exc:
            raise InvalidSettingsError(
                "id_pattern", f"is not a valid regular expression: {exc}"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for logs and the CLI)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
