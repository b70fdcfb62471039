"""presence_kit: presence and disconnect handling for Python Socket.IO servers.

Call :meth:`AsyncPresenceKit.handle_connect` / :meth:`~AsyncPresenceKit.handle_disconnect`
(or the blocking :class:`PresenceKit`'s) from your Socket.IO handlers; plug in the
adapters of :mod:`presence_kit.redis`, :mod:`presence_kit.socketio` and
:mod:`presence_kit.mixpanel`, or your own (see :mod:`presence_kit.testing`).
"""

from __future__ import annotations

from ._async.kit import AsyncPresenceKit
from ._codec import ConnectionRecord
from ._core import KitStats
from ._effects import Effect, Emit, JoinRoom, LeaveRoom, Track
from ._errors import (
    AnalyticsError,
    BackendError,
    InvalidInputError,
    InvalidSessionError,
    InvalidSettingsError,
    PresenceError,
    SocketsError,
    StoreError,
)
from ._keys import KeySchema, UserKeys
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
    OnlineUser,
    OrgQuery,
    StoreLayout,
    UserPresence,
)
from ._policies import (
    ConnectFacts,
    DisconnectFacts,
    DisconnectPolicy,
    ParticipantWebPolicy,
    PolicyRegistry,
    TeacherAppPolicy,
    TeacherHubPolicy,
    default_policies,
)
from ._ports import (
    Analytics,
    AsyncSockets,
    AsyncStore,
    DeclaresBlocking,
    HasNamespace,
    ListsLocalSids,
    ListsNodes,
    Sockets,
    Store,
)
from ._roles import ClientRole
from ._session import Session, SessionDict
from ._settings import Settings
from ._sync.kit import PresenceKit

__version__ = "0.1.0.dev0"

__all__ = [
    "Analytics",
    "AnalyticsError",
    "AsyncPresenceKit",
    "AsyncSockets",
    "AsyncStore",
    "BackendError",
    "ClientRole",
    "ConnectFacts",
    "ConnectOutcome",
    "ConnectRequest",
    "ConnectStatus",
    "ConnectionRecord",
    "DeclaresBlocking",
    "DisconnectFacts",
    "DisconnectOutcome",
    "DisconnectPolicy",
    "DisconnectRequest",
    "DisconnectStatus",
    "Effect",
    "Emit",
    "FinishLeaveOutcome",
    "FinishLeaveRequest",
    "FinishLeaveStatus",
    "HasNamespace",
    "Heartbeat",
    "InvalidInputError",
    "InvalidSessionError",
    "InvalidSettingsError",
    "JoinRoom",
    "KeySchema",
    "KitStats",
    "LeaveRoom",
    "ListsLocalSids",
    "ListsNodes",
    "NodeInfo",
    "OnlineUser",
    "OrgQuery",
    "ParticipantWebPolicy",
    "PolicyRegistry",
    "PresenceError",
    "PresenceKit",
    "Session",
    "SessionDict",
    "Settings",
    "Sockets",
    "SocketsError",
    "Store",
    "StoreError",
    "StoreLayout",
    "TeacherAppPolicy",
    "TeacherHubPolicy",
    "Track",
    "UserKeys",
    "UserPresence",
    "__version__",
    "default_policies",
]
