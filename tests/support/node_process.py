"""Run :mod:`tests.support.node_server` as a real subprocess (a presence_kit server node)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "NodeProcess", "nodes"]

ROOT = Path(__file__).resolve().parent.parent.parent


class NodeProcess:
    """A node subprocess; returns once it printed ``READY <port>``.

    ``env`` adds node_server settings (``HEARTBEAT_INTERVAL``, ``INCLUDE_VERSION``, ...).
    """

    def __init__(
        self,
        redis_url: str,
        mixpanel_url: str | None,
        node_id: str,
        *,
        node_timeout: float = 1.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        full_env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "NODE_ID": node_id,
            "NODE_TIMEOUT": str(node_timeout),
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        if mixpanel_url is not None:
            full_env["MIXPANEL_URL"] = mixpanel_url
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.node_server"],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"node {node_id} did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def state(self, timeout: float = 2.0) -> dict[str, Any]:
        """The node's ``GET /_test/state`` (blocking: call it in a thread from async code)."""
        with urllib.request.urlopen(f"{self.url}/_test/state", timeout=timeout) as reply:
            state: dict[str, Any] = json.load(reply)
        return state

    def kill(self) -> None:
        """SIGKILL: no handler, no hand-over."""
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def nodes(
    redis_url: str, mixpanel_url: str | None, count: int, *, node_timeout: float = 1.0
) -> Iterator[list[NodeProcess]]:
    """``count`` nodes ``node-1``... sharing ``redis_url``; stopped on exit."""
    started: list[NodeProcess] = []
    try:
        for n in range(1, count + 1):
            started.append(
                NodeProcess(redis_url, mixpanel_url, f"node-{n}", node_timeout=node_timeout)
            )
        yield started
    finally:
        for node in started:
            node.stop()
