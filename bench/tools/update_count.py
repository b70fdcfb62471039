"""What ``handle_update`` and ``count_online`` cost: ``python -m bench.tools.update_count
[--quick]`` prints two Markdown tables.

1. ``handle_update`` (a lesson change of a live connection; ParticipantWeb's room too)
   against what an app had to do before: ``handle_disconnect`` and then
   ``handle_connect`` again (with a new sid, as a reconnecting client's: a sid that
   disconnected is never recorded again). Per operation: round trips counted on the
   client (``bench._common``'s counted connections), and the server's view of the
   work (``INFO commandstats``, reset with ``CONFIG RESETSTAT`` before each timed
   block): script calls, every command (a script's own ``redis.call()`` s included),
   the scripts' µs (``cmdstat_evalsha``), and the wall and process-CPU time.
   Rounds interleave the two paths, their order rotated each round.
2. ``count_online(org)`` (and with ``lesson_id``) at 10 and at 20,000 online TeacherAPP
   users of an org (2,000 with ``--quick``), all connected through the kit, the two
   sizes interleaved over rounds: the median per-call time at each size and their
   ratio, which stays near 1.0 (two O(1) reads in one round trip). Beside it
   ``online_users(org)``, whose cost grows with the answer.

Both run the blocking ``PresenceKit`` on a ``RedisStore`` over a redis-server of their
own (``tests.support.redis_servers``), with the recording sockets (no background
thread) and settings that keep the background steps out of the way. The exit status is
1 if a measurement failed (its error is printed; the other still runs).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench._common import (
    PARTICIPANT_WEB,
    REASON,
    TEACHER_APP,
    BenchError,
    Counter,
    RedisProbe,
    ServerSample,
    Spread,
    command_delta,
    machine_info,
    median,
    new_sid,
    paired_ratios,
    rotated,
    sync_client,
)
from presence_kit import (
    ConnectStatus,
    DisconnectStatus,
    OnlineCount,
    PresenceKit,
    Settings,
    UpdateStatus,
)
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer

SETTINGS = Settings(
    heartbeat_interval=30, node_timeout=60, reconcile_interval=30, leave_poll_interval=30
)
UPDATE = "handle_update"
RECONNECT = "disconnect + connect"
EN = "\u2013"  # an en dash (ranges)
ORGS = 10
"""The update section's connections are spread over this many orgs."""


@dataclass(frozen=True)
class Sizes:
    update_rounds: int
    update_ops: int
    """Connections per role, each updated once per path and round."""
    count_rounds: int
    count_big: int
    count_small: int
    count_calls: int
    """``count_online`` calls per size, call kind and round."""
    list_calls: int
    """``online_users`` calls per size and round."""

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(3, 200, 5, 2_000, 10, 300, 5)
        return cls(7, 1_000, 9, 20_000, 10, 1_000, 10)


def _kit(store: RedisStore, sockets: RecordingSockets) -> PresenceKit:
    return PresenceKit(store=store, sockets=sockets, settings=SETTINGS)


def _check_failures(kit: PresenceKit, where: str) -> None:
    stats = kit.stats
    if stats.store_failures or stats.sockets_failures or stats.queued:
        raise BenchError(f"{where}: presence_kit counted failures: {stats}")


# --- 1. handle_update versus disconnect + connect ---------------------------------------------


@dataclass
class PathSamples:
    """One path's samples for one role across rounds."""

    wall: list[float] = field(default_factory=list)  # seconds per op, one per round
    cpu: list[float] = field(default_factory=list)
    ops: int = 0
    round_trips: int = 0
    mix: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)

    def add(
        self, wall: float, cpu: float, n: int, rt: int, s0: ServerSample, s1: ServerSample
    ) -> None:
        self.wall.append(wall / n)
        self.cpu.append(cpu / n)
        self.ops += n
        self.round_trips += rt
        for name, calls in command_delta(s0, s1).items():
            self.mix[name] = self.mix.get(name, 0) + calls
            self.usec[name] = self.usec.get(name, 0) + s1.usec.get(name, 0) - s0.usec.get(name, 0)

    def per_op(self, value: float) -> float:
        return value / max(self.ops, 1)

    @property
    def script_calls(self) -> int:
        return self.mix.get("evalsha", 0)

    @property
    def commands(self) -> int:
        return sum(self.mix.values())

    @property
    def lua_us_per_call(self) -> float:
        return self.usec.get("evalsha", 0) / max(self.script_calls, 1)


