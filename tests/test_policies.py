"""The pure policies, exhaustively, with no I/O: facts in, effects out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_kit import (
    ClientRole,
    ConnectFacts,
    ConnectionRecord,
    ConnectOutcome,
    ConnectStatus,
    DisconnectFacts,
    DisconnectOutcome,
    DisconnectStatus,
    Effect,
    Emit,
    InvalidSessionError,
    JoinRoom,
    LeaveRoom,
    PolicyRegistry,
    Session,
    Settings,
    Track,
    default_policies,
)
from presence_kit._policies import insert_id, lesson_room, org_room

SETTINGS = Settings()
ids = st.one_of(
    st.integers(min_value=0, max_value=10**12),
    st.text(alphabet="abcXYZ0189-", min_size=1, max_size=12),
)
roles = st.sampled_from([r.value for r in ClientRole])
sids = st.text(alphabet="abcdefXYZ0123_-", min_size=1, max_size=20)
reasons = st.sampled_from(
    ["client disconnect", "server disconnect", "transport close", "ping timeout"]
)


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    return Session(
        role=draw(roles),
        org_id=draw(ids),
        user_id=draw(ids),
        lesson_id=draw(ids),
        room_id=draw(ids),
    )


@st.composite
def connect_outcomes(draw: st.DrawFn) -> ConnectOutcome | None:
    if draw(st.booleans()):
        return None
    return ConnectOutcome(
        status=draw(st.sampled_from(list(ConnectStatus))),
        first=draw(st.booleans()),
        connections=draw(st.integers(0, 5)),
        version=draw(st.integers(0, 9)),
        at=1_700_000_000.5,
        snapshot=tuple(draw(st.lists(st.tuples(ids, ids), max_size=4))),
    )


def disconnect_outcome(
    status: DisconnectStatus, last: bool, session: Session, sid: str
) -> DisconnectOutcome:
    record = None
    if status is not DisconnectStatus.UNKNOWN:
        record = ConnectionRecord(
            sid=sid, namespace="/", node_id="n", incarnation="i", session=session
        )
    return DisconnectOutcome(
        status=status, last=last, record=record, version=1, at=1_700_000_000.25
    )


def kinds(effects: Sequence[Effect]) -> list[type]:
    return [type(e) for e in effects]


@given(session=sessions(), sid=sids, outcome=connect_outcomes())
def test_connect_effects(session: Session, sid: str, outcome: ConnectOutcome | None) -> None:
    policy = default_policies()[session.role]
    effects = policy.on_connect(
        ConnectFacts(sid=sid, session=session, outcome=outcome, settings=SETTINGS)
    )
    lesson = JoinRoom(sid=sid, room=lesson_room(SETTINGS, session.lesson_id))
    came_online = outcome is not None and outcome.status is ConnectStatus.NEW and outcome.first
    if session.role == "TeacherHub":
        joins = [JoinRoom(sid=sid, room=org_room(SETTINGS, session.org_id)), lesson]
        if outcome is None:  # the store failed: no snapshot to send
            assert effects == joins
        else:
            online = list(dict.fromkeys(user for user, _lesson in outcome.snapshot))
            snapshot = Emit(event="presence_state", data={"user_ids": online}, to=sid)
            assert effects == [*joins, snapshot]
    elif session.role == "ParticipantWeb":
        assert effects == [lesson]
    else:
        announce = Emit(
            event="teacher_connect", data={"user_id": session.user_id}, to=f"org:{session.org_id}"
        )
        assert effects == ([lesson, announce] if came_online else [lesson])


@given(
    session=sessions(),
    sid=sids,
    status=st.sampled_from(list(DisconnectStatus)),
    last=st.booleans(),
    store_failed=st.booleans(),
    reason=reasons,
)
def test_disconnect_effects(
    session: Session,
    sid: str,
    status: DisconnectStatus,
    last: bool,
    store_failed: bool,
    reason: str,
) -> None:
    outcome = None if store_failed else disconnect_outcome(status, last, session, sid)
    policy = default_policies()[session.role]
    facts = DisconnectFacts(
        sid=sid, session=session, outcome=outcome, reason=reason, settings=SETTINGS
    )
    effects = list(policy.on_disconnect(facts))
    # Whatever happened, the lesson room is left, last.
    assert effects[-1] == LeaveRoom(sid=sid, room=f"lesson:{session.lesson_id}")
    removed = outcome is not None and outcome.status is DisconnectStatus.REMOVED
    if session.role == "TeacherAPP":
        if removed and last:
            assert effects[0] == Emit(
                event="teacher_disconnect",
                data={"user_id": session.user_id},
                to=f"org:{session.org_id}",
            )
            assert type(effects[0].data["user_id"]) is type(session.user_id)
        assert len(effects) == (2 if removed and last else 1)
    elif session.role == "TeacherHub":
        assert len(effects) == 1
    else:
        assert kinds(effects) == ([Track, LeaveRoom] if removed else [LeaveRoom])
        if removed:
            track = effects[0]
            assert isinstance(track, Track)
            assert track.event == "disconnect"
            assert track.distinct_id == str(session.user_id)
            assert track.properties == {
                "room_id": session.room_id,
                "lesson_id": session.lesson_id,
                "org_id": session.org_id,
                "reason": reason,
            }
            assert track.time == 1_700_000_000.25
            assert track.insert_id == insert_id(sid, "disconnect", "i")  # the record's incarnation


@given(org=ids, lesson=ids)
def test_org_and_lesson_rooms_never_collide(org: object, lesson: object) -> None:
    assert org_room(SETTINGS, org) != lesson_room(SETTINGS, lesson)  # type: ignore[arg-type]


def test_raw_room_ids_setting_gives_the_specs_rooms() -> None:
    raw = Settings(org_room="{org_id}", lesson_room="{lesson_id}")
    assert org_room(raw, 5) == "5"
    assert lesson_room(raw, 5) == "5"


@given(sid=sids, other=sids)
def test_insert_id_is_deterministic_short_and_distinct(sid: str, other: str) -> None:
    value = insert_id(sid, "disconnect")
    assert value == insert_id(sid, "disconnect")
    assert len(value) <= 36
    assert value.isalnum()
    if other != sid:
        assert insert_id(other, "disconnect") != value
    assert insert_id(sid, "disconnect", "inc-2") != value  # registered again after fencing


class ObserverPolicy:
    """A role the library doesn't know: observers join the org room and say goodbye."""

    tracks_alive = False
    connect_requires: frozenset[str] = frozenset()

    def on_connect(self, facts: ConnectFacts) -> Sequence[Effect]:
        return [JoinRoom(sid=facts.sid, room=f"observers:{facts.session.org_id}")]

    def on_disconnect(self, facts: DisconnectFacts) -> Sequence[Effect]:
        return [Emit(event="observer_left", data={"user_id": facts.session.user_id}, to=facts.sid)]


def test_registry_adds_a_role_and_refuses_unknown_ones() -> None:
    registry = default_policies()
    registry.register("Observer", ObserverPolicy())
    assert set(registry) == {"TeacherAPP", "TeacherHub", "ParticipantWeb", "Observer"}
    assert len(registry) == 4
    with pytest.raises(InvalidSessionError, match="unknown role 'Nope'") as info:
        registry.for_role("Nope")
    assert info.value.field == "role"
    with pytest.raises(TypeError):
        registry.register("Broken", object())  # type: ignore[arg-type]
    assert len(PolicyRegistry()) == 0


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (JoinRoom, {"sid": "", "room": "r"}),
        (LeaveRoom, {"sid": "s", "room": ""}),
        (Emit, {"event": "", "data": None, "to": "r"}),
        (Track, {"event": "e", "distinct_id": "d", "time": 1.0, "insert_id": "x" * 37}),
        (Track, {"event": "e", "distinct_id": "d", "time": True, "insert_id": "x"}),
    ],
)
def test_effects_validate_when_built(factory: type, kwargs: dict[str, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        factory(**kwargs)
