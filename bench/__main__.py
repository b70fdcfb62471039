"""``python -m bench [--quick] [--only m1,m3,...] [--out DIR]``: run the benchmark suite.

Writes ``results.md``, ``results.json``, the charts (``*.svg``) and ``profile.txt`` into
``bench/results/`` (or ``--out``). Run it from the repository root, with the project's
virtualenv.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import m1_per_event, m2_storm, m3_loop_lag, m4_memory, m5_end_to_end, m6_real_server
from ._common import RESULTS_DIR, machine_info
from .config import MEASUREMENTS, Config
from .report import markdown, write
from .tools import decompose, profile_hot_path

TITLES = {
    "m1": "1. cost per connect and disconnect",
    "m2": "2. disconnect storm",
    "m3": "3. event-loop lag",
    "m4": "4. Redis memory per teacher",
    "m5": "5. end to end",
    "m6": "6. the TeacherAPP cycle on a real server",
    "decompose": "our code versus its Redis work",
    "profile": "hot-path profile",
}


class LogTally(logging.Handler):
    """Counts presence_kit's log records (they would otherwise flood stderr)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.current = ""
        self.counts: Tally[tuple[str, str, str, str]] = Tally()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f" [{type(exc).__name__}: {exc}]"
        message = message.replace("|", "/")[:160]
        self.counts[(self.current, record.name, record.levelname, message)] += 1

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"measurement": m, "logger": name, "level": level, "message": msg, "count": n}
            for (m, name, level, msg), n in sorted(self.counts.items())
        ]


def _parse(argv: list[str]) -> tuple[Config, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = parser.parse_args(argv)
    only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
    unknown = only - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    cfg = Config.quick_run(only) if args.quick else Config.full(only)
    return cfg, args.out


def main(argv: list[str] | None = None) -> int:
    cfg, out = _parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    tally = LogTally()
    kit_logger = logging.getLogger("presence_kit")
    kit_logger.addHandler(tally)
    kit_logger.propagate = False
    kit_logger.setLevel(logging.INFO)

    runners: dict[str, Callable[[Config, Callable[[str], None]], dict[str, Any]]] = {
        "m1": m1_per_event.run,
        "m2": m2_storm.run,
        "m3": m3_loop_lag.run,
        "m4": m4_memory.run,
        "m5": m5_end_to_end.run,
        "m6": m6_real_server.run,
        "decompose": decompose.run,
        "profile": lambda c, lg: profile_hot_path.run(c, lg, out),
    }
    results: dict[str, Any] = {"machine": machine_info(), "measurements": {}}
    results["machine"]["quick"] = cfg.quick
    failed = []
    for key in MEASUREMENTS:
        if not cfg.wants(key):
            continue
        log(f"{TITLES[key]} ...")
        tally.current = key
        t0 = time.perf_counter()
        try:
            results["measurements"][key] = runners[key](cfg, log)
        except Exception as exc:  # a failed measurement is reported, the others still run
            failed.append(key)
            results["measurements"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{TITLES[key]} FAILED: {type(exc).__name__}: {exc}")
        log(f"{TITLES[key]} done in {time.perf_counter() - t0:.1f}s")
    results["machine"]["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["log_records"] = tally.rows()
    paths = write(results, out)
    print(markdown(results))
    log(f"wrote {', '.join(p.name for p in paths)} into {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
