"""Our code in instructions per event: the decomposition, counted by callgrind.

``python -m bench.tools.instructions [--rev REV] [--roles TeacherAPP,...]``

On these shared 2-core machines process CPU per event varies by a third from run to
run; instructions executed do not (``valgrind --tool=callgrind`` counts them, run to
run within 0.1 %). For each role, sync and asyncio, this runs a sequential
connect + disconnect cycle on a local redis-server (presence_kit with the recording
sockets and no analytics, as measurement 1 does) and the same ``EVALSHA`` requests
replayed with plain ``execute_command`` (redis-py's defaults), each for 200 and for
1,200 cycles: the difference of the two counts, over 1,000, is a cycle's cost
without the interpreter's start-up. ``ours - replay`` is what presence_kit's Python
costs per cycle (the facade, validation, effects, the store adapter and our choices
in redis-py: its ``Script`` wrapper, the store's own pool); it does not count the
kernel's side of a round trip, which both make alike.

``--rev`` measures a git revision's package instead of the working tree's (a
``git archive`` of it in a temporary directory), for before/after figures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.redis_servers import RedisServer

REPO = Path(__file__).resolve().parents[2]
SMALL, LARGE = 200, 1200
ROLES = ("TeacherAPP", "ParticipantWeb", "TeacherHub")

CHILD = Path(__file__).with_name("_instructions_child.py")


def _count(root: Path, server: RedisServer, cycles: int, mode: str, role: str) -> int:
    server.client().flushall()
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(CHILD),
            str(root),
            str(cycles),
            mode,
            str(server.port),
            role,
            str(LARGE),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None or out.returncode != 0:
        raise RuntimeError(f"callgrind gave no count ({mode} {role}): {out.stderr[-400:]}")
    return int(found.group(1))


def per_cycle(root: Path, server: RedisServer, mode: str, role: str) -> int:
    """Instructions per cycle of ``mode`` (sync, asyncio, replay, areplay) for ``role``."""
    small = _count(root, server, SMALL, mode, role)
    large = _count(root, server, LARGE, mode, role)
    return (large - small) // (LARGE - SMALL)


def measure(root: Path, roles: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per role and API: kit, replay and ours, in instructions per cycle."""
    rows: list[dict[str, Any]] = []
    with RedisServer() as server:
        for role in roles:
            for api, mode, replay in (("sync", "sync", "replay"), ("asyncio", "async", "areplay")):
                ours = per_cycle(root, server, mode, role)
                plain = per_cycle(root, server, replay, role)
                rows.append(
                    {"role": role, "api": api, "kit": ours, "replay": plain, "ours": ours - plain}
                )
    return rows


def _checkout(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    """Print the table (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m bench.tools.instructions")
    parser.add_argument("--rev", help="measure this git revision's package")
    parser.add_argument("--roles", default=",".join(ROLES), help="comma-separated roles")
    options = parser.parse_args()
    roles = tuple(r for r in options.roles.split(",") if r)
    with tempfile.TemporaryDirectory(prefix="presence-kit-rev-") as tmp:
        root = _checkout(options.rev, Path(tmp)) if options.rev else REPO
        rows = measure(root, roles)
    label = options.rev or "working tree"
    print(f"Instructions per connect + disconnect cycle ({label}; callgrind, thousands)\n")
    print("| role | API | presence_kit | plain replay | our code |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        kit, plain, ours = (row[k] // 1000 for k in ("kit", "replay", "ours"))
        print(f"| {row['role']} | {row['api']} | {kit}k | {plain}k | **{ours}k** |")


if __name__ == "__main__":
    main()
