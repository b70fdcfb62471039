"""The test suite's local Mixpanel endpoint, run in a process of its own.

The event-loop-lag measurement must see only presence_kit's own threads in the
measured process: a real Mixpanel is on another machine, so its stand-in must not
compete for our GIL. ``python -m bench._endpoint MODE DELAY`` prints the endpoint's URL
and serves until its standard input is closed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from ._common import REPO


def main(argv: list[str]) -> int:
    from tests.support.mixpanel_endpoint import MixpanelEndpoint

    mode, delay = argv[0], float(argv[1])
    endpoint = MixpanelEndpoint()
    try:
        endpoint.set_mode(mode, delay=delay)
        print(endpoint.url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        endpoint.close()
    return 0


@contextlib.contextmanager
def endpoint_process(mode: str, delay: float) -> Iterator[str]:
    """Start an endpoint process answering in ``mode``; yield its events URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._endpoint", mode, str(delay)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the endpoint process did not start (said {url!r})")
        yield url
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
