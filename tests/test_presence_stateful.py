"""A model check of presence: random connects, disconnects, duplicate and late
disconnects, retried script calls and reconnects of a few users, spread over three
kits (server nodes) that share one real Redis — standalone and a real Redis Cluster.

The model is the obvious one: each user has a set of live sids. Redis and the emitted
events must agree with it after every step: one ``teacher_connect`` per offline ->
online transition, one ``teacher_disconnect`` per online -> offline transition,
``state`` equal to the model's, no connection record left behind, one analytics
``disconnect`` per ended participant connection.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from presence_kit import PresenceKit
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingAnalytics, RecordingSockets

TEACHERS = [7, "t-8", 9]
PARTICIPANTS = [41, "p-42"]
ORG = 3


def teacher(user: Any, lesson: int = 1) -> dict[str, Any]:
    return {"role": "TeacherAPP", "org_id": ORG, "user_id": user, "lesson_id": lesson}


def participant(user: Any) -> dict[str, Any]:
    return {"role": "ParticipantWeb", "org_id": ORG, "user_id": user, "lesson_id": 1, "room_id": 5}


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class PresenceMachine(RuleBasedStateMachine):
    """Subclasses set ``make_client`` (a redis-py client factory) and ``flush``."""

    make_client: Any = None
    flush: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.sids = (f"sid-{n}" for n in itertools.count())
        self.live: dict[str, tuple[int, dict[str, Any]]] = {}  # sid -> (node, session)
        self.ended: dict[str, tuple[int, dict[str, Any]]] = {}
        self.transitions: Counter[tuple[str, Any]] = Counter()
        self.ended_participants = 0

    @initialize()
    def start_nodes(self) -> None:
        type(self).flush()
        self.raw = type(self).make_client()
        self.nodes = []
        for _ in range(3):
            sockets, analytics = RecordingSockets(background=False), RecordingAnalytics()
            kit = PresenceKit(
                store=RedisStore(type(self).make_client()), sockets=sockets, analytics=analytics
            )
            self.nodes.append((kit, sockets, analytics))

    def teardown(self) -> None:
        for kit, _s, _a in getattr(self, "nodes", []):
            kit.close()

    def online(self, user: Any) -> bool:
        return any(
            s["role"] == "TeacherAPP" and s["user_id"] == user for _n, s in self.live.values()
        )

    # --- rules ------------------------------------------------------------------------

    @rule(user=st.sampled_from(TEACHERS), node=st.integers(0, 2), lesson=st.integers(1, 2))
    def connect_teacher(self, user: Any, node: int, lesson: int) -> None:
        was_online = self.online(user)
        sid = next(self.sids)
        self.nodes[node][0].handle_connect(sid, teacher(user, lesson))
        self.live[sid] = (node, teacher(user, lesson))
        if not was_online:
            self.transitions["teacher_connect", user] += 1

    @rule(user=st.sampled_from(PARTICIPANTS), node=st.integers(0, 2))
    def connect_participant(self, user: Any, node: int) -> None:
        sid = next(self.sids)
        self.nodes[node][0].handle_connect(sid, participant(user))
        self.live[sid] = (node, participant(user))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.live)))
        node, session = self.live.pop(sid)
        self.nodes[node][0].handle_disconnect(sid, session, reason="transport close")
        self.ended[sid] = (node, session)
        if session["role"] == "TeacherAPP" and not self.online(session["user_id"]):
            self.transitions["teacher_disconnect", session["user_id"]] += 1
        if session["role"] == "ParticipantWeb":
            self.ended_participants += 1

    @precondition(lambda self: bool(self.ended))
    @rule(data=st.data(), other_node=st.integers(0, 2))
    def late_or_duplicate_disconnect(self, data: st.DataObject, other_node: int) -> None:
        """The same disconnect again (a retried script call, or delivered twice),
        possibly on another node, possibly after the user reconnected."""
        sid = data.draw(st.sampled_from(sorted(self.ended)))
        _node, session = self.ended[sid]
        self.nodes[other_node][0].handle_disconnect(sid, session, reason="ping timeout")

    @precondition(lambda self: bool(self.ended))
    @rule(data=st.data())
    def late_connect_of_a_dead_sid(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.ended)))
        node, session = self.ended[sid]
        outcome = self.nodes[node][0].handle_connect(sid, session)
        assert outcome is not None and outcome.status.value == "stale"

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def retried_connect(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.live)))
        node, session = self.live[sid]
        outcome = self.nodes[node][0].handle_connect(sid, session)
        assert outcome is not None and outcome.status.value == "repeat"

    @rule(user=st.sampled_from(TEACHERS), node=st.integers(0, 2))
    def disconnect_never_connected(self, user: Any, node: int) -> None:
        self.nodes[node][0].handle_disconnect(next(self.sids), teacher(user))

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def announcements_match_transitions(self) -> None:
        emitted: Counter[tuple[str, Any]] = Counter()
        for _kit, sockets, _a in getattr(self, "nodes", []):
            for event, data, _to in sockets.emitted:
                if event in ("teacher_connect", "teacher_disconnect"):
                    emitted[event, data["user_id"]] += 1
        assert emitted == +self.transitions

    @invariant()
    def redis_matches_the_model(self) -> None:
        if not hasattr(self, "raw"):
            return
        for user in TEACHERS:
            key = f"alive:org_{ORG}_user_{user}"
            stored = _text(self.raw.hget(key, "state"))
            live = {sid for sid, (_n, s) in self.live.items() if s["user_id"] == user}
            if live:
                assert stored == "connect"
                assert self.raw.ttl(key) == -1
            elif self.transitions["teacher_connect", user]:
                assert stored == "disconnect"
            else:
                assert stored is None
            fields = {_text(f) for f in self.raw.hkeys(key)}
            assert {f[2:] for f in fields if f.startswith("c:")} == live
        for user in PARTICIPANTS:
            key = f"presence:{{alive:org_{ORG}_user_{user}}}:conns:ParticipantWeb"
            live = {sid for sid, (_n, s) in self.live.items() if s["user_id"] == user}
            fields = {_text(f) for f in self.raw.hkeys(key)}
            assert {f[2:] for f in fields if f.startswith("c:")} == live
            assert (len(live) > 0) == ("n" in fields)

    @invariant()
    def one_analytics_event_per_ended_participant_connection(self) -> None:
        events = [e for _k, _s, analytics in getattr(self, "nodes", []) for e in analytics.events]
        assert len(events) == self.ended_participants
        assert len({e.insert_id for e in events}) == len(events)

    @invariant()
    def queries_agree(self) -> None:
        if not hasattr(self, "nodes"):
            return
        online = {u.user_id: u.connections for u in self.nodes[0][0].online_users(ORG)}
        expected = Counter(
            s["user_id"] for _n, s in self.live.values() if s["role"] == "TeacherAPP"
        )
        assert online == dict(expected)


STATEFUL = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_presence_model_on_standalone_redis(redis_server: Any) -> None:
    class Machine(PresenceMachine):
        make_client = staticmethod(redis_server.client)
        flush = staticmethod(redis_server.flush)

    run_state_machine_as_test(Machine, settings=STATEFUL)


@pytest.mark.cluster
def test_presence_model_on_a_redis_cluster(redis_cluster: Any) -> None:
    class Machine(PresenceMachine):
        make_client = staticmethod(redis_cluster.client)
        flush = staticmethod(redis_cluster.flush)

    run_state_machine_as_test(Machine, settings=settings(STATEFUL, max_examples=10))
