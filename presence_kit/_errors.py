"""The exception tree of presence_kit.

Every exception the library raises derives from :class:`PresenceError`::

    PresenceError
    ├── InvalidInputError (also ValueError)   you passed something we refuse
    │   ├── InvalidSessionError               a session mapping or sid is invalid
    │   └── InvalidSettingsError              a Settings field is invalid
    └── BackendError                          a backend failed; not your input
        ├── StoreError                        Redis (or another store) failed
        ├── SocketsError                      the Socket.IO server refused an operation
        └── AnalyticsError                    analytics delivery failed

Invalid input names the offending field in :attr:`InvalidInputError.field`.
Backend errors keep the original exception as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AnalyticsError",
    "BackendError",
    "InvalidInputError",
    "InvalidSessionError",
    "InvalidSettingsError",
    "PresenceError",
    "SocketsError",
    "StoreError",
]


class PresenceError(Exception):
    """Root of every exception raised by presence_kit."""


class InvalidInputError(PresenceError, ValueError):
    """Input was refused before anything was written; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidSessionError(InvalidInputError):
    """A session mapping (or a sid) is missing a field, has a wrong type or a refused value."""


class InvalidSettingsError(InvalidInputError):
    """A :class:`~presence_kit.Settings` field has a refused value."""


class BackendError(PresenceError):
    """A backend (store, sockets or analytics) failed; the input was fine."""


class StoreError(BackendError):
    """The presence store (Redis) failed or did not answer within its deadline."""


class SocketsError(BackendError):
    """The Socket.IO server failed to join, leave or emit."""


class AnalyticsError(BackendError):
    """Analytics delivery failed (only raised by adapters; never reaches a handler).

    Reserved for analytics adapters that report failures to their caller; the shipped
    :class:`~presence_kit.mixpanel.MixpanelAnalytics` never raises it (it counts and logs
    what it drops)."""
