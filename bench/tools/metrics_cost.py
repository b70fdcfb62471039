"""What the OpenTelemetry metrics cost per handler call
(``python -m bench.tools.metrics_cost [--rounds N] [--calls N]``).

Three kits on the in-memory store with recording sockets (so the time is presence_kit
and the metrics, nothing else), each running TeacherAPP connect + disconnect pairs:

* ``sdk``: ``meter_provider=`` an OpenTelemetry SDK ``MeterProvider`` with a reader
  attached (what an operator runs);
* ``noop``: the API's no-op provider (OpenTelemetry installed, not configured);
* ``none``: no metrics at all (a child process where ``opentelemetry`` cannot be
  imported, as without the extra).

Rounds are interleaved, the order rotated each round; the report gives each variant's
median microseconds per handler call and the differences, per call, against ``none``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

_CHILD = r"""
import json, sys, time
mode, calls = sys.argv[1], int(sys.argv[2])
if mode == "none":
    class NoOpenTelemetry:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(name)
            return None
    sys.meta_path.insert(0, NoOpenTelemetry())
from presence_kit import PresenceKit, Settings
from presence_kit.testing import RecordingSockets
provider = None
if mode == "sdk":
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
elif mode == "noop":
    from opentelemetry.metrics import NoOpMeterProvider
    provider = NoOpMeterProvider()
quiet = Settings(
    heartbeat_interval=30, node_timeout=60, leave_poll_interval=30, reconcile_interval=30
)
kit = PresenceKit(sockets=RecordingSockets(), settings=quiet, meter_provider=provider)
session = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
for n in range(2000):  # warm up
    kit.handle_connect(f"w{n}", session); kit.handle_disconnect(f"w{n}", session)
started = time.perf_counter()
for n in range(calls):
    kit.handle_connect(f"s{n}", session)
    kit.handle_disconnect(f"s{n}", session)
elapsed = time.perf_counter() - started
assert (kit.stats.connects, kit.stats.disconnects) == (2000 + calls, 2000 + calls)
print(json.dumps({"us_per_call": elapsed / (2 * calls) * 1e6}))
kit.close()
"""

MODES = ("none", "noop", "sdk")


def _run(mode: str, calls: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(calls)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return float(result["us_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    started = time.monotonic()
    for round_ in range(args.rounds):
        order = MODES[round_ % 3 :] + MODES[: round_ % 3]
        for mode in order:
            samples[mode].append(_run(mode, args.calls))
    median = {mode: statistics.median(values) for mode, values in samples.items()}
    print(
        f"### Metrics per handler call ({args.rounds} rounds x {args.calls:,} connect+disconnect)"
    )
    print()
    print("| variant | µs per handler call (median) | range | over `none` |")
    print("| --- | ---: | --- | ---: |")
    for mode in MODES:
        low, high = min(samples[mode]), max(samples[mode])
        extra = median[mode] - median["none"]
        print(f"| `{mode}` | {median[mode]:.2f} | {low:.2f}-{high:.2f} | {extra:+.2f} |")
    print()
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
