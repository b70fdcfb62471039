"""The hot path's positional makers build exactly what the classes build."""

from __future__ import annotations

import dataclasses

import pytest

from presence_kit import (
    ConnectionRecord,
    ConnectOutcome,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectStatus,
    Emit,
    JoinRoom,
    LeaveRoom,
    Settings,
)
from presence_kit._construct import maker
from presence_kit._session import Session, make_session


def test_a_made_value_equals_the_constructed_one_field_for_field() -> None:
    session = Session(role="TeacherAPP", org_id=1, user_id="u7", lesson_id=5, room_id=None)
    record = ConnectionRecord(
        sid="s1", namespace="/", node_id="n", incarnation="i", session=session
    )
    cases: list[object] = [
        session,
        record,
        ConnectOutcome(status=ConnectStatus.NEW, first=True, connections=1, version=3, at=1.5),
        DisconnectOutcome(
            status=DisconnectStatus.REMOVED,
            last=True,
            record=record,
            version=4,
            at=2.5,
            deferred=False,
            attempt="a1",
        ),
        Emit(event="teacher_disconnect", data={"user_id": "u7"}, to="org_1"),
        JoinRoom(sid="s1", room="lesson_5"),
        LeaveRoom(sid="s1", room="lesson_5"),
        Settings(),
    ]
    for value in cases:
        fields = [getattr(value, f.name) for f in dataclasses.fields(value)]  # type: ignore[arg-type]
        made = maker(type(value))(*fields)
        assert made == value and type(made) is type(value)
        assert repr(made) == repr(value)
        first_field = dataclasses.fields(made)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, first_field, None)  # still frozen
    assert make_session("TeacherAPP", 1, "u7", 5, None) == session


def test_a_maker_takes_every_field_in_declaration_order() -> None:
    make = maker(LeaveRoom)
    assert make.__doc__ == "A LeaveRoom from its fields, in order: sid, room."
    assert make("s1", "lesson_5") == LeaveRoom(sid="s1", room="lesson_5")
    with pytest.raises(TypeError):
        make("s1")  # no defaults: a missing field is an error, not a silent gap
