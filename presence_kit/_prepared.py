"""What a validated handler call carries to its store call: the return values of
:meth:`KitCore.prepare_connect <presence_kit._core.KitCore.prepare_connect>` and
:meth:`~presence_kit._core.KitCore.prepare_disconnect`."""

from __future__ import annotations

from typing import NamedTuple

from ._model import ConnectRequest, DisconnectRequest
from ._policies import DisconnectPolicy
from ._session import Session

__all__ = ["PreparedConnect", "PreparedDisconnect"]


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
