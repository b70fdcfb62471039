"""The results' charts: horizontal bar charts written as plain SVG text (no dependency).

Each chart is a list of sections (a title and its bars); a bar has a row label, a
value, an optional min-max range (drawn as a whisker), a series (its colour, named in
the legend) and the text printed after it. Vertical reference lines mark parity and
targets. The background is white, so the charts read the same on a dark docs theme.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from .baselines import FLOOR, HAND_WRITTEN, OURS

WIDTH = 760
ROW, BAR, HEAD = 18, 12, 24
CHAR = 6.6  # the average advance of a 12 px sans-serif character, for the label column
VALUE_COLUMN = 150
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3")
EN = "\u2013"  # an en dash, for ranges
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    low: float | None = None
    high: float | None = None
    series: int = 0
    text: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    bars: Sequence[Bar]


def _step(top: float) -> float:
    """A round tick step that gives at most 8 ticks up to ``top``."""
    for unit in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        if top / unit <= 8:
            return unit
    return float(10 ** math.ceil(math.log10(top / 8)))


def bar_chart(
    title: str,
    sections: Sequence[Section],
    *,
    unit: str,
    legend: Sequence[str],
    lines: Sequence[tuple[float, str]] = (),
    cap: float | None = None,
) -> str:
    """An SVG bar chart; values (and whiskers) beyond ``cap`` are cut at the axis end."""
    bars = [b for s in sections for b in s.bars]
    top = max([b.high if b.high is not None else b.value for b in bars] + [x for x, _ in lines])
    if cap is not None:
        top = min(top, cap)
    step = _step(top or 1.0)
    top = step * math.ceil(top / step) if top > 0 else step
    label_w = max(len(b.label) for b in bars) * CHAR + 16
    x0, x1 = label_w, WIDTH - VALUE_COLUMN

    def x(value: float) -> float:
        return x0 + (x1 - x0) * min(max(value, 0.0), top) / top

    out: list[str] = []
    y = HEAD + 8
    for section in sections:
        y += 6
        out.append(f'<text x="8" y="{y + 12}" font-weight="bold">{escape(section.title)}</text>')
        y += HEAD - 4
        for b in section.bars:
            if not b.label:  # the same group as the bar above: closer to it
                y -= ROW - BAR - 3
            colour = COLOURS[b.series % len(COLOURS)]
            out.append(
                f'<text x="{x0 - 8}" y="{y + 10}" text-anchor="end">{escape(b.label)}</text>'
            )
            out.append(
                f'<rect x="{x0}" y="{y + 1}" width="{x(b.value) - x0:.1f}" height="{BAR}" '
                f'fill="{colour}"/>'
            )
            if b.low is not None and b.high is not None:
                lo, hi, mid = x(b.low), x(b.high), y + 1 + BAR / 2
                out.append(
                    f'<path d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {mid - 4}v8M{hi:.1f} {mid - 4}v8"'
                    ' stroke="#222" stroke-width="1" fill="none"/>'
                )
            clipped = "▸ " if b.value > top or (b.high or 0) > top else ""
            out.append(f'<text x="{x1 + 8}" y="{y + 10}">{clipped}{escape(b.text)}</text>')
            y += ROW
    axis_y = y + 4
    grid = []
    ticks = round(top / step)
    for i in range(ticks + 1):
        value = i * step
        gx = x(value)
        grid.append(
            f'<line x1="{gx:.1f}" y1="{HEAD + 8}" x2="{gx:.1f}" y2="{axis_y}" stroke="#ddd"/>'
        )
        grid.append(
            f'<text x="{gx:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#444">'
            f"{value:g}{unit}</text>"
        )
    for i, (value, name) in enumerate(lines):
        lx = x(value)
        grid.append(
            f'<line x1="{lx:.1f}" y1="{HEAD + 8}" x2="{lx:.1f}" y2="{axis_y}" stroke="#c44" '
            'stroke-dasharray="4 3"/>'
        )
        # Names alternate left and right of their lines, so that near lines' do not meet.
        anchor, tx = ("end", lx - 3) if i % 2 == 0 else ("start", lx + 3)
        grid.append(
            f'<text x="{tx:.1f}" y="{HEAD + 4}" fill="#c44" font-size="11" '
            f'text-anchor="{anchor}">{escape(name)}</text>'
        )
    legend_y = axis_y + 34
    keys, lx = [], 8.0
    for i, name in enumerate(legend):
        keys.append(
            f'<rect x="{lx}" y="{legend_y - 10}" width="12" height="12" '
            f'fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="{lx + 16}" y="{legend_y}">{escape(name)}</text>'
        )
        lx += 16 + len(name) * CHAR + 18
    height = legend_y + 12
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" {FONT} font-size="12" fill="#222">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>',
            f'<text x="8" y="16" font-size="14" font-weight="bold">{escape(title)}</text>',
            *grid,
            *out,
            *keys,
            "</svg>",
            "",
        ]
    )


def _ratio_bar(label: str, spread: dict[str, Any], series: int) -> Bar:
    return Bar(
        label,
        spread["median"],
        spread.get("min"),
        spread.get("max"),
        series,
        f"{spread['median']:.2f}x ({spread['min']:.2f}{EN}{spread['max']:.2f})",
    )


def per_event(m1: dict[str, Any] | None, m6: dict[str, Any] | None) -> str:
    """Ours over (a) and over (b) per role and event, sync and asyncio, sequential and
    100 at once; then the real-server cycle. TeacherHub has no Redis work in the spec,
    so no baseline to compare with: it is left out."""
    sections = []
    rows = (m1 or {}).get("rows", [])
    for api in ("sync", "asyncio"):
        for concurrency, mode in ((1, "one at a time"), (100, "100 at once")):
            bars = []
            for r in rows:
                if r["api"] != api or r["concurrency"] != concurrency or r["role"] == "TeacherHub":
                    continue
                label = f"{r['role']} {r['event']}"
                if not r["a_equals_b"]:
                    bars.append(_ratio_bar(label, r["ratio_vs_a"], 0))
                    label = ""
                bars.append(_ratio_bar(label, r["ratio_vs_b"], 1))
            if bars:
                sections.append(Section(f"{api}, {mode}", bars))
    if m6 is not None:
        bars = []
        for api in ("sync", "asyncio"):
            if api in m6:
                bars.append(_ratio_bar(f"{api} cycle", m6[api]["ratio_vs_a"], 0))
                bars.append(_ratio_bar("", m6[api]["ratio_vs_b"], 1))
        sections.append(Section("TeacherAPP connect + disconnect on a real server", bars))
    return bar_chart(
        f"Time per event: presence_kit over the baselines (median, min{EN}max of rounds)",
        sections,
        unit="x",
        legend=[f"{OURS} / {HAND_WRITTEN}", f"{OURS} / {FLOOR}"],
        lines=[(1.0, "1 = baseline"), (1.1, "1.10")],
        cap=3.0,
    )


def storms(m2: dict[str, Any]) -> str:
    """Throughput (events until the Redis state is right) over the floor's."""
    sections = []
    for size in m2["sizes"]:
        runs = size["runs"]
        sweep = next(name for name in runs if name not in (OURS, FLOOR, HAND_WRITTEN))
        floor = _median_rate(runs[FLOOR])
        bars = []
        for key, name, series, variant in (
            ("throughput_ratio_vs_floor", "handler calls", 0, OURS),
            ("sweep_throughput_ratio_vs_floor", "a dead node's sweep", 1, sweep),
        ):
            r = size[key]
            text = f"{r['median']:.2f}x · {_median_rate(runs[variant]):,.0f}/s"
            bars.append(Bar(name, r["median"], r["min"], r["max"], series, text))
        if HAND_WRITTEN in runs:
            hand = _median_rate(runs[HAND_WRITTEN])
            text = f"{hand / floor:.2f}x · {hand:,.0f}/s"
            bars.append(Bar(HAND_WRITTEN, hand / floor, series=2, text=text))
        sections.append(Section(f"{size['n']:,} teachers (floor: {floor:,.0f}/s)", bars))
    return bar_chart(
        "Disconnect storm: throughput over the floor's one pipeline (Redis state right)",
        sections,
        unit="x",
        legend=["presence_kit, handler calls", "presence_kit, sweep", HAND_WRITTEN],
        lines=[(0.5, "½"), (0.8, "0.8"), (1.0, "floor")],
    )


def _median_rate(runs: Sequence[dict[str, Any]]) -> float:
    rates = sorted(r["events_per_s"] for r in runs)
    return float(rates[len(rates) // 2])


def loop_lag(m3: dict[str, Any]) -> str:
    """p99 and max oversleep of a 5 ms ticker per analytics mode."""
    bars = []
    for mode, v in m3["modes"].items():
        short = mode.split(" (")[0]
        p99, worst = v["lag_p99_ms"], v["lag_max_ms"]
        bars.append(
            Bar(short, p99["median"], p99["min"], p99["max"], 0, f"p99 {p99['median']:.2f} ms")
        )
        bars.append(
            Bar(
                "", worst["median"], worst["min"], worst["max"], 1, f"max {worst['median']:.2f} ms"
            )
        )
    return bar_chart(
        f"Event-loop lag while {m3['rate_per_s']:,} participants/s leave (median, min{EN}max)",
        [Section("analytics", bars)],
        unit=" ms",
        legend=["lag p99", "lag max"],
        lines=[(10.0, "10 ms")],
    )
