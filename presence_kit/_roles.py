"""Client roles of the spec."""

from __future__ import annotations

from enum import Enum

__all__ = ["ClientRole"]


class ClientRole(str, Enum):
    """The spec's three client roles; each value is the spec's own spelling.

    A ``ClientRole`` compares equal to its value (``ClientRole.TEACHER_APP ==
    "TeacherAPP"``), so sessions may carry either. Integrators add roles of their own
    as plain strings with :meth:`PresenceKit.register_policy`.
    """

    TEACHER_APP = "TeacherAPP"
    TEACHER_HUB = "TeacherHub"
    PARTICIPANT_WEB = "ParticipantWeb"

    def __str__(self) -> str:
        return self.value
