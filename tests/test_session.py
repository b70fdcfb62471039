"""Session, sid, reason and settings validation: every refusal names its field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_kit import (
    ClientRole,
    InvalidSessionError,
    InvalidSettingsError,
    PresenceError,
    Settings,
)
from presence_kit._codec import compact, id_list
from presence_kit._session import parse_session, read_role, validate_reason, validate_sid

DEFAULT = re.compile(Settings().id_pattern)
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}


def parse(raw: object, required: frozenset[str] = frozenset()) -> object:
    return parse_session(raw, id_pattern=DEFAULT, required=required)


def test_valid_session_keeps_id_types_and_ignores_extra_keys() -> None:
    session = parse({**TEACHER, "user_id": "u-7", "extra": object()})
    assert session.user_id == "u-7"
    assert session.org_id == 1
    assert session.room_id is None


def test_client_role_member_is_accepted_as_its_value() -> None:
    assert read_role({"role": ClientRole.TEACHER_HUB}) == "TeacherHub"
    assert ClientRole.PARTICIPANT_WEB == "ParticipantWeb"
    assert str(ClientRole.TEACHER_APP) == "TeacherAPP"


@pytest.mark.parametrize("field", ["role", "org_id", "user_id", "lesson_id"])
def test_missing_field_is_named(field: str) -> None:
    raw = {k: v for k, v in TEACHER.items() if k != field}
    with pytest.raises(InvalidSessionError, match=f"^{field}: is missing") as info:
        parse(raw)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PresenceError)


def test_room_id_required_only_when_asked() -> None:
    with pytest.raises(InvalidSessionError) as info:
        parse(TEACHER, frozenset({"room_id"}))
    assert info.value.field == "room_id"
    assert parse({**TEACHER, "room_id": 9}, frozenset({"room_id"})).room_id == 9


@pytest.mark.parametrize("bad", [None, True, False, 1.5, [1], {"a": 1}, b"1", object()])
@pytest.mark.parametrize("field", ["org_id", "user_id", "lesson_id"])
def test_wrong_type_is_refused(field: str, bad: object) -> None:
    with pytest.raises(InvalidSessionError) as info:
        parse({**TEACHER, field: bad})
    assert info.value.field == field


@pytest.mark.parametrize(
    "bad",
    ["", "1_user_2", "*", ":", "{", "}", "a b", " 1", "1\n", "\x00", "é", "x" * 129, -1, 10**128],
)
def test_id_outside_the_alphabet_is_refused(bad: object) -> None:
    with pytest.raises(InvalidSessionError) as info:
        parse({**TEACHER, "user_id": bad})
    assert info.value.field == "user_id"


def test_longest_allowed_ids() -> None:
    assert parse({**TEACHER, "user_id": "x" * 128}).user_id == "x" * 128
    assert parse({**TEACHER, "user_id": 10**128 - 1}).user_id == 10**128 - 1


def test_custom_pattern_widens_but_never_admits_braces_or_whitespace() -> None:
    wide = re.compile(r".{1,200}")
    assert parse_session({**TEACHER, "user_id": "a_b@c"}, id_pattern=wide).user_id == "a_b@c"
    for bad in ("{tag}", "a b", "a\tb"):
        with pytest.raises(InvalidSessionError):
            parse_session({**TEACHER, "user_id": bad}, id_pattern=wide)


@pytest.mark.parametrize("bad", [None, "", "a b", "x" * 65, 5, "Teacher{APP}"])
def test_bad_role(bad: object) -> None:
    with pytest.raises(InvalidSessionError) as info:
        read_role({"role": bad})
    assert info.value.field == "role"


@pytest.mark.parametrize("bad", [None, [], "not a mapping", 3])
def test_session_must_be_a_mapping(bad: object) -> None:
    with pytest.raises(InvalidSessionError) as info:
        parse(bad)
    assert info.value.field == "session"


class Hostile(Mapping[str, object]):
    def __getitem__(self, key: str) -> object:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_hostile_mapping_becomes_a_presence_error() -> None:
    with pytest.raises(InvalidSessionError, match="could not be read"):
        parse(Hostile())


@pytest.mark.parametrize("sid", ["AbC-_123", "x", "a" * 128])
def test_engineio_sids_are_accepted(sid: str) -> None:
    assert validate_sid(sid) == sid


@pytest.mark.parametrize("sid", ["", "a b", "a:b", "{x}", "a" * 129, None, 5, b"abc"])
def test_bad_sids(sid: object) -> None:
    with pytest.raises(InvalidSessionError) as info:
        validate_sid(sid)
    assert info.value.field == "sid"


def test_reason() -> None:
    assert validate_reason(None) == "unknown"
    assert validate_reason("client disconnect") == "client disconnect"
    for bad in ("", "x" * 129, "tab\there", 5, b"x"):
        with pytest.raises(InvalidSessionError) as info:
            validate_reason(bad)
        assert info.value.field == "reason"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alive_key", "alive:{user_id}"),
        ("alive_key", "alive:{org_id}:{user_id}:{extra}"),
        ("alive_key", "{{tag}}:{org_id}_{user_id}"),
        ("alive_key", "alive:{org_id!r}_{user_id}"),
        ("alive_key", "alive:{org_id"),
        ("org_room", "org"),
        ("lesson_room", "{org_id}"),
        ("key_prefix", "has space"),
        ("key_prefix", "{tag}"),
        ("state_field", ""),
        ("disconnect_state", "connect"),
        ("offline_ttl", 0),
        ("offline_ttl", True),
        ("tombstone_ttl", 1.5),
        ("announce_connect", "yes"),
        ("id_pattern", "("),
        ("id_pattern", 5),
        ("node_id", "bad node"),
        ("leave_grace", -1),
        ("leave_grace", float("nan")),
        ("leave_poll_interval", 0),
        ("heartbeat_interval", 0),
        ("node_timeout", 1.0),
        ("sweep_batch", 0),
        ("sweep_batch", True),
        ("lost_reason", ""),
        ("include_version", 1),
    ],
)
def test_bad_settings_name_their_field(field: str, value: object) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_settings_spec_defaults() -> None:
    s = Settings()
    assert s.alive_key == "alive:org_{org_id}_user_{user_id}"
    assert (s.state_field, s.connect_state, s.disconnect_state) == (
        "state",
        "connect",
        "disconnect",
    )
    assert s.offline_ttl == 3600
    assert s.teacher_disconnect_event == "teacher_disconnect"
    assert s.analytics_disconnect_event == "disconnect"
    assert s.as_dict()["offline_ttl"] == 3600


@given(
    st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=10**40),
            st.text(max_size=20),
            st.sampled_from([ClientRole.TEACHER_APP, None]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_compact_id_lists_match_the_json_encoder_byte_for_byte(values: list[object]) -> None:
    """Queue members, index entries and records are written by a fast path; they must
    stay the exact text the JSON encoder gives (what older records in Redis hold)."""
    assert id_list(*values) == compact(values)
    assert json.loads(id_list(*values)) == json.loads(compact(values))


def test_int_and_str_ids_take_the_fast_path_and_others_the_checks() -> None:
    pattern = re.compile("[a-z0-9]{1,8}")
    assert parse_session({**TEACHER, "user_id": 12345678}, id_pattern=pattern).user_id == 12345678
    with pytest.raises(InvalidSessionError, match="user_id"):
        parse_session({**TEACHER, "user_id": 123456789}, id_pattern=pattern)  # 9 digits
    with pytest.raises(InvalidSessionError, match="user_id"):
        parse_session({**TEACHER, "user_id": True}, id_pattern=pattern)
    with pytest.raises(InvalidSessionError, match="user_id"):
        parse_session({**TEACHER, "user_id": "a{b}"}, id_pattern=re.compile(".*"))


def test_session_dict_types_the_mapping_for_integrators_code() -> None:
    """``SessionDict`` is what a type checker sees; the handlers take any mapping."""
    import subprocess
    import sys

    from presence_kit import PresenceKit, SessionDict
    from presence_kit.testing import RecordingSockets

    assert SessionDict.__required_keys__ == {"role", "org_id", "user_id", "lesson_id"}
    assert SessionDict.__optional_keys__ == {"room_id", "meta"}
    session: SessionDict = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 3}
    with PresenceKit(sockets=RecordingSockets()) as kit:
        kit.handle_connect("sid-1", session)
        assert [u.user_id for u in kit.online_users(1)] == [2]

    program = (
        "from presence_kit import SessionDict\n"
        "ok: SessionDict = {'role': 'ParticipantWeb', 'org_id': 1, 'user_id': 'u',"
        " 'lesson_id': 3, 'room_id': 'r'}\n"
        "missing: SessionDict = {'role': 'TeacherAPP', 'org_id': 1, 'user_id': 2}\n"
        "wrong: SessionDict = {'role': 'TeacherAPP', 'org_id': 1, 'user_id': 2.5,"
        " 'lesson_id': 3}\n"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "-c", program],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1, checked.stdout
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4"], checked.stdout
    assert '"lesson_id"' in errors[0] and '"user_id"' in errors[1], checked.stdout


def test_a_stored_record_is_parsed_strictly() -> None:
    """Records parse from bytes or text alike; anything after the JSON value (or no
    value at all) is a corrupt record, as ``json.loads`` would refuse it."""
    from presence_kit import ConnectionRecord, StoreError

    text = '[1,"u7",5,"ParticipantWeb","node/inc","room-9"]'
    record = ConnectionRecord.from_json("s1", text.encode())
    assert record == ConnectionRecord.from_json("s1", text)
    assert (record.session.user_id, record.session.room_id, record.incarnation) == (
        "u7",
        "room-9",
        "inc",
    )
    for corrupt in (text + "x", text + " []", "", "[1,2]", b"\xff"):
        with pytest.raises(StoreError, match="corrupt connection record"):
            ConnectionRecord.from_json("s1", corrupt)


SAME_AS_DEFAULT = re.compile(f"(?:{Settings().id_pattern})")  # the same ids, no fast path


@given(
    st.one_of(
        st.integers(min_value=-5, max_value=10**130),
        st.text(max_size=140),
        st.text(alphabet="AZaz09-_{} \n", max_size=130),
    )
)
def test_the_default_patterns_fast_path_accepts_exactly_what_the_pattern_does(
    value: object,
) -> None:
    """With the default id_pattern an int id skips the regular expression and a str id
    the forbidden-character check: the same ids are accepted and refused as with the
    same pattern written another way (which takes every check)."""

    def outcome(pattern: re.Pattern[str]) -> object:
        try:
            return parse_session({**TEACHER, "user_id": value}, id_pattern=pattern).user_id
        except InvalidSessionError as exc:
            return ("refused", exc.field)

    assert outcome(DEFAULT) == outcome(SAME_AS_DEFAULT)
