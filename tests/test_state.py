"""The state machine's table and its one decision, :func:`grants` (pure, no store).

Every row of the table runs against every store in ``tests/test_store_contract.py``;
here: what ``grants`` decides for the answers the table cannot set up (stores that do
not name attempts, a failed call), the table's own consistency, and the documentation
page drawn from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from presence_kit import (
    ConnectOutcome,
    ConnectStatus,
    DisconnectOutcome,
    DisconnectStatus,
    FinishLeaveOutcome,
    FinishLeaveStatus,
)
from presence_kit._state import (
    TABLE,
    Call,
    Change,
    Event,
    Flag,
    Grant,
    SidState,
    UserState,
    as_granted,
    flags_of,
    grants,
)
from presence_kit._state_docs import markdown_table, mermaid

PAGE = Path(__file__).resolve().parent.parent / "docs" / "explanation" / "state-machine.md"


def connect(
    status: ConnectStatus, *, first: bool = True, attempt: str | None = "a.1"
) -> ConnectOutcome:
    return ConnectOutcome(
        status=status, first=first, connections=1, version=1, at=0.0, attempt=attempt
    )


def disconnect(
    status: DisconnectStatus, *, last: bool = True, attempt: str | None = "a.1"
) -> DisconnectOutcome:
    return DisconnectOutcome(
        status=status, last=last, record=None, version=2, at=0.0, attempt=attempt
    )


def test_a_failed_call_grants_nothing() -> None:
    for event in Event:
        assert grants(event, None) == Grant()


def test_a_first_call_announces_what_it_did() -> None:
    assert grants(Event.CONNECT, connect(ConnectStatus.NEW)) == Grant(online=True)
    assert grants(Event.CONNECT, connect(ConnectStatus.NEW, first=False)) == Grant()
    assert grants(Event.DISCONNECT, disconnect(DisconnectStatus.REMOVED)) == Grant(
        offline=True, removed=True
    )
    assert grants(Event.DISCONNECT, disconnect(DisconnectStatus.REMOVED, last=False)) == Grant(
        removed=True
    )
    for status in (ConnectStatus.REPEAT, ConnectStatus.STALE):
        assert grants(Event.CONNECT, connect(status)) == Grant()
    for status in (DisconnectStatus.REPEAT, DisconnectStatus.UNKNOWN):
        assert grants(Event.DISCONNECT, disconnect(status)) == Grant()


def test_a_repeat_is_the_callers_only_when_it_names_its_attempt() -> None:
    repeat = disconnect(DisconnectStatus.REPEAT, attempt="a.1")
    own = Grant(offline=True, removed=True, own_repeat=True)
    for event in (Event.DISCONNECT, Event.SWEEP, Event.RECONCILE):
        assert grants(event, repeat, attempt="a.1") == own
        assert grants(event, repeat, attempt="b.2") == Grant()
    assert grants(Event.CONNECT, connect(ConnectStatus.REPEAT), attempt="a.1") == Grant(
        online=True, own_repeat=True
    )


def test_only_a_replay_takes_an_unnamed_repeat_as_its_own() -> None:
    """A store that does not say whose the first call was (``attempt is None``): a
    replayed handler call trusts it was its own try; a sweep or reconcile does not."""
    unnamed = disconnect(DisconnectStatus.REPEAT, attempt=None)
    assert grants(Event.DISCONNECT, unnamed, attempt="a.1", replay=True).removed
    assert not grants(Event.DISCONNECT, unnamed, attempt="a.1").removed
    assert not grants(Event.SWEEP, unnamed, attempt="a.1").removed
    assert not grants(Event.DISCONNECT, unnamed, replay=True).removed  # no attempt: a first call
    assert grants(
        Event.CONNECT, connect(ConnectStatus.REPEAT, attempt=None), attempt="a.1", replay=True
    ).online


def test_as_granted_reads_an_own_repeat_as_what_its_try_did() -> None:
    repeat = disconnect(DisconnectStatus.REPEAT)
    grant = grants(Event.DISCONNECT, repeat, attempt="a.1")
    assert as_granted(repeat, grant).status is DisconnectStatus.REMOVED
    assert as_granted(repeat, Grant()) is repeat
    again = connect(ConnectStatus.REPEAT)
    assert as_granted(again, grants(Event.CONNECT, again, attempt="a.1")).status is (
        ConnectStatus.NEW
    )


def test_a_finish_grants_the_leave_only_when_it_ran_it() -> None:
    left = disconnect(DisconnectStatus.REMOVED)
    ran = FinishLeaveOutcome(outcome=left, reason="r", due=None)
    assert ran.status is FinishLeaveStatus.LEFT  # read from the outcome when not given
    assert grants(Event.FINISH, ran) == Grant(offline=True, removed=True)
    later = FinishLeaveOutcome(outcome=None, reason="", due=5.0)
    assert later.status is FinishLeaveStatus.LATER
    assert grants(Event.FINISH, later) == Grant()
    gone = FinishLeaveOutcome(outcome=None, reason="", due=None)
    assert gone.status is FinishLeaveStatus.GONE
    assert flags_of(ran) == {Flag.LAST} and flags_of(gone) == set()
    with pytest.raises(ValueError):
        grants(Event.DISCONNECT, ran)
    with pytest.raises(ValueError):
        grants(Event.FINISH, left)


def test_the_table_is_consistent() -> None:
    keys = [
        (r.event, r.user, r.others, r.sid, r.call, r.grace, r.moved, r.change, type(r.status))
        for r in TABLE
    ]
    assert len(keys) == len(set(keys)), "two rows for the same state and event"
    assert {r.event for r in TABLE} == set(Event)
    for row in TABLE:
        assert (row.sid is None) == (row.event is Event.FINISH) == (row.sid_after is None)
        repeat = row.status in (ConnectStatus.REPEAT, DisconnectStatus.REPEAT) or (
            Flag.REPEAT in row.flags
        )
        assert (row.change is Change.NONE) == (row.event is not Event.UPDATE)
        assert row.grant.own_repeat == (row.call is Call.RETRY and repeat)
        assert row.lua.startswith("lua/") and row.memory.startswith("MemoryStore.")
    # every state appears, before and after
    assert {r.user for r in TABLE} == set(UserState) == {r.user_after for r in TABLE}
    assert {r.sid for r in TABLE if r.sid} == set(SidState)


def _generated(name: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- generated: {re.escape(name)} -->\n(.*?)<!-- end of {re.escape(name)} -->",
        text,
        flags=re.DOTALL,
    )
    assert match is not None, f"{PAGE.name} has no generated {name} section"
    return match.group(1)


def test_the_docs_page_draws_the_table() -> None:
    """``docs/explanation/state-machine.md`` shows what the table generates. To update
    it: paste ``mermaid()`` and ``markdown_table()`` of ``presence_kit._state_docs``."""
    assert _generated("mermaid()") == mermaid()
    assert _generated("markdown_table()") == markdown_table()
