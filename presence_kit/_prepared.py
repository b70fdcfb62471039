"""What a validated handler call carries to its store call: the return values of
:meth:`KitCore.prepare_connect <presence_kit._core.KitCore.prepare_connect>` and
:meth:`~presence_kit._core.KitCore.prepare_disconnect`; and what a local connection's
connect validated, kept for its disconnect (:class:`Held`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._keys import UserKeys
from ._model import ConnectRequest, DisconnectRequest, UpdateRequest
from ._policies import DisconnectPolicy
from ._session import Session, make_session

__all__ = [
    "Held",
    "PreparedConnect",
    "PreparedDisconnect",
    "PreparedUpdate",
    "hold",
    "same_session",
]


class PreparedConnect(NamedTuple):
    """A validated connect: its sid, session and policy, and the store request."""

    sid: str
    session: Session
    policy: DisconnectPolicy
    request: ConnectRequest


class PreparedDisconnect(NamedTuple):
    """A validated disconnect: its sid, session and policy, and the store request."""

    sid: str
    session: Session
    policy: DisconnectPolicy
    request: DisconnectRequest


class PreparedUpdate(NamedTuple):
    """A validated update: its sid, new session and policy, the store request, and the
    connection's session before it as this node knows it (``None``: not known here)."""

    sid: str
    session: Session
    policy: DisconnectPolicy
    request: UpdateRequest
    previous: Session | None


class Held(NamedTuple):
    """What a local connection's connect validated and built, kept until its
    disconnect: given the same session values, the disconnect reuses them instead of
    validating the session and building the user's keys again."""

    values: tuple[str | int, str | int, str | int, str | int]
    """The session's ``role``, ``org_id``, ``user_id`` and ``lesson_id`` as given."""
    session: Session
    """The session as a disconnect reads it (no ``room_id``)."""
    policy: DisconnectPolicy
    keys: UserKeys
    tombstone_key: str


def hold(raw_session: object, prepared: PreparedConnect) -> Held | None:
    """What to keep of a connect for its disconnect; ``None`` unless the session is a
    plain ``dict`` whose fields are plain ``str`` and ``int`` (their ``==`` is exact)."""
    if type(raw_session) is not dict:
        return None
    get = raw_session.get
    values = (get("role"), get("org_id"), get("user_id"), get("lesson_id"))
    for value in values:
        if type(value) is not str and type(value) is not int:
            return None
    s, request = prepared.session, prepared.request
    return Held(
        values,  # type: ignore[arg-type]  # checked just above
        make_session(s.role, s.org_id, s.user_id, s.lesson_id, None),
        prepared.policy,
        request.keys,
        request.tombstone_key,
    )


def same_session(held: Held, raw_session: Any) -> bool:
    """Whether a disconnect's session has the values its connect validated (each of
    the same plain type and equal: it would validate to the same session)."""
    if type(raw_session) is not dict:
        return False
    get = raw_session.get
    role, org_id, user_id, lesson_id = held.values
    for old, new in (
        (role, get("role")),
        (org_id, get("org_id")),
        (user_id, get("user_id")),
        (lesson_id, get("lesson_id")),
    ):
        if type(new) is not type(old) or new != old:
            return False
    return True
