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
    OnlineCount,
    OnlineUser,
    OrgQuery,
    StoreLayout,
    UpdateOutcome,
    UpdateRequest,
    UpdateStatus,
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
    UpdateFacts,
    UpdatePolicy,
    default_policies,
    move_lesson_room,
)
from ._ports import (
    Analytics,
    AsyncCountsOnline,
    AsyncSockets,
    AsyncStore,
    AsyncUpdates,
    CountsOnline,
    DeclaresBlocking,
    HasNamespace,
    ListsLocalSids,
    ListsNodes,
    Sockets,
    Store,
    Updates,
)
from ._roles import ClientRole
from ._session import Session, SessionDict
from ._settings import Settings
from ._sync.kit import PresenceKit

__version__ = "0.1.0.dev0"

__all__ = [
    "Analytics",
    "AnalyticsError",
    "AsyncCountsOnline",
    "AsyncPresenceKit",
    "AsyncSockets",
    "AsyncStore",
    "AsyncUpdates",
    "BackendError",
    "ClientRole",
    "ConnectFacts",
    "ConnectOutcome",
    "ConnectRequest",
    "ConnectStatus",
    "ConnectionRecord",
    "CountsOnline",
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
    "OnlineCount",
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
    "UpdateFacts",
    "UpdateOutcome",
    "UpdatePolicy",
    "UpdateRequest",
    "UpdateStatus",
    "Updates",
    "UserKeys",
    "UserPresence",
    "__version__",
    "default_policies",
    "move_lesson_room",
]
