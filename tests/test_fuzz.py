"""Hostile input, fuzzed with hypothesis against a real redis-server: whatever a
session mapping, sid, reason or setting holds, the library raises only
``PresenceError`` (never another exception), and writes no key outside its prefixes.

CI runs a moderate profile; ``PRESENCE_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py``
runs a long one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence_kit import PresenceError, PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer

EXAMPLES = int(os.environ.get("PRESENCE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

INJECTION = st.sampled_from(
    [
        "*",
        "{x}",
        "1_user_2",
        "a:b",
        "\x00",
        "\r\nFLUSHALL\r\n",
        "' or 1=1",
        "../..",
        "é",
        " ",
        "",
        "x" * 200,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**120, max_value=10**200),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    INJECTION,
    st.binary(max_size=10),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
ROLES = st.one_of(st.sampled_from(["TeacherAPP", "TeacherHub", "ParticipantWeb"]), VALUES)
VALID_IDS = st.one_of(
    st.integers(min_value=0, max_value=10**6), st.text(alphabet="ab1-", min_size=1, max_size=5)
)


@st.composite
def session_mappings(draw: st.DrawFn) -> Any:
    """Mostly a valid session with a few fields made hostile, missing or extra; now
    and then something that is not a mapping at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(VALUES)
    mapping: dict[Any, Any] = {
        "role": draw(st.sampled_from(["TeacherAPP", "TeacherHub", "ParticipantWeb"])),
        "org_id": draw(VALID_IDS),
        "user_id": draw(VALID_IDS),
        "lesson_id": draw(VALID_IDS),
        "room_id": draw(VALID_IDS),
    }
    for field in draw(st.lists(st.sampled_from(sorted(mapping)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del mapping[field]
        else:
            mapping[field] = draw(ROLES if field == "role" else VALUES)
    extra = draw(
        st.dictionaries(
            st.one_of(st.integers(), st.text(max_size=5), st.none()), VALUES, max_size=3
        )
    )
    mapping.update({k: v for k, v in extra.items() if k not in mapping})
    return mapping


VALID_SIDS = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=20)
SIDS = st.one_of(VALID_SIDS, VALID_SIDS, VALID_SIDS, VALUES)  # mostly valid
REASONS = st.one_of(st.none(), st.sampled_from(["client disconnect", "ping timeout"]), VALUES)


@pytest.fixture(scope="module")
def kit(redis_server: RedisServer) -> Any:
    kit = PresenceKit(store=RedisStore(redis_server.client()), sockets=RecordingSockets())
    yield kit
    kit.close()


def assert_only_own_keys(server: RedisServer) -> None:
    for key in server.client().scan_iter(count=1000):
        assert key.startswith((b"alive:", b"presence:")), key


@FUZZ
@given(sid=SIDS, session=session_mappings(), reason=REASONS, connect_first=st.booleans())
def test_handlers_raise_only_presence_errors(
    kit: PresenceKit,
    redis_server: RedisServer,
    sid: Any,
    session: Any,
    reason: Any,
    connect_first: bool,
) -> None:
    for call in (
        (lambda: kit.handle_connect(sid, session)) if connect_first else None,
        lambda: kit.handle_disconnect(sid, session, reason=reason),
    ):
        if call is None:
            continue
        with contextlib.suppress(PresenceError):
            call()
    assert kit.stats.store_failures == 0  # hostile input never reaches Redis as an error
    assert_only_own_keys(redis_server)


def test_the_fuzzing_did_reach_redis(kit: PresenceKit) -> None:
    """Runs after the fuzz test (same module-scoped kit): valid sessions were among the
    generated ones, so keys were written and checked, not only refusals."""
    assert kit.stats.connects > 0
    assert kit.stats.disconnects > 0


SETTING_FIELDS = [f for f in Settings.__dataclass_fields__ if f != "id_pattern"]


@FUZZ
@given(field=st.sampled_from(SETTING_FIELDS), value=st.one_of(VALUES, INJECTION))
def test_settings_raise_only_presence_errors(field: str, value: Any) -> None:
    with contextlib.suppress(PresenceError):
        Settings(**{field: value})


@FUZZ
@given(pattern=st.one_of(st.text(max_size=20), st.sampled_from(["(", "[a-", "*", ".{1,9}"])))
def test_any_id_pattern_still_refuses_braces(pattern: str) -> None:
    try:
        custom = Settings(id_pattern=pattern)
    except PresenceError:
        return
    kit = PresenceKit(sockets=RecordingSockets(), settings=custom)
    with pytest.raises(PresenceError):
        kit.handle_connect(
            "s1", {"role": "TeacherAPP", "org_id": "{1}", "user_id": 2, "lesson_id": 3}
        )
