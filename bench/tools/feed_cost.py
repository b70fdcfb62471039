"""What the presence feed (``Settings(feed=True)``) adds: ``python -m bench.tools.feed_cost
[--quick]`` prints Markdown tables, ``feed=True`` against ``feed=False`` in the same run.

1. Per handler call: TeacherAPP connect, ``handle_update`` (a lesson change) and
   disconnect, and the same for ParticipantWeb (whose update moves its room too), each
   a block of calls on connections of distinct users (every connect and disconnect a
   real transition). Per call: round trips counted on the client (``bench._common``'s
   counted connections), and the server's view (``INFO commandstats``, reset with
   ``CONFIG RESETSTAT`` before each block): script calls, every command (a script's own
   ``redis.call()`` s included, so the feed's ``XADD`` s), the scripts' µs per call
   (``cmdstat_evalsha`` usec / calls), and the wall µs per call. Rounds interleave the
   two settings, their order rotated each round: median (min-max) over the rounds, and
   the paired per-round difference on - off.
2. Bytes per feed entry: N connect + disconnect cycles of mixed roles (TeacherAPP,
   ParticipantWeb, TeacherHub in turn) on an emptied server, then ``MEMORY USAGE`` of
   the feed's stream (``SAMPLES 0``: every node counted) over its ``XLEN``; beside it
   the ``INFO memory`` ``used_memory`` growth of the same cycles with the feed on and
   off (the difference over the entries: what the feed costs the server in all).
   After the measurement a ``PresenceFeed`` consumer group reads every entry back and
   the kinds are counted against what the cycles must have written.

Everything runs the blocking ``PresenceKit`` on a ``RedisStore`` over a standalone
redis-server of the tool's own (``tests.support.redis_servers``), with the recording
sockets (no background thread) and settings that keep the background steps out of the
way. On a Redis Cluster the feed takes more round trips (the scripts queue the entries
in the user's slot and the kit moves them): not measured here. The exit status is 1 if
a measurement failed (its error is printed; the other still runs).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import traceback
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench._common import (
    PARTICIPANT_WEB,
    REASON,
    TEACHER_APP,
    TEACHER_HUB,
    BenchError,
    Counter,
    RedisProbe,
    ServerSample,
    Spread,
    command_delta,
    machine_info,
    new_sid,
    paired_differences,
    paired_ratios,
    rotated,
    sync_client,
)
from presence_kit import (
    ConnectStatus,
    DisconnectStatus,
    PresenceKit,
    Settings,
    UpdateStatus,
)
from presence_kit.feed import PresenceFeed
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer

_BACKGROUND_OUT_OF_THE_WAY: dict[str, Any] = {
    "heartbeat_interval": 30,
    "node_timeout": 60,
    "reconcile_interval": 30,
    "leave_poll_interval": 30,
}
OFF, ON = "feed=False", "feed=True"
SETTINGS = {
    OFF: Settings(feed=False, **_BACKGROUND_OUT_OF_THE_WAY),
    ON: Settings(feed=True, feed_retention=86400, feed_shards=1, **_BACKGROUND_OUT_OF_THE_WAY),
}
VARIANTS = (OFF, ON)
ORGS = 10
"""Connections are spread over this many orgs (all in the one feed shard)."""

CONNECT, UPDATE, DISCONNECT = "connect", "update", "disconnect"
EVENTS = (CONNECT, UPDATE, DISCONNECT)
EXPECTED_XADDS = {
    (TEACHER_APP, CONNECT): 2,  # join, online
    (TEACHER_APP, UPDATE): 1,
    (TEACHER_APP, DISCONNECT): 2,  # leave, offline
    (PARTICIPANT_WEB, CONNECT): 1,
    (PARTICIPANT_WEB, UPDATE): 1,
    (PARTICIPANT_WEB, DISCONNECT): 1,
}
"""Entries a call must add with the feed on (one user, one connection)."""
CYCLE_ROLES = (TEACHER_APP, PARTICIPANT_WEB, TEACHER_HUB)
CYCLE_KINDS = {
    TEACHER_APP: {"join": 1, "online": 1, "leave": 1, "offline": 1},
    PARTICIPANT_WEB: {"join": 1, "leave": 1},
    TEACHER_HUB: {"join": 1, "leave": 1},
}
"""Entries one connect + disconnect cycle of a role must write."""


@dataclass(frozen=True)
class Sizes:
    rounds: int
    calls: int
    """Calls per block (role, event, setting and round)."""
    memory_cycles: tuple[int, ...]
    memory_rounds: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(3, 200, (300, 1_000), 1)
        return cls(7, 1_000, (1_000, 10_000), 3)


def _check_failures(kit: PresenceKit, where: str) -> None:
    stats = kit.stats
    if stats.store_failures or stats.sockets_failures or stats.queued:
        raise BenchError(f"{where}: presence_kit counted failures: {stats}")


def _session(role: str, user: int, lesson: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": role,
        "org_id": user % ORGS + 1,
        "user_id": user,
        "lesson_id": lesson,
    }
    if role == PARTICIPANT_WEB:
        out["room_id"] = lesson % 97 + 1
    return out


def _spread(s: Spread, digits: int = 1) -> str:
    return f"{s.median:.{digits}f} ({s.low:.{digits}f}-{s.high:.{digits}f})"


def _signed(s: Spread, digits: int = 1) -> str:
    """A difference that may be negative: the range's bounds apart with spaces."""
    return f"{s.median:+.{digits}f} ({s.low:+.{digits}f} - {s.high:+.{digits}f})"


