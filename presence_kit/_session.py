"""Sessions: the validated, typed facts about one connection.

A server keeps a session mapping per sid (python-socketio's ``save_session``). The
facades turn it into a frozen :class:`Session` before anything is written, joined or
emitted; anything wrong raises :class:`~presence_kit.InvalidSessionError` naming the
field. The patterns that sids, roles and disconnect reasons must match live here too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from typing_extensions import NotRequired, TypedDict

from ._construct import maker
from ._errors import InvalidSessionError
from ._roles import ClientRole

__all__ = [
    "REASON_PATTERN",
    "Id",
    "MetaUpdate",
    "Session",
    "SessionDict",
    "parse_meta",
    "parse_session",
    "read_role",
    "validate_id",
    "validate_reason",
    "validate_role",
    "validate_sid",
]

Id = int | str
"""An identifier: an ``int`` (never a ``bool``) or a ``str``; its type is preserved."""


# The functional form: its types are evaluated here, so ``NotRequired`` is seen even
# with postponed annotations (a class body's would be strings).
SessionDict = TypedDict(  # noqa: UP013 (see above)
    "SessionDict",
    {
        "role": str | ClientRole,
        "org_id": Id,
        "user_id": Id,
        "lesson_id": Id,
        "room_id": NotRequired[Id],
        "meta": NotRequired[dict[str, str | int | float | bool | None] | None],
    },
)
SessionDict.__doc__ = """The session mapping the handlers read, as a type for your own code.

Optional: the handlers take any ``Mapping[str, Any]`` (extra keys are ignored).
Annotate what your ``authenticate()`` returns with it, and a type checker sees a
missing or misspelt field. ``room_id`` is needed by ``ParticipantWeb`` at connect;
``meta`` is optional: a JSON object of at most 16 keys (1-64 characters each) with
scalar values, at most 1 KiB as JSON.
"""


_SID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
# Never allowed in an id, whatever Settings.id_pattern says: they would change the shape
# of a Redis key (hash tags, separators) or of a log line.
_FORBIDDEN = re.compile(r"[{}\s\x00-\x1f\x7f]")
_ROLE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
REASON_PATTERN = re.compile(r"[\x20-\x7e]{1,128}")
"""A disconnect reason (and ``Settings.lost_reason``): 1-128 printable ASCII characters."""
_MAX_INT_DIGITS = 128
_MAX_INT = 10**_MAX_INT_DIGITS
DEFAULT_ID_PATTERN = r"[A-Za-z0-9-]{1,128}"
"""``Settings.id_pattern``'s default: 1-128 ASCII letters, digits and hyphens."""
_DIGITS_ALWAYS_MATCH = frozenset({DEFAULT_ID_PATTERN})
"""Id patterns that match the digits of every int id (1 to :data:`_MAX_INT_DIGITS` of
them): an int id needs no regular expression there."""
_REFUSE_FORBIDDEN = frozenset({DEFAULT_ID_PATTERN})
"""Id patterns that match no text with a :data:`_FORBIDDEN` character: a str id needs
only the pattern there."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """One connection's identity, validated.

    ``room_id`` is set for roles that need it at connect (``ParticipantWeb``); at
    disconnect the stored one is used, not the one in the mapping.
    """

    role: str
    org_id: Id
    user_id: Id
    lesson_id: Id
    room_id: Id | None = None


make_session = maker(Session)
"""A :class:`Session` from validated values: ``(role, org_id, user_id, lesson_id, room_id)``."""


def validate_sid(sid: object) -> str:
    """Return ``sid`` if it is a plausible engine.io / Socket.IO sid, else raise."""
    if not isinstance(sid, str):
        raise InvalidSessionError("sid", f"must be a str, got {type(sid).__name__}")
    if not _SID.fullmatch(sid):
        raise InvalidSessionError("sid", "must be 1-128 characters of A-Z a-z 0-9 _ -")
    return sid


_VALID_ROLES: set[str] = set()
"""Role texts that passed :data:`_ROLE` (a few per server): checked once, not per event."""


def validate_role(role: object) -> str:
    """Return the role's text (a :class:`ClientRole` gives its value), else raise."""
    if type(role) is str and role in _VALID_ROLES:
        return role
    if isinstance(role, str) and _ROLE.fullmatch(role):
        if type(role) is str and len(_VALID_ROLES) < 256:
            _VALID_ROLES.add(role)
        return str(role.value) if hasattr(role, "value") else role
    if isinstance(role, str):
        raise InvalidSessionError("role", "must be 1-64 characters of A-Z a-z 0-9 _ -")
    raise InvalidSessionError("role", f"must be a str or ClientRole, got {type(role).__name__}")


def validate_id(field: str, value: object, pattern: re.Pattern[str]) -> Id:
    """Return ``value`` if it is a valid id (int or str matching ``pattern``), else raise."""
    # The common cases first: this runs three times per event.
    if type(value) is int:
        if 0 <= value < _MAX_INT and (
            pattern.pattern in _DIGITS_ALWAYS_MATCH or pattern.fullmatch(int.__repr__(value))
        ):
            return value
    elif (
        type(value) is str
        and (pattern.pattern in _REFUSE_FORBIDDEN or not _FORBIDDEN.search(value))
        and pattern.fullmatch(value)
    ):
        return value
    return _checked_id(field, value, pattern)