def _session(role: str, org: int, user: int, lesson: int) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "org_id": org, "user_id": user, "lesson_id": lesson}
    if role == PARTICIPANT_WEB:
        out["room_id"] = lesson % 97 + 1
    return out


def _moved(session: dict[str, Any], lesson: int) -> dict[str, Any]:
    """``session`` in another lesson (and, for a participant, another room)."""
    return _session(session["role"], session["org_id"], session["user_id"], lesson)


class UpdateBench:
    """One role's live connections, moved to a new lesson by either path."""

    def __init__(self, kit: PresenceKit, sockets: RecordingSockets, role: str, n: int) -> None:
        self.kit, self.sockets, self.role = kit, sockets, role
        first_user = 1_000_000 if role == PARTICIPANT_WEB else 1
        self.conns: list[tuple[str, dict[str, Any]]] = [
            (new_sid(), _session(role, i % ORGS + 1, first_user + i, 1)) for i in range(n)
        ]
        self.step = 1
        for sid, session in self.conns:
            sockets.connected.add(sid)
            outcome = kit.handle_connect(sid, session)
            if outcome is None or outcome.status is not ConnectStatus.NEW:
                raise BenchError(f"{role} connect {sid}: {outcome}")

    def run(self, path: str) -> tuple[float, float]:
        """Every connection to the next lesson by ``path``: (wall, CPU) seconds."""
        self.step += 1
        kit, step = self.kit, self.step
        moved = [(sid, _moved(session, step)) for sid, session in self.conns]
        if path == UPDATE:
            outcomes: list[Any] = []
            w0, c0 = time.perf_counter(), time.process_time()
            for sid, session in moved:
                outcomes.append(kit.handle_update(sid, session))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            for outcome in outcomes:
                if (
                    outcome is None
                    or outcome.status is not UpdateStatus.UPDATED
                    or not outcome.lesson_changed
                ):
                    raise BenchError(f"{self.role} handle_update: {outcome}")
            self.conns = moved
        else:
            fresh = [(new_sid(), session) for _sid, session in moved]
            self.sockets.connected.update(sid for sid, _ in fresh)
            pairs: list[tuple[Any, Any]] = []
            w0, c0 = time.perf_counter(), time.process_time()
            for (old_sid, old), (sid, session) in zip(self.conns, fresh, strict=True):
                gone = kit.handle_disconnect(old_sid, old, REASON)
                pairs.append((gone, kit.handle_connect(sid, session)))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            for gone, came in pairs:
                if gone is None or gone.status is not DisconnectStatus.REMOVED:
                    raise BenchError(f"{self.role} handle_disconnect: {gone}")
                if came is None or came.status is not ConnectStatus.NEW:
                    raise BenchError(f"{self.role} handle_connect: {came}")
            self.sockets.connected.difference_update(sid for sid, _ in self.conns)
            self.conns = fresh
        self.sockets.emitted.clear()
        _check_failures(kit, f"{self.role} {path}")
        return wall, cpu

    def check_state(self) -> None:
        """The store holds every connection in its latest lesson."""
        for org in range(1, ORGS + 1):
            expected = sum(1 for _, s in self.conns if s["org_id"] == org)
            got = self.kit.count_online(org, lesson_id=self.step, role=self.role)
            if got != OnlineCount(users=expected, connections=expected):
                raise BenchError(f"{self.role} org {org} lesson {self.step}: {got}")


def measure_updates(sizes: Sizes) -> dict[str, dict[str, PathSamples]]:
    """role -> path -> samples."""
    counter = Counter()
    out: dict[str, dict[str, PathSamples]] = {}
    with RedisServer() as server:
        probe = RedisProbe(server)
        client = sync_client(server, counter)
        sockets = RecordingSockets()
        kit = _kit(RedisStore(client), sockets)
        try:
            benches = {
                role: UpdateBench(kit, sockets, role, sizes.update_ops)
                for role in (TEACHER_APP, PARTICIPANT_WEB)
            }
            for bench in benches.values():  # scripts loaded, connections open: untimed
                bench.run(UPDATE)
                bench.run(RECONNECT)
            for role, bench in benches.items():
                out[role] = {UPDATE: PathSamples(), RECONNECT: PathSamples()}
                for r in range(sizes.update_rounds):
                    for path in rotated([UPDATE, RECONNECT], r):
                        probe.reset_stats()
                        s0, rt0 = probe.sample(), counter.value
                        wall, cpu = bench.run(path)
                        s1, rt1 = probe.sample(), counter.value
                        out[role][path].add(wall, cpu, sizes.update_ops, rt1 - rt0, s0, s1)
                bench.check_state()
        finally:
            kit.close()
            client.close()
    return out