def _xlen(values: Sequence[int]) -> str:
    """One number when every round had the same, else median (min-max)."""
    if len(set(values)) == 1:
        return f"{values[0]:,}"
    return _spread(Spread.of(values), 0)


def _num(value: float) -> str:
    """At most two decimals, without trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --- 1. per handler call -------------------------------------------------------------------


@dataclass
class BlockSamples:
    """One (role, event, setting)'s blocks over the rounds: one value per round."""

    wall: list[float] = field(default_factory=list)  # µs per call
    lua: list[float] = field(default_factory=list)  # evalsha µs per script call
    calls: int = 0
    round_trips: int = 0
    mix: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)

    def add(self, wall: float, n: int, rt: int, s0: ServerSample, s1: ServerSample) -> None:
        delta = command_delta(s0, s1)
        scripts = delta.get("evalsha", 0)
        script_usec = s1.usec.get("evalsha", 0) - s0.usec.get("evalsha", 0)
        self.wall.append(wall / n * 1e6)
        self.lua.append(script_usec / scripts if scripts else float("nan"))
        self.calls += n
        self.round_trips += rt
        for name, calls in delta.items():
            self.mix[name] = self.mix.get(name, 0) + calls
            self.usec[name] = self.usec.get(name, 0) + s1.usec.get(name, 0) - s0.usec.get(name, 0)

    def per_call(self, value: float) -> float:
        return value / max(self.calls, 1)

    @property
    def commands(self) -> int:
        return sum(self.mix.values())


Key = tuple[str, str, str]  # (role, event, variant)


