"""Turn the results into ``results.md`` (the docs' benchmarks page), ``results.json`` and
the charts (``*.svg``, linked from ``results.md`` by relative paths).

Tables are kept to about 100 characters a row, so they fit a docs page; everything
else (every sample, the commands Redis ran, the kits' counters) is in the JSON.
``python -m bench.report [DIR]`` renders ``DIR/results.json`` again, without measuring.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import charts
from ._common import RESULTS_DIR, Spread
from .baselines import FLOOR, HAND_WRITTEN, OURS

NO, NA = "**no**", "n/a"
EN, MINUS = "\u2013", "\u2212"  # an en dash (ranges) and a minus sign
CHARTS = {"per_event": "per_event.svg", "storms": "storms.svg", "loop_lag": "loop_lag.svg"}
OUR_CODE_TARGET_US = 25.0
Row = Sequence[Any]


def _met(value: bool | None) -> str:
    return NA if value is None else "yes" if value else NO


def _spread(d: dict[str, Any], digits: int = 2, *, bold_above: float | None = None) -> str:
    """``median (min-max)``; the median in bold when it misses a target (is above it)."""
    text = f"{d['median']:.{digits}f}"
    if bold_above is not None and d["median"] > bold_above:
        text = f"**{text}**"
    if d.get("n", 0) <= 1:
        return text
    return f"{text} ({d['min']:.{digits}f}{EN}{d['max']:.{digits}f})"


def _med(d: dict[str, Any], digits: int = 0) -> str:
    return f"{d['median']:.{digits}f}"


def _table(header: Row, rows: Iterable[Row]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _ok(m: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = m.get(key)
    return value if isinstance(value, dict) and "error" not in value else None


def _machine(m: dict[str, Any]) -> list[str]:
    hiredis = f" (hiredis {m['hiredis']})" if m.get("hiredis") else ""
    load = " ".join(str(x) for x in m.get("load_average_at_start", []))
    end = " ".join(str(x) for x in m.get("load_average_at_end", []))
    run = "`--quick` (smoke run)" if m.get("quick") else "full"
    return [
        f"Measured {m['date']} on **{m['cpu']}, {m['cores']} cores** ({m['os']}), "
        f"{m['python']}, redis-server {m['redis_server']}, redis-py {m['redis_py']}{hiredis}, "
        f"python-socketio {m['python_socketio']}, python-engineio {m['python_engineio']}, "
        f"aiohttp {m['aiohttp']}, mixpanel {m['mixpanel']}; presence_kit {m['presence_kit']} "
        f"at commit `{m['git_commit']}` (package sources sha256 `{m['package_sources_sha256']}`). "
        f"Load average at start: {load}; at end: {end}. Run: {run}, {m.get('seconds', '?')} s.",
        "",
        f"Ratios are ours over the baseline, measured in the same run with interleaved "
        f"repetitions: median (min{EN}max) of the rounds, in bold where a target is missed. "
        "(a) = the spec's flow hand-written with plain redis-py, one command at a time; "
        "(b) = the floor: the spec's Redis writes in one round trip per event plus the same "
        "emits and room operations. See `bench/README.md`.",
        "",
    ]


def _targets(m: dict[str, Any]) -> list[str]:
    rows: list[Row] = []
    if d := _ok(m, "decompose"):
        cpu = [r["our_code_cpu_us"]["median"] for r in d["rows"]]
        within = sum(1 for c in cpu if c <= OUR_CODE_TARGET_US)
        result = f"{within} of {len(cpu)}; {min(cpu):.0f}{EN}{max(cpu):.0f} µs"
        met = _met(within == len(cpu))
        rows.append(("—", "our code ≤ 25 µs CPU per event, one at a time", result, met))
    if m6 := _ok(m, "m6"):
        for key, limit, name in (("ratio_vs_a", 1.10, "(a)"), ("ratio_vs_b", 1.25, "(b)")):
            ratios = [m6[api][key]["median"] for api in ("sync", "asyncio")]
            target = f"TeacherAPP cycle, real server: ≤ {limit:.2f}x {name} (sync · asyncio)"
            result = " · ".join(f"{x:.2f}x" for x in ratios)
            rows.append(("6", target, result, _met(all(x <= limit for x in ratios))))
    if m1 := _ok(m, "m1"):
        judged = [r for r in m1["rows"] if r["target_within_1_10_of_b"] is not None]
        for key, test, name in (
            ("ratio_vs_a", "target_faster_than_a", "faster than (a)"),
            ("ratio_vs_b", "target_within_1_10_of_b", "≤ 1.10x (b)"),
        ):
            cells = sum(1 for r in judged if r[test])
            values = [r[key]["median"] for r in judged]
            result = f"{cells} of {len(judged)} cells; {min(values):.2f}{EN}{max(values):.2f}x"
            rows.append(("1", f"per event: {name}", result, _met(cells == len(judged))))
    if m2 := _ok(m, "m2"):
        for size in m2["sizes"]:
            for key, name in (
                ("throughput_ratio_vs_floor", "handler calls"),
                ("sweep_throughput_ratio_vs_floor", "sweep"),
            ):
                ratio = size[key]["median"]
                target = f"storm of {size['n']:,} ({name}): ≥ 0.8x the floor's throughput"
                result = f"{_spread(size[key])}x (≥ ½: {_met(ratio >= 0.5)})"
                rows.append(("2", target, result, _met(ratio >= 0.8)))
            if "target_announce_10k_under_5s" in size:
                result = f"{_spread(size['ours_all_announced_s'])} s"
                met = _met(size["target_announce_10k_under_5s"])
                rows.append(("2", "storm of 10,000: every leave announced in < 5 s", result, met))
    if m3 := _ok(m, "m3"):
        modes = m3["modes"]
        name, worst = max(modes.items(), key=lambda kv: kv[1]["lag_p99_ms"]["median"])
        result = f"worst {worst['lag_p99_ms']['median']:.2f} ms ({name.split(' (')[0]})"
        met = _met(all(v["target_p99_under_10ms"] for v in modes.values()))
        rows.append(("3", "event-loop lag p99 < 10 ms (every analytics mode)", result, met))
        result = f"off {modes['off']['lag_p99_ms']['median']:.2f} ms, ± {m3['noise_ms']:.2f}"
        met = _met(all(v["target_same_as_off"] for v in modes.values()))
        rows.append(("3", "lag the same as with analytics off, within noise", result, met))
    if m4 := _ok(m, "m4"):
        ours, bare = m4["ours"], m4["spec_bare_alive_hash"]
        result = (
            f"{ours['per_online_teacher_bytes']:.0f} B "
            f"(bare hash {bare['per_online_teacher_bytes']:.0f} B)"
        )
        met = _met(m4["target_at_most_400_bytes"])
        rows.append(("4", "≤ 400 bytes of Redis per online teacher", result, met))
    if m5 := _ok(m, "m5"):
        result = f"{m5['p50_ratio_vs_a']:.2f}x · {m5['p99_ratio_vs_a']:.2f}x of (a)"
        rows.append(("5", "end to end, disconnect → hub, p50 · p99 (no target)", result, NA))
    for key, value in m.items():
        if isinstance(value, dict) and "error" in value:
            rows.append((key, "**failed**", value["error"].replace("|", "/")[:120], NO))
    return ["## Targets", "", *_table(["#", "target", "result", "met"], rows)]


def decomposition_table(d: dict[str, Any]) -> list[str]:
    """The table "Our code versus its Redis work" (``bench.tools.decompose`` prints it)."""
    rows = []
    for r in d["rows"]:
        ours, replay = r["redis_commands_ours"]["median"], r["redis_commands_replay"]["median"]
        redis = f"{ours:.1f} · {r['redis_us_ours']['median']:.1f}"
        if abs(ours - replay) > 0.05 * ours:
            redis += f" (replay: {replay:.1f} cmds)"
        other = f"{max(0.0, r['other_threads_cpu_us']['median']):.1f}"
        code = _spread(r["our_code_cpu_us"], 0, bold_above=OUR_CODE_TARGET_US)
        event = f"{r['role']} {r['event']}"
        cpu = (_med(r["ours_cpu_us"]), _med(r["replay_cpu_us"]), code)
        rows.append((r["api"], event, *cpu, _med(r["our_code_wall_us"]), other, redis))
    header = ("API", "event", "ours CPU", "replay CPU", "our code CPU", "wall", "other threads")
    return _table((*header, "Redis cmds · Lua µs"), rows)


def _decomposition(d: dict[str, Any]) -> list[str]:
    return [
        "## Our code versus its Redis work",
        "",
        "µs per event, one event at a time. presence_kit's own `EVALSHA` requests, recorded "
        "and replayed with plain `execute_command` on an emptied Redis: the same Redis work "
        f"and round trips, none of our code. Our code = ours {MINUS} replay, in the bench "
        "process's CPU (*other threads*: the part of ours not spent by the handler's thread) "
        "and in wall time. Redis = the commands it ran per event (the replay's are the same "
        "unless noted) and the scripts' µs (`INFO commandstats`), which grow when the 2 "
        f"cores are busy. {d['rounds']} rounds of {d['events_per_round']:,} events; "
        f"target ≤ {OUR_CODE_TARGET_US:.0f} µs.",
        "",
        *decomposition_table(d),
    ]


def _m6(m6: dict[str, Any]) -> list[str]:
    rows = []
    for api in ("sync", "asyncio"):
        r = m6[api]
        variants = [r["variants"][name] for name in (OURS, HAND_WRITTEN, FLOOR)]
        wall = [_med(v["wall_us"]) for v in variants]
        ratios = (
            _spread(r["ratio_vs_a"], bold_above=1.10),
            _spread(r["ratio_vs_b"], bold_above=1.25),
        )
        cpu = f"{_med(r['cpu_ratio_vs_a'], 2)} · {_med(r['cpu_ratio_vs_b'], 2)}"
        work = " · ".join(
            f"{v['round_trips_per_cycle']:.0f}/{v['redis_commands_per_cycle']:.0f}"
            for v in variants
        )
        rows.append((api, *wall, *ratios, cpu, work))
    header = ("API", "ours µs", "(a) µs", "(b) µs", "ours/(a)", "ours/(b)", "CPU", "RT/cmds")
    return [
        "## 6. The TeacherAPP cycle on a real server",
        "",
        "One TeacherAPP connect + disconnect at a time with `Settings(announce_connect="
        "False)` on a real python-socketio server on loopback (sync: `socketio.Server`, "
        "threading, on Werkzeug; asyncio: `socketio.AsyncServer` on aiohttp), with a real "
        "hub client of the organisation in another process receiving every "
        "`teacher_disconnect`. The handlers run in the server process on the server's rooms "
        "and emit (presence_kit through `SocketIORooms` / `AsyncSocketIORooms`); connections "
        f"are registered in the server's manager untimed. µs per cycle, {m6['rounds']} "
        f"interleaved rounds of {m6['cycles_per_run']} cycles. CPU = ours/(a) · ours/(b) in "
        "CPU time; RT/cmds = round trips / Redis commands per cycle, ours · (a) · (b). "
        "Targets: ≤ 1.10x (a), ≤ 1.25x (b).",
        "",
        *_table(header, rows),
    ]


def _m1(m1: dict[str, Any]) -> list[str]:
    out = [
        "## 1. Cost per connect and disconnect",
        "",
        f"µs per event, median over {m1['rounds']} interleaved rounds; each run "
        f"{m1['events_per_run']['sequential']} events one at a time or "
        f"{m1['events_per_run']['concurrent']} with 100 at once (threads / asyncio tasks). "
        "Sockets are presence_kit's in-process recording fakes and analytics an in-process "
        "enqueue in every variant, so only Redis and our own code differ. For every connect "
        "and every ParticipantWeb event the spec's flow is one command already, so (a) = (b) "
        "(shown as =); TeacherHub has no Redis work in the spec (not judged, not charted). "
        f"CPU + = ours {MINUS} (b) in client CPU.",
        "",
        f"![per-event ratios]({CHARTS['per_event']})",
        "",
    ]
    header = ("API", "role", "event", "ours", "(a)", "(b)", "ours/(a)", "ours/(b)", "CPU +")
    for concurrency, title in ((1, "One at a time"), (100, "100 at once")):
        rows = []
        for r in (r for r in m1["rows"] if r["concurrency"] == concurrency):
            v, same = r["variants"], r["a_equals_b"]
            if r["target_within_1_10_of_b"] is None:  # not judged: the median only
                vs_a = vs_b = _med(r["ratio_vs_b"], 1)
            else:
                vs_a = _spread(r["ratio_vs_a"], bold_above=1.0)
                vs_b = _spread(r["ratio_vs_b"], bold_above=1.10)
            wall = [_med(v[name]["wall_us"]) for name in (OURS, HAND_WRITTEN, FLOOR) if name in v]
            if same:
                wall, vs_a = [wall[0], "=", wall[-1]], "="
            extra = _med(r["cpu_overhead_us_vs_b"])
            rows.append((r["api"], r["role"], r["event"], *wall, vs_a, vs_b, extra))
        out += [f"{title}:", "", *_table(header, rows)]
    return out + _redis_work(m1)


def _redis_work(m1: dict[str, Any]) -> list[str]:
    """Commands and Lua µs per event (INFO commandstats, reset before each block)."""
    one = {(r["api"], r["role"], r["event"]): r for r in m1["rows"] if r["concurrency"] == 1}
    rows, mix_rows = [], []
    for (api, role, event), r in one.items():
        if api != "sync":
            continue
        v = r["variants"]
        ours, floor = v[OURS], v[FLOOR]
        variants = (OURS, HAND_WRITTEN, FLOOR)
        rt = " · ".join(f"{v.get(n, floor)['round_trips_per_event']:.0f}" for n in variants)
        cmds = f"{ours['redis_commands_per_event']:.1f} · {floor['redis_commands_per_event']:.1f}"
        both = (r, one.get(("asyncio", role, event)))
        lua = " · ".join(
            f"{x['variants'][OURS]['redis_script_us_per_event']:.1f}" for x in both if x
        )
        cpu = f"{ours['redis_cpu_us_per_event']:.0f} · {floor['redis_cpu_us_per_event']:.0f}"
        rows.append((f"{role} {event}", rt, cmds, lua, f"{floor['redis_us_per_event']:.1f}", cpu))
        mix = ours["redis_command_mix_per_event"]
        inner = ", ".join(f"{k} {n:g}" for k, n in mix.items() if k != "evalsha")
        mix_rows.append((f"{role} {event}", f"{mix.get('evalsha', 0):g}", inner))
    header = ["event", "RT ours·(a)·(b)", "cmds ours·(b)", "Lua µs sync·asyncio", "(b) µs"]
    header.append("CPU µs")
    return [
        "### Redis work per event",
        "",
        "One event at a time. RT = round trips, counted on the client; cmds = commands Redis "
        "ran (a script's own included), Lua µs = the scripts' time and (b) µs the floor's "
        "commands' (`INFO commandstats`, reset with `CONFIG RESETSTAT` before each measured "
        "block); CPU µs = the server's CPU (`INFO cpu`), ours · (b).",
        "",
        *_table(header, rows),
        "The commands of presence_kit's scripts per event (sync, one at a time):",
        "",
        *_table(("event", "scripts", "commands in the scripts, per event"), mix_rows),
    ]


SWEEP = "sweep (dead node)"
PAIRED = {"handler calls": "throughput_ratio_vs_floor", SWEEP: "sweep_throughput_ratio_vs_floor"}


def _m2(m2: dict[str, Any]) -> list[str]:
    names = {OURS: "handler calls", FLOOR: FLOOR, HAND_WRITTEN: HAND_WRITTEN}
    rows = []
    for size in m2["sizes"]:
        floor = Spread.of([r["events_per_s"] for r in size["runs"][FLOOR]]).median
        for name, runs in size["runs"].items():
            med = sorted(runs, key=lambda x: x["redis_state_s"])[len(runs) // 2]
            state = _spread(Spread.of([x["redis_state_s"] for x in runs]).as_dict())
            announced = _spread(Spread.of([x["all_announced_s"] for x in runs]).as_dict())
            rate = f"{med['events_per_s']:,}"
            work = [f"{med[k]:g}" for k in ("round_trips_per_event", "redis_commands_per_event")]
            head = (f"{size['n']:,}", names.get(name, SWEEP), state, announced)
            # The median of the per-round ratios where there is one (as in the targets).
            key = PAIRED.get(names.get(name, SWEEP))
            value = size[key]["median"] if key else med["events_per_s"] / floor
            ratio = f"{value:.2f}x"
            rows.append((*head, rate, ratio, *work, f"{med['redis_cpu_us_per_event']:g}"))
    header = (
        "N",
        "variant",
        "state s",
        "announced s",
        "events/s",
        "/floor",
        "RT",
        "cmds",
        "CPU µs",
    )
    out = [
        "## 2. Disconnect storm",
        "",
        "N teachers (one connection each) lose their connections at once. *Handler calls*: "
        f"N `handle_disconnect` calls on one event loop, at most {m2['sizes'][0]['concurrency']} "
        "at a time. *Sweep*: node A recorded the N connections and stopped heartbeating; node "
        "B's `sweep_dead_nodes()` runs every leave and announces it. State = until the last "
        "store call returned (then every alive key is checked); announced = until the last "
        "`teacher_disconnect`. Floor = one pipeline with the same writes, then the same emits. "
        "RT, cmds, CPU µs: per event (round trips; Redis commands; the server's CPU).",
        "",
        f"![storm throughput]({CHARTS['storms']})",
        "",
        *_table(header, rows),
    ]
    if d := m2.get("default_pool"):
        lost = d["connect_failures"] + d["store_failures"]
        result = (
            f"{lost:,} calls failed with `MaxConnectionsError`: {d['alive_keys_wrong']:,} alive "
            f"keys left wrong, {d['n'] - d['announced']:,} leaves never announced."
            if lost
            else f"none failed (a burst beyond the pool waits): state right in "
            f"{d['redis_state_s']:.2f} s, every leave announced in {d['all_announced_s']:.2f} s."
        )
        out += [
            f"With redis-py's default pool size and {d['concurrency']} handlers at once, of "
            f"{d['n']:,} teachers {result}",
            "",
        ]
    return out


def _m3(m3: dict[str, Any]) -> list[str]:
    rows = []
    for mode, v in m3["modes"].items():
        last, a = v["runs"][-1], v["runs"][-1]["analytics"]
        lags = (_spread(v["lag_p99_ms"], bold_above=10.0), _spread(v["lag_max_ms"]))
        gc = f"{last['gc_pauses']}, ≤ {last['gc_max_pause_ms']:.1f} ms"
        failed = sum(x.get("store_failures", 0) for x in v["runs"])
        events = (
            "—" if a is None else f"{a['enqueued']} / {a['sent_before_close']} / {a['dropped']}"
        )
        rows.append((mode.split(" (")[0], *lags, _spread(v["handler_p99_ms"]), gc, failed, events))
    header = ("analytics", "lag p99 ms", "lag max ms", "handler p99 ms", "GC", "failed", "events")
    return [
        "## 3. Event-loop lag",
        "",
        f"Participants leave through `AsyncPresenceKit` at {m3['rate_per_s']:,}/s for "
        f"{m3['seconds_per_run']:g} s while a task sleeps {m3['tick_ms']:g} ms again and again; "
        "lag = how much longer each sleep took. `MixpanelAnalytics` posts to a local endpoint "
        "in another process that answers in 500 ms (*slow*), answers in 2 s with a 0.1 s "
        f"timeout (*timing out*) or refuses. Interleaved rounds: {m3['rounds']}; the same as "
        f"off means within ± {m3['noise_ms']:.2f} ms. GC = the collector's pauses, *failed* = "
        "store failures (all rounds), *events* = enqueued / sent / dropped (last round).",
        "",
        f"![event-loop lag]({CHARTS['loop_lag']})",
        "",
        *_table(header, rows),
    ]


def _m4(m4: dict[str, Any]) -> list[str]:
    ours, bare = m4["ours"], m4["spec_bare_alive_hash"]
    rows = [
        ("presence_kit, per online teacher (all keys)", ours["per_online_teacher_bytes"]),
        ("presence_kit, per extra connection", ours["per_extra_connection_bytes"]),
        (
            "presence_kit, per teacher after leaving (tombstones)",
            ours["per_offline_teacher_bytes"],
        ),
        ("spec's bare alive hash, per online teacher", bare["per_online_teacher_bytes"]),
        ("ratio ours / bare", f"{m4['ratio_vs_bare']}x"),
    ]
    keys = [
        (f"`{k['key']}`", f"{k['count']:,}", k["type"], k["encoding"], k["avg_bytes"])
        for k in ours["keys_online"]
    ]
    return [
        "## 4. Redis memory per teacher",
        "",
        f"{m4['teachers']:,} teachers in {m4['organisations']} organisations on a fresh "
        "redis-server; allocated bytes less client buffers, before and after.",
        "",
        *_table(("", "bytes"), rows),
        "Keys with one connection per teacher (sampled `MEMORY USAGE`):",
        "",
        *_table(("key", "count", "type", "encoding", "avg bytes"), keys),
    ]


def _m5(m5: dict[str, Any]) -> list[str]:
    rows = []
    for name, v in m5["variants"].items():
        times = [f"{v[k]:.2f}" for k in ("p50_ms", "p99_ms", "max_ms")]
        rows.append((name, v["disconnects"], *times, f"{v['round_trips_per_disconnect']:g}"))
    return [
        "## 5. End to end",
        "",
        f"A python-socketio `AsyncServer` (aiohttp) with {m5['clients']:,} real clients over "
        f"websocket on loopback (connected in {m5['connect_all_s']:.1f} s); time from a "
        "teacher client's `disconnect()` to the hub's `teacher_disconnect` handler, the two "
        "handlers interleaved (ABBA).",
        "",
        *_table(("handler", "disconnects", "p50 ms", "p99 ms", "max ms", "RT"), rows),
        f"ours/(a): p50 {m5['p50_ratio_vs_a']:.2f}x, p99 {m5['p99_ratio_vs_a']:.2f}x.",
        "",
    ]


def markdown(results: dict[str, Any]) -> str:
    m = results["measurements"]
    lines = ["# presence_kit benchmarks", "", *_machine(results["machine"]), *_targets(m)]
    sections = {"decompose": _decomposition, "m6": _m6, "m1": _m1, "m2": _m2}
    for key, render in {**sections, "m3": _m3, "m4": _m4, "m5": _m5}.items():
        if section := _ok(m, key):
            lines += render(section)
            if key == "m6" and not _ok(m, "m1"):  # the chart is measurement 1's otherwise
                lines += [f"![per-event ratios]({CHARTS['per_event']})", ""]
    if profile := _ok(m, "profile"):
        lines += [f"Profile of the hot path (pyinstrument): `{profile['file']}`.", ""]
    if logged := results.get("log_records"):
        clip = [
            x["message"] if len(x["message"]) <= 56 else x["message"][:55] + "…" for x in logged
        ]
        rows = [
            (r["measurement"], r["logger"], r["level"], c, r["count"])
            for r, c in zip(logged, clip, strict=True)
        ]
        lines += ["presence_kit log records during the run:", ""]
        lines += _table(("measurement", "logger", "level", "message", "count"), rows)
    return "\n".join(lines)


def svgs(results: dict[str, Any]) -> dict[str, str]:
    """The charts that the measurements which ran (and did not fail) allow."""
    m, out = results["measurements"], {}
    if _ok(m, "m1") or _ok(m, "m6"):
        out[CHARTS["per_event"]] = charts.per_event(_ok(m, "m1"), _ok(m, "m6"))
    if m2 := _ok(m, "m2"):
        out[CHARTS["storms"]] = charts.storms(m2)
    if m3 := _ok(m, "m3"):
        out[CHARTS["loop_lag"]] = charts.loop_lag(m3)
    return out


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``results.md``, the charts and ``results.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {"results.md": markdown(results), **svgs(results)}
    texts["results.json"] = json.dumps(results, indent=2, default=str) + "\n"
    for name, text in texts.items():
        (out / name).write_text(text)
    return [out / name for name in texts]


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR
    for path in write(json.loads((where / "results.json").read_text()), where):
        print(path)
