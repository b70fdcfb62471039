"""The state machine's table, drawn: Mermaid diagrams and a Markdown table.

``docs/explanation/state-machine.md`` shows what these functions make of
:data:`presence_kit._state.TABLE` (``tests/test_state.py`` checks that it does); paste
their output there when the table changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._state import TABLE, Call, Grace, SidState, Transition, UserState

__all__ = ["markdown_table", "mermaid"]


def _condition(row: Transition) -> str:
    parts = [row.when]
    if row.call is not Call.FIRST:
        parts.insert(0, f"{row.call.value} call")
    if row.grace is not Grace.NONE:
        parts.append(f"grace {row.grace.value}")
    return "; ".join(parts)


def _edges(pairs: Iterable[tuple[str, str, str]]) -> list[str]:
    labels: dict[tuple[str, str], list[str]] = {}
    for source, target, label in pairs:
        bucket = labels.setdefault((source, target), [])
        if label not in bucket:
            bucket.append(label)
    return [f"    {s} --> {t} : {'<br/>'.join(ls)}" for (s, t), ls in labels.items()]


_IDS = {
    UserState.OFFLINE: "offline",
    UserState.ONLINE: "online",
    UserState.HELD: "held",
    SidState.NONE: "none",
    SidState.RECORDED: "recorded",
    SidState.TOMBSTONED: "tombstoned",
    SidState.SWEPT: "swept",
}


def _label(row: Transition, *, with_grant: bool) -> str:
    text = row.event.value if row.call is Call.FIRST else f"{row.event.value}, {row.call.value}"
    grant = str(row.grant)
    return f"{text} / {grant}" if with_grant and grant != "nothing" else text


def mermaid(table: tuple[Transition, ...] = TABLE) -> str:
    """The state diagrams of ``table`` as Mermaid source (two ```` ```mermaid ````
    fences: the (user, role)'s states, then a sid's), each edge labelled with its
    events (and their call, when not the first) and, for the (user, role), what they
    grant. Rows that change no state are left out: :func:`markdown_table` lists them."""
    user = [
        "stateDiagram-v2",
        "    direction LR",
        *(f'    state "{state.value}" as {_IDS[state]}' for state in UserState),
        "    [*] --> offline",
        *_edges(
            (_IDS[r.user], _IDS[r.user_after], _label(r, with_grant=True))
            for r in table
            if r.user is not r.user_after
        ),
    ]
    sid = [
        "stateDiagram-v2",
        "    direction LR",
        "    [*] --> none",
        *_edges(
            (_IDS[r.sid], _IDS[r.sid_after], _label(r, with_grant=False))
            for r in table
            if r.sid is not None and r.sid_after is not None and r.sid is not r.sid_after
        ),
    ]
    return "\n".join(["```mermaid", *user, "```", "", "```mermaid", *sid, "```", ""])


def _status(row: Transition) -> str:
    flags = sorted(flag.value for flag in row.flags)
    return " ".join([f"`{row.status.name}`", *flags])


def markdown_table(table: tuple[Transition, ...] = TABLE) -> str:
    """``table`` as a Markdown table: one line per transition."""
    lines = [
        "| event | (user, role) | sid | condition | answer | grants | feed | where |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        user = f"{row.user.value} → {row.user_after.value}"
        sid = "—"
        if row.sid is not None and row.sid_after is not None:
            sid = f"{row.sid.value} → {row.sid_after.value}"
        script, _, detail = row.lua.partition(":")
        feed = ", ".join(f"`{kind}`" for kind in row.feed) or "—"
        lines.append(
            f"| {row.event.value} | {user} | {sid} | {_condition(row)} | {_status(row)} "
            f"| {row.grant} | {feed} | `{script}`:{detail}; `{row.memory}` |"
        )
    return "\n".join(lines) + "\n"