def _mix(samples: PathSamples) -> str:
    ordered = sorted(samples.mix.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} {_num(samples.per_op(calls))}" for name, calls in ordered)


def update_tables(results: dict[str, dict[str, PathSamples]], sizes: Sizes) -> str:
    lines = [
        f"### handle_update against disconnect + connect ({sizes.update_ops:,} connections"
        f" per role, {sizes.update_rounds} rounds)",
        "",
        "Per operation (one lesson change of one connection). RT: round trips counted on",
        "the client; scripts, cmds (all, a script's own included) and Lua µs from",
        "`INFO commandstats`; wall and CPU µs: median of the rounds.",
        "",
        "| role | path | RT | scripts | cmds | Lua µs/script | Lua µs | wall µs | CPU µs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for role, paths in results.items():
        for path, s in paths.items():
            lines.append(
                f"| {role} | {path} | {s.per_op(s.round_trips):.2f} "
                f"| {s.per_op(s.script_calls):.2f} | {s.per_op(s.commands):.2f} "
                f"| {s.lua_us_per_call:.1f} | {s.per_op(s.usec.get('evalsha', 0)):.1f} "
                f"| {median(s.wall) * 1e6:.0f} | {median(s.cpu) * 1e6:.0f} |"
            )
    lines += [
        "",
        "| role | handle_update / (disconnect + connect), wall | CPU |",
        "| --- | --- | --- |",
    ]
    for role, paths in results.items():
        wall = paired_ratios(paths[UPDATE].wall, paths[RECONNECT].wall)
        cpu = paired_ratios(paths[UPDATE].cpu, paths[RECONNECT].cpu)
        lines.append(f"| {role} | {_spread(wall)} | {_spread(cpu)} |")
    lines += ["", "Commands per operation, as Redis counted them:", ""]
    lines += ["| role | path | commands |", "| --- | --- | --- |"]
    for role, paths in results.items():
        for path, s in paths.items():
            lines.append(f"| {role} | {path} | {_mix(s)} |")
    return "\n".join(lines)


def _spread(s: Spread, digits: int = 2) -> str:
    return f"{s.median:.{digits}f} ({s.low:.{digits}f}{EN}{s.high:.{digits}f})"


def _num(value: float) -> str:
    """At most two decimals, without trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --- 2. count_online at 10 and at 20,000 -------------------------------------------------------


@dataclass
class CallSamples:
    """One call kind at one size: every call's seconds, and each round's median."""

    calls: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    round_trips: int = 0
    commands: int = 0
    mix: dict[str, int] = field(default_factory=dict)


def _timed_calls(fn: Callable[[], Any], n: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def _connect_org(
    kit: PresenceKit, sockets: RecordingSockets, org: int, lesson: int, n: int
) -> None:
    for i in range(n):
        sid = f"o{org}u{i}"
        sockets.connected.add(sid)
        session = {"role": TEACHER_APP, "org_id": org, "user_id": i + 1, "lesson_id": lesson}
        outcome = kit.handle_connect(sid, session)
        if outcome is None or outcome.status is not ConnectStatus.NEW:
            raise BenchError(f"connect {sid}: {outcome}")
    sockets.emitted.clear()


COUNT_ORG = "count_online(org)"
COUNT_LESSON = "count_online(org, lesson_id)"
ONLINE_USERS = "online_users(org)"


def measure_counts(sizes: Sizes) -> tuple[dict[str, dict[int, CallSamples]], float]:
    """call -> size -> samples, and the seconds it took to connect every user."""
    counter = Counter()
    small_org, big_org = 1, 2
    orgs = {sizes.count_small: small_org, sizes.count_big: big_org}
    lessons = {small_org: 11, big_org: 22}
    with RedisServer() as server:
        probe = RedisProbe(server)
        client = sync_client(server, counter)
        sockets = RecordingSockets()
        kit = _kit(RedisStore(client), sockets)
        try:
            t0 = time.perf_counter()
            for n, org in orgs.items():
                _connect_org(kit, sockets, org, lessons[org], n)
            build = time.perf_counter() - t0
            _check_failures(kit, "connecting the orgs")
            calls: dict[str, tuple[Callable[[int], Any], int]] = {
                COUNT_ORG: (lambda org: kit.count_online(org), sizes.count_calls),
                COUNT_LESSON: (
                    lambda org: kit.count_online(org, lesson_id=lessons[org]),
                    sizes.count_calls,
                ),
                ONLINE_USERS: (lambda org: kit.online_users(org), sizes.list_calls),
            }
            for name, (fn, _k) in calls.items():  # warm: connection open, answers right
                for n, org in orgs.items():
                    _check_answer(name, fn(org), n)
            out = {name: {n: CallSamples() for n in orgs} for name in calls}
            for r in range(sizes.count_rounds):
                for name, (fn, k) in calls.items():
                    for n in rotated(list(orgs), r):
                        org = orgs[n]
                        probe.reset_stats()
                        s0, rt0 = probe.sample(), counter.value
                        times, answer = _timed_calls(lambda org=org, fn=fn: fn(org), k)
                        s1, rt1 = probe.sample(), counter.value
                        _check_answer(name, answer, n)
                        samples = out[name][n]
                        samples.calls += times
                        samples.rounds.append(median(times))
                        samples.round_trips += rt1 - rt0
                        for command, c in command_delta(s0, s1).items():
                            samples.mix[command] = samples.mix.get(command, 0) + c
                            samples.commands += c
            _check_failures(kit, "counting")
        finally:
            kit.close()
            client.close()
    return out, build


def _check_answer(name: str, answer: Any, n: int) -> None:
    if name == ONLINE_USERS:
        users = len(answer)
        connections = sum(user.connections for user in answer)
        if users != n or connections != n:
            raise BenchError(f"{name} at {n}: {users} users, {connections} connections")
    elif answer != OnlineCount(users=n, connections=n):
        raise BenchError(f"{name} at {n}: {answer}")


def count_tables(results: dict[str, dict[int, CallSamples]], build: float, sizes: Sizes) -> str:
    small, big = sizes.count_small, sizes.count_big
    lines = [
        f"### count_online at {small:,} and at {big:,} online TeacherAPP users"
        f" ({sizes.count_rounds} rounds)",
        "",
        f"Per call: the median of every call's wall time (µs) at each size; the ratio"
        f" {big:,} / {small:,}",
        f"is per round (of each round's median), median (min{EN}max) over the rounds. RT and",
        f"cmds per call (server-side, `INFO commandstats`) at {big:,}. The {small + big:,}",
        f"users were connected through the kit in {build:.1f} s.",
        "",
        f"| call | calls/round | µs at {small:,} | µs at {big:,} | ratio | RT | cmds |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, by_size in results.items():
        s, b = by_size[small], by_size[big]
        calls_per_round = len(b.calls) // max(len(b.rounds), 1)
        ratio = paired_ratios(b.rounds, s.rounds)
        per_call = max(len(b.calls), 1)
        mix = ", ".join(f"{c} {_num(v / per_call)}" for c, v in sorted(b.mix.items()))
        lines.append(
            f"| `{name}` | {calls_per_round:,} | {median(s.calls) * 1e6:.1f} "
            f"| {median(b.calls) * 1e6:.1f} | {_spread(ratio)} "
            f"| {b.round_trips / per_call:.2f} | {b.commands / per_call:.2f} ({mix}) |"
        )
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------------


def _header(quick: bool) -> str:
    m = machine_info()
    return "\n".join(
        [
            "## handle_update and count_online" + (" (--quick)" if quick else ""),
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores; Python {m['python']};"
            f" redis-server {m['redis_server']}; redis-py {m['redis_py']}"
            f" (hiredis {m['hiredis']}); commit {m['git_commit']}, package sources"
            f" {m['package_sources_sha256']}; load average {m['load_average_at_start']}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    args = parser.parse_args(argv)
    sizes = Sizes.of(args.quick)
    print(_header(args.quick), flush=True)
    failed = False
    sections: list[tuple[str, Callable[[], str]]] = [
        ("handle_update", lambda: update_tables(measure_updates(sizes), sizes)),
        ("count_online", lambda: count_tables(*measure_counts(sizes), sizes)),
    ]
    for name, section in sections:
        try:
            text = section()
        except Exception as exc:
            failed = True
            print(f"\n### {name}: FAILED\n\n```\n{traceback.format_exc()}```", flush=True)
            print(f"{name} failed: {exc!r}", file=sys.stderr)
            continue
        print(f"\n{text}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