class Blocks:
    """A kit per setting on one server; each round connects, updates and disconnects a
    fresh block of users per role, with the command statistics read around each block."""

    def __init__(self, server: RedisServer, sizes: Sizes) -> None:
        self.sizes = sizes
        self.probe = RedisProbe(server)
        self.counter = Counter()
        self.client = sync_client(server, self.counter)
        self.sockets = RecordingSockets()
        store = RedisStore(self.client)
        self.kits = {
            v: PresenceKit(store=store, sockets=self.sockets, settings=SETTINGS[v])
            for v in VARIANTS
        }
        self.users: Iterator[int] = itertools.count(1)
        self.samples: dict[Key, BlockSamples] = {}

    def close(self) -> None:
        for kit in self.kits.values():
            kit.close()
        self.client.close()

    def _timed(self, key: Key, fn: Callable[[], None]) -> None:
        probe = self.probe
        probe.reset_stats()
        s0, rt0 = probe.sample(), self.counter.value
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        s1, rt1 = probe.sample(), self.counter.value
        self.samples.setdefault(key, BlockSamples()).add(wall, self.sizes.calls, rt1 - rt0, s0, s1)

    def run(self, role: str, variant: str, *, timed: bool = True) -> None:
        """One block of ``role``'s users through connect, update, disconnect."""
        kit, n = self.kits[variant], self.sizes.calls
        conns = [(new_sid(), _session(role, next(self.users), 1)) for _ in range(n)]
        moved = [(sid, _session(role, s["user_id"], 2)) for sid, s in conns]
        self.sockets.connected.update(sid for sid, _ in conns)
        results: list[Any] = []

        def connect() -> None:
            results[:] = [kit.handle_connect(sid, s) for sid, s in conns]

        def update() -> None:
            results[:] = [kit.handle_update(sid, s) for sid, s in moved]

        def disconnect() -> None:
            results[:] = [kit.handle_disconnect(sid, s, REASON) for sid, s in moved]

        steps = ((CONNECT, connect, ConnectStatus.NEW), (UPDATE, update, UpdateStatus.UPDATED))
        for event, fn, status in (*steps, (DISCONNECT, disconnect, DisconnectStatus.REMOVED)):
            if timed:
                self._timed((role, event, variant), fn)
            else:
                fn()
            for outcome in results:
                if outcome is None or outcome.status is not status:
                    raise BenchError(f"{role} {event} ({variant}): {outcome}")
        self.sockets.connected.difference_update(sid for sid, _ in conns)
        self.sockets.emitted.clear()
        _check_failures(kit, f"{role} ({variant})")


def measure_calls(sizes: Sizes) -> dict[Key, BlockSamples]:
    with RedisServer() as server:
        blocks = Blocks(server, sizes)
        try:
            for role in (TEACHER_APP, PARTICIPANT_WEB):  # scripts loaded, pool open: untimed
                for variant in VARIANTS:
                    blocks.run(role, variant, timed=False)
            for r in range(sizes.rounds):
                for role in (TEACHER_APP, PARTICIPANT_WEB):
                    for variant in rotated(list(VARIANTS), r):
                        blocks.run(role, variant)
        finally:
            blocks.close()
    return blocks.samples


def _mix(s: BlockSamples) -> str:
    ordered = sorted(s.mix.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} {_num(s.per_call(calls))}" for name, calls in ordered)