def _checked_id(field: str, value: object, pattern: re.Pattern[str]) -> Id:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidSessionError(field, f"must be an int or a str, got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidSessionError(field, "must not be negative")
        if value >= _MAX_INT:
            raise InvalidSessionError(field, f"must have at most {_MAX_INT_DIGITS} digits")
        text = str(value)
    else:
        text = value
    if _FORBIDDEN.search(text) or not pattern.fullmatch(text):
        raise InvalidSessionError(
            field, f"{text[:40]!r} is not a valid id (expected {pattern.pattern})"
        )
    return value


def _check_mapping(raw: object) -> Mapping[object, object]:
    if type(raw) is dict:  # the usual session: skip the slower ABC check
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidSessionError("session", f"must be a mapping, got {type(raw).__name__}")
    return raw


def _read(raw: Mapping[object, object], field: str) -> object:
    try:
        return raw[field]
    except KeyError:
        raise InvalidSessionError(field, "is missing") from None
    except Exception as exc:  # a hostile Mapping's __getitem__
        raise InvalidSessionError(field, f"could not be read: {type(exc).__name__}") from None


def read_role(raw: object) -> str:
    """The validated ``role`` of a session mapping (to pick its policy)."""
    return validate_role(_read(_check_mapping(raw), "role"))


def parse_session(
    raw: object,
    *,
    id_pattern: re.Pattern[str],
    required: frozenset[str] = frozenset(),
    role: str | None = None,
) -> Session:
    """Validate a session mapping into a :class:`Session`.

    ``required`` names optional fields (``room_id``) that the role needs here;
    ``role`` is the mapping's role when the caller has already read it
    (:func:`read_role`). Extra keys are ignored.
    """
    mapping = _check_mapping(raw)
    room_id = (
        validate_id("room_id", _read(mapping, "room_id"), id_pattern)
        if "room_id" in required
        else None
    )
    return make_session(
        read_role(mapping) if role is None else role,
        validate_id("org_id", _read(mapping, "org_id"), id_pattern),
        validate_id("user_id", _read(mapping, "user_id"), id_pattern),
        validate_id("lesson_id", _read(mapping, "lesson_id"), id_pattern),
        room_id,
    )


META_KEYS = 16
"""Most keys a connection's ``meta`` may have."""
META_KEY_LENGTH = 64
"""Most characters of one ``meta`` key."""
META_BYTES = 1024
"""Most bytes of a ``meta`` object as stored (compact JSON, ASCII)."""
_META_SCALARS = (str, int, float, bool, type(None))
_encode_meta = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class MetaUpdate:
    """A session's ``meta``, validated: whether the session had the key, and the
    object as stored (compact JSON with sorted keys; ``""`` for ``None``: none)."""

    given: bool
    text: str


NO_META = MetaUpdate(False, "")
"""A session without a ``meta`` key."""


def parse_meta(raw: object) -> MetaUpdate:
    """Validate a session's optional ``meta``: a JSON object of at most
    :data:`META_KEYS` keys (each a ``str`` of 1 to :data:`META_KEY_LENGTH` characters)
    whose values are scalars (``str``, ``int``, ``float``, ``bool``, ``None``), at most
    :data:`META_BYTES` bytes encoded; ``None`` clears it. Anything else raises
    :class:`~presence_kit.InvalidSessionError` naming ``"meta"``."""
    mapping = _check_mapping(raw)
    if type(mapping) is dict and "meta" not in mapping:  # the usual session: no meta
        return NO_META
    try:
        if "meta" not in mapping:
            return NO_META
    except Exception as exc:  # a hostile Mapping's __contains__
        raise InvalidSessionError("meta", f"could not be read: {type(exc).__name__}") from None
    meta = _read(mapping, "meta")
    if meta is None:
        return MetaUpdate(True, "")
    if not isinstance(meta, Mapping):
        raise InvalidSessionError("meta", f"must be a mapping or None, got {type(meta).__name__}")
    if len(meta) > META_KEYS:
        raise InvalidSessionError("meta", f"must have at most {META_KEYS} keys, got {len(meta)}")
    for key, value in meta.items():
        if not isinstance(key, str) or not 1 <= len(key) <= META_KEY_LENGTH:
            raise InvalidSessionError(
                "meta",
                f"keys must be str of 1-{META_KEY_LENGTH} characters, got {str(key)[:80]!r}",
            )
        if not isinstance(value, _META_SCALARS) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise InvalidSessionError(
                "meta",
                f"{key!r} must be a str, int, float, bool or None (finite), got "
                f"{type(value).__name__}",
            )
    text = _encode_meta({str(key): value for key, value in meta.items()})
    if len(text) > META_BYTES:
        raise InvalidSessionError(
            "meta", f"must be at most {META_BYTES} bytes as JSON, got {len(text)}"
        )
    return MetaUpdate(True, text)


UNKNOWN_REASON = "unknown"


def validate_reason(reason: object) -> str:
    """The disconnect reason: ``None`` becomes ``"unknown"``; else 1-128 printable ASCII."""
    if reason is None:
        return UNKNOWN_REASON
    if not isinstance(reason, str):
        raise InvalidSessionError("reason", f"must be a str or None, got {type(reason).__name__}")
    if not REASON_PATTERN.fullmatch(reason):
        raise InvalidSessionError("reason", "must be 1-128 printable ASCII characters")
    return reason
