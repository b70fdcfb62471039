"""Turn the results into ``results.md`` (the docs' benchmarks page) and ``results.json``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._common import Spread
from .baselines import FLOOR, HAND_WRITTEN, OURS

YES, NO, NA = "yes", "**no**", "n/a"
EN = "\u2013"  # an en dash, for ranges
MINUS = "\u2212"


def _met(value: bool | None) -> str:
    if value is None:
        return NA
    return YES if value else NO


def _spread(d: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    if d.get("n", 0) <= 1:
        return f"{d['median']:.{digits}f}{unit}"
    return f"{d['median']:.{digits}f}{unit} ({d['min']:.{digits}f}{EN}{d['max']:.{digits}f})"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _machine(m: dict[str, Any]) -> list[str]:
    hiredis = f" (hiredis {m['hiredis']})" if m.get("hiredis") else ""
    load = " ".join(str(x) for x in m.get("load_average_at_start", []))
    end = " ".join(str(x) for x in m.get("load_average_at_end", []))
    return [
        f"Measured {m['date']} on **{m['cpu']}, {m['cores']} cores** ({m['os']}), "
        f"{m['python']}, redis-server {m['redis_server']}, redis-py {m['redis_py']}{hiredis}, "
        f"python-socketio {m['python_socketio']}, python-engineio {m['python_engineio']}, "
        f"aiohttp {m['aiohttp']}, mixpanel {m['mixpanel']}; presence_kit {m['presence_kit']} "
        f"at commit `{m['git_commit']}` (package sources sha256 `{m['package_sources_sha256']}`). "
        f"Load average at start: {load}; at end: {end}. Run: "
        f"{'`--quick` (smoke run)' if m.get('quick') else 'full'}, {m.get('seconds', '?')} s.",
        "",
    ]


# --- headline ---------------------------------------------------------------------------


def _m1_headline(m1: dict[str, Any]) -> list[list[str]]:
    rows = [r for r in m1["rows"] if r["target_within_1_10_of_b"] is not None]
    if not rows:
        return []
    faster = [r for r in rows if r["target_faster_than_a"]]
    within = [r for r in rows if r["target_within_1_10_of_b"]]
    ra = [r["ratio_vs_a"]["median"] for r in rows]
    rb = [r["ratio_vs_b"]["median"] for r in rows]
    teacher_leave = [
        r["ratio_vs_a"]["median"]
        for r in rows
        if r["role"] == "TeacherAPP" and r["event"] == "disconnect"
    ]
    return [
        [
            "1",
            "per event: faster than hand-written (a)",
            f"{len(faster)} of {len(rows)} cells; ours/(a) {min(ra):.2f}{EN}{max(ra):.2f}x "
            f"(TeacherAPP disconnect: {min(teacher_leave):.2f}{EN}{max(teacher_leave):.2f}x)",
            _met(len(faster) == len(rows)),
        ],
        [
            "1",
            "per event: within 1.10x of the floor (b)",
            f"{len(within)} of {len(rows)} cells; ours/(b) {min(rb):.2f}{EN}{max(rb):.2f}x",
            _met(len(within) == len(rows)),
        ],
    ]


def _headline(results: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    m = results["measurements"]
    if "m1" in m and "rows" in m["m1"]:
        rows += _m1_headline(m["m1"])
    if "m2" in m and "sizes" in m["m2"]:
        for size in m["m2"]["sizes"]:
            rows.append(
                [
                    "2",
                    f"storm of {size['n']:,} handler calls: Redis state at ≥ ½ the floor's "
                    "throughput",
                    f"{_spread(size['throughput_ratio_vs_floor'])}x of the floor",
                    _met(size["target_half_floor_throughput"]),
                ]
            )
            if "sweep_throughput_ratio_vs_floor" in size:
                rows.append(
                    [
                        "2",
                        f"storm of {size['n']:,} (a dead node's sweep): Redis state at ≥ ½ "
                        "the floor's throughput",
                        f"{_spread(size['sweep_throughput_ratio_vs_floor'])}x of the floor",
                        _met(size["sweep_target_half_floor_throughput"]),
                    ]
                )
            if "target_announce_10k_under_5s" in size:
                rows.append(
                    [
                        "2",
                        "storm of 10,000: every leave announced in < 5 s",
                        f"{_spread(size['ours_all_announced_s'])} s",
                        _met(size["target_announce_10k_under_5s"]),
                    ]
                )
    if "m3" in m and "modes" in m["m3"]:
        modes = m["m3"]["modes"]
        worst = max(modes.items(), key=lambda kv: kv[1]["lag_p99_ms"]["median"])
        rows.append(
            [
                "3",
                "event-loop lag p99 < 10 ms (every analytics mode)",
                f"worst: {worst[1]['lag_p99_ms']['median']:.2f} ms ({worst[0]})",
                _met(all(v["target_p99_under_10ms"] for v in modes.values())),
            ]
        )
        off = modes["off"]["lag_p99_ms"]["median"]
        rows.append(
            [
                "3",
                "lag the same as with analytics off, within noise",
                ", ".join(
                    f"{k.split(' ')[0]} {v['lag_p99_ms']['median']:.2f}" for k, v in modes.items()
                )
                + f" ms p99 (off {off:.2f}, noise ±{m['m3']['noise_ms']:.2f})",
                _met(all(v["target_same_as_off"] for v in modes.values())),
            ]
        )
    if "m4" in m and "ours" in m["m4"]:
        m4 = m["m4"]
        rows.append(
            [
                "4",
                "≤ 400 bytes of Redis per online teacher",
                f"{m4['ours']['per_online_teacher_bytes']:.0f} B (spec's bare hash: "
                f"{m4['spec_bare_alive_hash']['per_online_teacher_bytes']:.0f} B)",
                _met(m4["target_at_most_400_bytes"]),
            ]
        )
    if "m5" in m and "variants" in m["m5"]:
        m5 = m["m5"]
        ours, theirs = m5["variants"][OURS], m5["variants"][HAND_WRITTEN]
        rows.append(
            [
                "5",
                "end to end, teacher disconnect → hub (no target)",
                f"p50 {ours['p50_ms']:.2f} vs {theirs['p50_ms']:.2f} ms "
                f"({m5['p50_ratio_vs_a']:.2f}x); p99 {ours['p99_ms']:.2f} vs "
                f"{theirs['p99_ms']:.2f} ms ({m5['p99_ratio_vs_a']:.2f}x)",
                NA,
            ]
        )
    for key, value in m.items():
        if "error" in value:
            rows.append([key, "**failed**", value["error"].replace("|", "/")[:300], NO])
    return ["## Targets", "", *_table(["#", "target", "result", "met"], rows)]


# --- details ---------------------------------------------------------------------------


def _m1(m1: dict[str, Any]) -> list[str]:
    out = [
        "## 1. Cost per connect and disconnect",
        "",
        f"Median per event over {m1['rounds']} interleaved rounds (min{EN}max in brackets); each "
        f"run {m1['events_per_run']['sequential']} events sequentially or "
        f"{m1['events_per_run']['concurrent']} with 100 at once (100 threads / 100 asyncio "
        "tasks). Sockets are presence_kit's in-process recording fakes and analytics an "
        "in-process enqueue in every variant, so only Redis and our own code differ. "
        "RT = Redis round trips per event, counted on the client; cmds = commands Redis "
        "executed per event (INFO commandstats, script-internal commands included); "
        f"Redis CPU = the server's CPU per event. Overhead = ours {MINUS} floor (b), wall and "
        "client CPU. For ParticipantWeb and TeacherHub, and for every connect, the spec's "
        "flow is already one command (or none), so (a) = (b).",
        "",
    ]
    header = [
        "API",
        "conc.",
        "role",
        "event",
        "ours µs",
        "(a) µs",
        "(b) µs",
        "ours/(a)",
        "ours/(b)",
        "RT ours·(a)·(b)",
        "cmds ours·(b)",
        "Redis CPU µs ours·(b)",
        "overhead µs wall / CPU",
        "faster than (a)",
        "≤ 1.10x (b)",
    ]
    rows = []
    for r in m1["rows"]:
        v = r["variants"]
        ours, floor = v[OURS], v[FLOOR]
        hand = v.get(HAND_WRITTEN, floor)
        a_equal = r["a_equals_b"]
        rows.append(
            [
                r["api"],
                r["concurrency"],
                r["role"],
                r["event"],
                _spread(ours["wall_us"], 0),
                "= (b)" if a_equal else _spread(hand["wall_us"], 0),
                _spread(floor["wall_us"], 0),
                _spread(r["ratio_vs_a"]),
                _spread(r["ratio_vs_b"]),
                f"{ours['round_trips_per_event']:.2f} · {hand['round_trips_per_event']:.2f} · "
                f"{floor['round_trips_per_event']:.2f}",
                f"{ours['redis_commands_per_event']:.1f} · "
                f"{floor['redis_commands_per_event']:.1f}",
                f"{ours['redis_cpu_us_per_event']:.0f} · {floor['redis_cpu_us_per_event']:.0f}",
                f"{r['overhead_us_vs_b']['median']:.0f} / "
                f"{r['cpu_overhead_us_vs_b']['median']:.0f}",
                _met(r["target_faster_than_a"]),
                _met(r["target_within_1_10_of_b"]),
            ]
        )
    out += _table(header, rows)
    mix_rows = []
    seen = set()
    for r in m1["rows"]:
        key = (r["role"], r["event"])
        if key in seen or r["concurrency"] != 1 or r["api"] != "sync":
            continue
        seen.add(key)
        ours = r["variants"][OURS]
        mix = ours["redis_command_mix_per_event"]
        mix_rows.append(
            [
                f"{r['role']} {r['event']}",
                ", ".join(f"{k} {v:g}" for k, v in mix.items()),
                f"{ours.get('redis_script_us_per_event', 0):g}",
            ]
        )
    out += ["Commands Redis runs per presence_kit event (sync, sequential):", ""]
    out += _table(["event", "commands per event", "Lua script µs per event"], mix_rows)
    return out


def _m2(m2: dict[str, Any]) -> list[str]:
    out = [
        "## 2. Disconnect storm",
        "",
        "N teachers (one connection each) lose their connections at once, two ways. "
        "*presence_kit*: N `handle_disconnect` calls on one event loop, at most "
        f"{m2['sizes'][0]['concurrency'] if m2.get('sizes') else '?'} at a time, with the "
        "recording sockets. *A dead node's sweep*: node A recorded the N connections and "
        "stopped heartbeating; node B's `sweep_dead_nodes()` runs every leave (batched "
        "scripts, 500 connections per round trip) and announces it. The connect burst is "
        "node A's. Redis state = until the last store call returned (then every "
        "alive key is checked: `state=disconnect` with its TTL); announced = until the last "
        "`teacher_disconnect` emit. Floor = one pipeline with the same writes for all N, then "
        f"the same emits. Median (min{EN}max) over interleaved rounds at the smallest N.",
        "",
    ]
    header = [
        "N",
        "variant",
        "Redis state s",
        "all announced s",
        "events/s",
        "RT/event",
        "Redis cmds/event",
        "Redis CPU µs/event",
        "connect burst/s",
    ]
    rows = []
    for size in m2.get("sizes", []):
        for name, runs in size["runs"].items():
            med = sorted(runs, key=lambda x: x["redis_state_s"])[len(runs) // 2]
            rows.append(
                [
                    f"{size['n']:,}",
                    name,
                    _spread(_spread_of([x["redis_state_s"] for x in runs])),
                    _spread(_spread_of([x["all_announced_s"] for x in runs])),
                    f"{med['events_per_s']:,}",
                    f"{med['round_trips_per_event']:g}",
                    f"{med['redis_commands_per_event']:g}",
                    f"{med['redis_cpu_us_per_event']:g}",
                    f"{med['connect_burst_per_s']:,}" if "connect_burst_per_s" in med else "",
                ]
            )
    out += _table(header, rows)
    ratio_rows = []
    for size in m2.get("sizes", []):
        ratio_rows.append(
            [
                f"{size['n']:,}",
                f"{_spread(size['throughput_ratio_vs_floor'], 3)}x",
                f"{_spread(size['throughput_ratio_vs_a'], 3)}x"
                if "throughput_ratio_vs_a" in size
                else "",
                f"{_spread(size['sweep_throughput_ratio_vs_floor'], 3)}x"
                if "sweep_throughput_ratio_vs_floor" in size
                else "",
            ]
        )
    out += _table(
        ["N", "handler calls/floor throughput", "handler calls/(a) throughput", "sweep/floor"],
        ratio_rows,
    )
    d = m2.get("default_pool")
    if d:
        lost = d["connect_failures"] + d["store_failures"]
        head = (
            f"With redis-py's default pool size (`max_connections=100`, which the store "
            f"copies) and {d['concurrency']} handlers at once, of {d['n']:,} teachers "
        )
        if lost:
            out += [
                head + f"{d['connect_failures']:,} connects and {d['store_failures']:,} "
                "disconnects failed with `MaxConnectionsError` (logged, counted, rooms still "
                f"left): {d['alive_keys_wrong']:,} alive keys were left wrong and "
                f"{d['n'] - d['announced']:,} leaves never announced.",
                "",
            ]
        else:
            out += [
                head + "none failed (a burst beyond the pool waits for a connection): Redis "
                f"state right in {d['redis_state_s']:.2f} s, every leave announced in "
                f"{d['all_announced_s']:.2f} s.",
                "",
            ]
    return out


def _spread_of(values: Sequence[float]) -> dict[str, Any]:
    return Spread.of(values).as_dict(3)


def _m3(m3: dict[str, Any]) -> list[str]:
    out = [
        "## 3. Event-loop lag",
        "",
        f"Participants leave through `AsyncPresenceKit` at a steady {m3['rate_per_s']:,}/s for "
        f"{m3['seconds_per_run']:g} s while a task sleeps {m3['tick_ms']:g} ms again and again; "
        "lag = how much longer each sleep took. `MixpanelAnalytics` posts to the test suite's "
        f"local endpoint in another process. Median (min{EN}max) over "
        f"{m3['rounds']} interleaved rounds; 'same as off' allows ±{m3['noise_ms']:.2f} ms "
        "(twice the off runs' median absolute deviation, at least 1 ms). GC = the "
        "collector's pauses in the last round (count, longest).",
        "",
    ]
    header = [
        "analytics",
        "lag p99 ms",
        "lag max ms",
        "handler p99 ms",
        "GC pauses (last round)",
        "store failures (all rounds)",
        "events enqueued / sent / dropped (last round)",
        "p99 < 10 ms",
        "same as off",
    ]
    rows = []
    for mode, v in m3["modes"].items():
        last = v["runs"][-1]
        a = last["analytics"]
        rows.append(
            [
                mode,
                _spread(v["lag_p99_ms"]),
                _spread(v["lag_max_ms"]),
                _spread(v["handler_p99_ms"]),
                f"{last['gc_pauses']}, longest {last['gc_max_pause_ms']:.1f} ms",
                sum(x.get("store_failures", 0) for x in v["runs"]),
                "—"
                if a is None
                else f"{a['enqueued']} / {a['sent_before_close']} / {a['dropped']}",
                _met(v["target_p99_under_10ms"]),
                _met(v["target_same_as_off"]) if mode != "off" else NA,
            ]
        )
    return out + _table(header, rows)


def _m4(m4: dict[str, Any]) -> list[str]:
    ours, bare = m4["ours"], m4["spec_bare_alive_hash"]
    out = [
        "## 4. Redis memory per teacher",
        "",
        f"{m4['teachers']:,} teachers in {m4['organisations']} organisations on a fresh "
        "redis-server; allocated bytes (`used_memory` less client buffers) before and after.",
        "",
    ]
    out += _table(
        ["", "bytes"],
        [
            ["presence_kit, per online teacher (all keys)", ours["per_online_teacher_bytes"]],
            ["presence_kit, per extra connection", ours["per_extra_connection_bytes"]],
            [
                "presence_kit, per teacher after both connections closed (tombstones live "
                "`tombstone_ttl`)",
                ours["per_offline_teacher_bytes"],
            ],
            ["spec's bare alive hash, per online teacher", bare["per_online_teacher_bytes"]],
            ["ratio ours / bare", f"{m4['ratio_vs_bare']}x"],
        ],
    )
    out += ["Keys with one connection per teacher (sampled `MEMORY USAGE`):", ""]
    out += _table(
        ["key", "count", "type", "encoding", "avg bytes"],
        [
            [f"`{k['key']}`", f"{k['count']:,}", k["type"], k["encoding"], k["avg_bytes"]]
            for k in ours["keys_online"]
        ],
    )
    return out


def _m5(m5: dict[str, Any]) -> list[str]:
    out = [
        "## 5. End to end",
        "",
        f"A python-socketio `AsyncServer` (aiohttp) with {m5['clients']:,} real `AsyncClient` s "
        "over websocket on loopback; time from a teacher client's `disconnect()` to the hub's "
        "`teacher_disconnect` handler, the two handlers interleaved (ABBA).",
        "",
    ]
    rows = [
        [
            name,
            v["disconnects"],
            f"{v['p50_ms']:.2f}",
            f"{v['p99_ms']:.2f}",
            f"{v['max_ms']:.2f}",
            f"{v['round_trips_per_disconnect']:g}",
        ]
        for name, v in m5["variants"].items()
    ]
    out += _table(["handler", "disconnects", "p50 ms", "p99 ms", "max ms", "RT/disconnect"], rows)
    out += [
        f"ours/(a): p50 {m5['p50_ratio_vs_a']:.2f}x, p99 {m5['p99_ratio_vs_a']:.2f}x. "
        f"{m5['clients']:,} clients connected in {m5['connect_all_s']:.1f} s.",
        "",
    ]
    return out


def _decomposition(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Our code versus its Redis work",
        "",
        "presence_kit's own `EVALSHA` requests, recorded and replayed with plain "
        "`execute_command` on an emptied Redis (same Redis work, same round trips, none of "
        "our code); sequential; median over rounds.",
        "",
    ]
    out += _table(
        ["API", "event", "ours µs", "replay µs", "our code µs (wall)", "our code µs (CPU)"],
        [
            [
                r["api"],
                f"{r['role']} {r['event']}",
                f"{r['ours_wall_us']['median']:.0f}",
                f"{r['replay_wall_us']['median']:.0f}",
                _spread(r["our_code_wall_us"], 0),
                _spread(r["our_code_cpu_us"], 0),
            ]
            for r in rows
        ],
    )
    return out


def markdown(results: dict[str, Any]) -> str:
    m = results["measurements"]
    lines = ["# presence_kit benchmarks", "", *_machine(results["machine"])]
    lines += [
        "Run `make bench` (or `.venv/bin/python -m bench`, `--quick` for a smoke run). "
        "Ratios are ours over the baseline, each measured in the same run with interleaved "
        "repetitions. (a) = the spec's flow hand-written with plain redis-py, one command "
        "at a time; (b) = the floor: the spec's Redis writes in one round trip per event "
        "plus the same emits and room operations. See `bench/README.md`.",
        "",
    ]
    lines += _headline(results)
    sections = {
        "m1": _m1,
        "m2": _m2,
        "m3": _m3,
        "m4": _m4,
        "m5": _m5,
    }
    for key, render in sections.items():
        if key in m and "error" not in m[key]:
            lines += render(m[key])
    profile = m.get("profile", {})
    if "decomposition" in profile:
        lines += _decomposition(profile["decomposition"])
        lines += [f"Profile of the hot path: `{profile['file']}`.", ""]
    logged = results.get("log_records")
    if logged:
        lines += ["presence_kit log records during the run:", ""]
        lines += _table(
            ["measurement", "logger", "level", "message", "count"],
            [
                [r["measurement"], r["logger"], r["level"], r["message"], r["count"]]
                for r in logged
            ],
        )
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "results.md", out / "results.json"
    md.write_text(markdown(results))
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return md, js
