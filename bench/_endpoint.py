"""The far ends of a measurement, each run in a process of its own.

* ``python -m bench._endpoint mixpanel MODE DELAY``: the test suite's local Mixpanel
  endpoint. The event-loop-lag measurement must see only presence_kit's own threads in
  the measured process: a real Mixpanel is on another machine, so its stand-in must not
  compete for our GIL.
* ``python -m bench._endpoint hub URL ORG_ID``: a real ``socketio.AsyncClient`` that
  connects as that organisation's TeacherHub (websocket) and counts the events it
  receives, so that the measured server process does none of a client's work.

Each prints one line when it is ready (the endpoint's URL; ``ready``) and serves until
its standard input is closed. The hub answers each line it reads with its counts, as
JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

from ._common import REPO, TEACHER_HUB

HUB_USER_ID = 999_999


def _mixpanel(mode: str, delay: float) -> int:
    from tests.support.mixpanel_endpoint import MixpanelEndpoint

    endpoint = MixpanelEndpoint()
    try:
        endpoint.set_mode(mode, delay=delay)
        print(endpoint.url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        endpoint.close()
    return 0


async def _hub(url: str, org_id: int) -> int:
    import socketio

    counts: Counter[str] = Counter()
    client = socketio.AsyncClient(reconnection=False)

    async def on_any(event: str, *args: object) -> None:
        counts[event] += 1

    client.on("*", on_any)
    auth = {"role": TEACHER_HUB, "org_id": org_id, "user_id": HUB_USER_ID, "lesson_id": 1}
    await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps(counts), flush=True)
    finally:
        await client.disconnect()
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "mixpanel":
        return _mixpanel(argv[1], float(argv[2]))
    if argv[0] == "hub":
        return asyncio.run(_hub(argv[1], int(argv[2])))
    raise SystemExit(f"unknown endpoint {argv[0]!r}")


@contextlib.contextmanager
def _child(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``python -m bench._endpoint ARGS``; yield it and its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._endpoint", *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().strip()
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


@contextlib.contextmanager
def endpoint_process(mode: str, delay: float) -> Iterator[str]:
    """Start a Mixpanel endpoint process answering in ``mode``; yield its events URL."""
    with _child("mixpanel", mode, str(delay)) as (_proc, url):
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the endpoint process did not start (said {url!r})")
        yield url


class Hub:
    """The parent's handle on a hub process: what the hub client has received."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc

    def counts(self) -> dict[str, int]:
        """How many of each event the hub has received so far (blocking: use a thread
        from an event loop, whose server must keep sending meanwhile)."""
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write("?\n")
        self._proc.stdin.flush()
        counts: dict[str, int] = json.loads(self._proc.stdout.readline())
        return counts

    def wait_for(self, event: str, count: int, timeout: float = 10.0) -> dict[str, int]:
        """Poll until the hub has received ``count`` ``event`` s; its counts then."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if counts.get(event, 0) >= count or time.monotonic() > deadline:
                return counts
            time.sleep(0.005)


@contextlib.contextmanager
def hub_process(url: str, org_id: int) -> Iterator[Hub]:
    """Connect a hub client of ``org_id`` to the server at ``url``, in its own process."""
    with _child("hub", url, str(org_id)) as (proc, said):
        if said != "ready":
            raise RuntimeError(f"the hub process did not connect (said {said!r})")
        yield Hub(proc)


@contextlib.asynccontextmanager
async def async_hub_process(url: str, org_id: int) -> AsyncIterator[Hub]:
    """:func:`hub_process` for a server on the running event loop, which must keep
    serving while the hub connects and leaves (so the waiting happens in a thread)."""
    manager = hub_process(url, org_id)
    hub = await asyncio.to_thread(manager.__enter__)
    try:
        yield hub
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