def call_tables(results: dict[Key, BlockSamples], sizes: Sizes) -> str:
    lines = [
        f"### Per handler call ({sizes.calls:,} calls per block, {sizes.rounds} rounds)",
        "",
        "RT: round trips counted on the client; scripts, cmds (all, a script's own",
        "included) and xadd per call from `INFO commandstats`; Lua µs: `evalsha` µs per",
        "script call; wall µs per call. Lua and wall: median (min-max) of the rounds.",
        "",
        "| role | event | feed | RT | scripts | cmds | xadd | Lua µs/script | wall µs |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    roles = (TEACHER_APP, PARTICIPANT_WEB)
    for role, event, variant in itertools.product(roles, EVENTS, VARIANTS):
        s = results[(role, event, variant)]
        lines.append(
            f"| {role} | {event} | {variant.removeprefix('feed=')} "
            f"| {s.per_call(s.round_trips):.2f} | {s.per_call(s.mix.get('evalsha', 0)):.2f} "
            f"| {s.per_call(s.commands):.2f} | {s.per_call(s.mix.get('xadd', 0)):.2f} "
            f"| {_spread(Spread.of(s.lua))} | {_spread(Spread.of(s.wall))} |"
        )
    lines += [
        "",
        "What the feed adds per call: on - off (commands: totals; Lua and wall: paired per",
        "round, median (min - max)), and the wall ratio on / off.",
        "",
        "| role | event | + cmds | + xadd (expected) | + Lua µs/script | + wall µs"
        " | wall on/off |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for role, event in itertools.product(roles, EVENTS):
        off, on = results[(role, event, OFF)], results[(role, event, ON)]
        extra = on.per_call(on.commands) - off.per_call(off.commands)
        xadd = on.per_call(on.mix.get("xadd", 0)) - off.per_call(off.mix.get("xadd", 0))
        lines.append(
            f"| {role} | {event} | {extra:+.2f} | {xadd:+.2f} ({EXPECTED_XADDS[(role, event)]}) "
            f"| {_signed(paired_differences(on.lua, off.lua))} "
            f"| {_signed(paired_differences(on.wall, off.wall))} "
            f"| {_spread(paired_ratios(on.wall, off.wall), 2)} |"
        )
    lines += ["", "Commands per call, as Redis counted them:", ""]
    lines += ["| role | event | feed | commands |", "| --- | --- | --- | --- |"]
    for role, event, variant in itertools.product(roles, EVENTS, VARIANTS):
        s = results[(role, event, variant)]
        lines.append(f"| {role} | {event} | {variant.removeprefix('feed=')} | {_mix(s)} |")
    return "\n".join(lines)


# --- 2. bytes per entry -----------------------------------------------------------------------


@dataclass
class MemorySamples:
    """One cycle count's runs: per round, per setting."""

    used: dict[str, list[int]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    stream_bytes: list[int] = field(default_factory=list)
    xlen: list[int] = field(default_factory=list)
    kinds: list[dict[str, int]] = field(default_factory=list)
    read_back: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    """What ``PresenceFeed.missed`` said after reading everything back."""


def _expected_kinds(cycles: int) -> dict[str, int]:
    out: Tally[str] = Tally()
    for i in range(cycles):
        out.update(CYCLE_KINDS[CYCLE_ROLES[i % len(CYCLE_ROLES)]])
    return dict(out)


def _cycles(kit: PresenceKit, sockets: RecordingSockets, cycles: int) -> None:
    """``cycles`` connect + disconnect cycles, the roles in turn, each a distinct user."""
    for i in range(cycles):
        role = CYCLE_ROLES[i % len(CYCLE_ROLES)]
        sid, session = new_sid(), _session(role, i + 1, i % 50 + 1)
        sockets.connected.add(sid)
        came = kit.handle_connect(sid, session)
        if came is None or came.status is not ConnectStatus.NEW:
            raise BenchError(f"{role} connect {sid}: {came}")
        gone = kit.handle_disconnect(sid, session, REASON)
        if gone is None or gone.status is not DisconnectStatus.REMOVED:
            raise BenchError(f"{role} disconnect {sid}: {gone}")
        sockets.connected.discard(sid)
        if i % 1000 == 999:
            sockets.emitted.clear()
    sockets.emitted.clear()
    _check_failures(kit, f"{cycles} cycles")


def _read_back(server: RedisServer, settings: Settings) -> tuple[Tally[str], int]:
    """Every entry of the feed, read and acknowledged in a consumer group: their kinds,
    and the entries the consumer says the group missed (``PresenceFeed.missed``)."""
    client = server.client()
    feed = PresenceFeed(client, settings=settings, group="feed_cost", consumer="c")
    kinds: Tally[str] = Tally()
    try:
        while batch := feed.read(count=1000, block=None):
            feed.ack(batch)
            kinds.update(entry.kind for entry in batch)
    finally:
        client.close()
    return kinds, feed.missed


def measure_memory(sizes: Sizes) -> tuple[dict[int, MemorySamples], dict[str, str]]:
    """cycles -> samples, and the server's stream settings."""
    out = {n: MemorySamples() for n in sizes.memory_cycles}
    with RedisServer() as server:
        probe = RedisProbe(server)
        admin = probe.admin
        config = {k: str(v) for k, v in admin.config_get("stream-node-max-*").items()}
        streams = PresenceFeed(admin, settings=SETTINGS[ON], group="g", consumer="c").streams
        client = sync_client(server, Counter())
        try:
            for variant in VARIANTS:  # the scripts loaded (the cache outlives FLUSHALL)
                kit = PresenceKit(
                    store=RedisStore(client),
                    sockets=RecordingSockets(),
                    settings=SETTINGS[variant],
                )
                _cycles(kit, RecordingSockets(), 3)
                kit.close()
            for r in range(sizes.memory_rounds):
                for n in sizes.memory_cycles:
                    for variant in rotated(list(VARIANTS), r):
                        probe.flush()
                        sockets = RecordingSockets()
                        kit = PresenceKit(
                            store=RedisStore(client), sockets=sockets, settings=SETTINGS[variant]
                        )
                        try:
                            before = probe.used_memory()
                            _cycles(kit, sockets, n)
                            after = probe.used_memory()
                        finally:
                            kit.close()
                        samples = out[n]
                        samples.used[variant].append(after - before)
                        if variant == ON:
                            samples.stream_bytes.append(
                                sum(int(admin.memory_usage(k, samples=0) or 0) for k in streams)
                            )
                            samples.xlen.append(sum(int(admin.xlen(k)) for k in streams))
                            kinds, missed = _read_back(server, SETTINGS[ON])
                            samples.missed.append(missed)
                            samples.kinds.append(dict(kinds))
                            samples.read_back.append(sum(kinds.values()))
                        elif any(admin.exists(k) for k in streams):
                            raise BenchError(f"{OFF}: a feed stream exists after {n} cycles")
        finally:
            client.close()
    return out, config


def memory_tables(results: dict[int, MemorySamples], config: dict[str, str], sizes: Sizes) -> str:
    mix = ", ".join(CYCLE_ROLES)
    settings = ", ".join(f"{k} {v}" for k, v in sorted(config.items()))
    lines = [
        f"### Bytes per feed entry ({sizes.memory_rounds} rounds)",
        "",
        f"Connect + disconnect cycles of {mix} in turn",
        "(4, 2 and 2 entries), each run on an emptied server. stream: `MEMORY USAGE",
        "<stream> SAMPLES 0` after the cycles, over `XLEN`. used_memory: `INFO memory`",
        "growth over the cycles, feed on and off; (on - off) / XLEN: what the feed costs",
        "the server per entry in all. Median (min-max) of the rounds.",
        f"Server: {settings}.",
        "",
        "| cycles | XLEN | expected | stream bytes | stream B/entry | used_memory on"
        " | used_memory off | (on - off) / XLEN |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, s in results.items():
        expected = sum(_expected_kinds(n).values())
        per_entry = [b / x for b, x in zip(s.stream_bytes, s.xlen, strict=True) if x]
        diff = [
            (on - off) / x for on, off, x in zip(s.used[ON], s.used[OFF], s.xlen, strict=True) if x
        ]
        lines.append(
            f"| {n:,} | {_xlen(s.xlen)} | {expected:,} "
            f"| {_spread(Spread.of(s.stream_bytes), 0)} | {_spread(Spread.of(per_entry))} "
            f"| {_spread(Spread.of(s.used[ON]), 0)} | {_spread(Spread.of(s.used[OFF]), 0)} "
            f"| {_spread(Spread.of(diff))} |"
        )
    lines += [
        "",
        "Read back through `PresenceFeed` (a consumer group, after the measurement): the",
        "kinds of the last round's entries against what the cycles must have written, and",
        "`PresenceFeed.missed` after the reads (entries it says were trimmed unread).",
        "",
        "| cycles | read | join | online | leave | offline | update | as expected | missed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for n, s in results.items():
        kinds, expected = s.kinds[-1], _expected_kinds(n)
        cells = " | ".join(
            f"{kinds.get(k, 0):,}" for k in ("join", "online", "leave", "offline", "update")
        )
        ok = all(k == expected for k in s.kinds) and all(
            r == x for r, x in zip(s.read_back, s.xlen, strict=True)
        )
        missed = "/".join(str(m) for m in s.missed)
        lines.append(
            f"| {n:,} | {s.read_back[-1]:,} | {cells} | {'yes' if ok else '**no**'} | {missed} |"
        )
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------------


def _header(quick: bool) -> str:
    m = machine_info()
    return "\n".join(
        [
            "## What the presence feed adds" + (" (--quick)" if quick else ""),
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
        ("per handler call", lambda: call_tables(measure_calls(sizes), sizes)),
        ("bytes per entry", lambda: memory_tables(*measure_memory(sizes), sizes)),
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
