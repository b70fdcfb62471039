#!/usr/bin/env python3
"""Write the blocking code from the asyncio code: presence_kit/_async -> presence_kit/_sync.

The facade, its handlers and background steps, the Redis store, its operations and its
kept connection are written once, as plain ``async def`` with plain ``await`` in
``presence_kit/_async/``; this script makes their blocking twins in
``presence_kit/_sync/`` by token substitution (httpcore's way), then formats them with
ruff. What truly differs between the two (tasks or threads, locks, starting a call now
and collecting it later, stopping the background) lives in
``presence_kit/_synchronization.py``, one name per side: ``AsyncX`` / ``X``,
``async_x`` / ``x``.

    python .ci/unasync.py           # (re)write presence_kit/_sync/
    python .ci/unasync.py --check   # exit 1 if presence_kit/_sync/ is not current (lint)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "presence_kit" / "_async"
TARGET = ROOT / "presence_kit" / "_sync"

HEADER = (
    "# Generated from presence_kit/_async/{name} by .ci/unasync.py: do not edit.\n"
    "# Change the asyncio original, then run `make unasync`.\n"
)

# Applied in order, each to whole words; the longer spellings first.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\bredis\.asyncio\.cluster\b", "redis.cluster"),
    (r"\bredis\.asyncio\.sentinel\b", "redis.sentinel"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAwaitable\[([^\[\]]*)\]", r"\1"),
    (r"\b_async\b", "_sync"),
    (r"\bAsyncClient\b", "SyncClient"),  # the blocking client's public alias
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\basync_(\w+)", r"\1"),
    (r"\ban asyncio\b", "a blocking"),
    (r"\bStore \| Store\b", "Store"),
]
_COMPILED = [(re.compile(pattern), repl) for pattern, repl in SUBSTITUTIONS]


def unasync_text(text: str) -> str:
    """The blocking twin of one asyncio module's source (before formatting)."""
    for pattern, repl in _COMPILED:
        text = pattern.sub(repl, text)
    return text


def _ruff(args: list[str], text: str, path: Path) -> str:
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff) if ruff.exists() else "ruff", *args, "--stdin-filename", str(path)]
    done = subprocess.run(command, input=text, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"unasync: ruff {args[0]} failed on {path}:\n{done.stderr}")
    return done.stdout


def formatted(text: str, path: Path) -> str:
    """``text`` with the imports that became duplicates or unused (``AsyncStore`` and
    ``Store`` both become ``Store``) dropped, sorted and formatted as ruff would."""
    fixed = _ruff(["check", "--fix-only", "--exit-zero", "--select", "F401,F811,I001"], text, path)
    return _ruff(["format"], fixed, path)


def generated() -> dict[Path, str]:
    """Every file of presence_kit/_sync/ as it should be."""
    out = {}
    for source in sorted(SOURCE.glob("*.py")):
        target = TARGET / source.name
        body = unasync_text(source.read_text())
        out[target] = formatted(HEADER.format(name=source.name) + body, target)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if _sync/ is not current")
    args = parser.parse_args()
    wanted = generated()
    present = {path: path.read_text() for path in sorted(TARGET.glob("*.py"))}
    stale = sorted(
        str(path.relative_to(ROOT))
        for path in {*wanted, *present}
        if wanted.get(path) != present.get(path)
    )
    if args.check:
        if stale:
            print("unasync: not current (run `make unasync`): " + ", ".join(stale))
            return 1
        return 0
    TARGET.mkdir(exist_ok=True)
    for path in present.keys() - wanted.keys():
        path.unlink()
    for path, text in wanted.items():
        if present.get(path) != text:
            path.write_text(text)
            print(f"unasync: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
