"""Flask-SocketIO in every server mode the docs name: threading, eventlet and gevent.

Each mode runs ``tests/support/flask_mode_server.py`` in a subprocess of its own (under
eventlet and gevent it monkey-patches the standard library before anything else is
imported), built as the README's Flask quickstart builds its kit, on a real
redis-server of the test fixtures. Real ``socketio.Client`` s connect over loopback.

For each mode:

* presence: a hub hears ``teacher_connect`` and ``teacher_disconnect`` for a TeacherAPP
  client, and the alive key goes ``connect`` (no TTL) then ``disconnect`` (1 h TTL);
* an invalid session is refused and writes nothing (threading and eventlet; see the
  test for gevent's upstream delay);
* the background loop runs through the server's concurrency model: the node's
  heartbeat appears in ``presence:{presence:nodes}:live`` and keeps moving, and
  ``presence-kit nodes`` lists the node with its connections;
* ``kit.close()`` returns (within a generous bound) with the handover done: the node's
  heartbeat score is moved to "dead in shutdown_grace" and stays there (the loop
  stopped), and the teacher still connected is not announced gone;
* nothing on the server's stderr is a traceback.

Every wait polls until a condition holds or a deadline of several seconds passes; the
subprocess is always killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import socketio

from tests.support.redis_servers import RedisServer, free_port
from tests.support.sio_harness import RecordingClient

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "support" / "flask_mode_server.py"
STARTUP_TIMEOUT = 30.0  # importing eventlet/gevent and patching is slow on a busy machine
WAIT = 10.0
LIVE = "presence:{presence:nodes}:live"
SHUTDOWN_GRACE_MS = 60_000  # the server's Settings(shutdown_grace=60.0)
NODE_TIMEOUT_MS = 10_000  # the default Settings.node_timeout

HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 1, "lesson_id": 3}
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
STAYING = {"role": "TeacherAPP", "org_id": 1, "user_id": 8, "lesson_id": 3}
INVALID = {"role": "TeacherAPP", "org_id": "1_user_2", "user_id": 7, "lesson_id": 3}

MODES = ["threading", "eventlet", "gevent"]


def _poll(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Return ``predicate()``'s first truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


@dataclass
class ModeServer:
    mode: str
    url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def logs(self) -> str:
        return f"--- stdout\n{self.out()}--- stderr\n{self.err()}"

    def connect(self, auth: Any) -> RecordingClient:
        client = RecordingClient()
        try:
            client.client.connect(self.url, auth=auth, wait_timeout=10)
        except BaseException:
            client.client.disconnect()
            raise
        return client

    def close_kit(self) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/close", method="POST", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except OSError as exc:
            pytest.fail(f"POST /close failed ({exc}):\n{self.logs()}")
        return answer


@contextlib.contextmanager
def mode_server(mode: str, redis_url: str, tmp_path: Path) -> Iterator[ModeServer]:
    port = free_port()
    stdout, stderr = tmp_path / f"{mode}.out", tmp_path / f"{mode}.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, str(SERVER), mode, redis_url, str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    server = ModeServer(mode, f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while f"READY {port} {mode}" not in server.out():
            if process.poll() is not None:
                pytest.fail(
                    f"the {mode} server exited with {process.returncode}:\n{server.logs()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the {mode} server was not ready in time:\n{server.logs()}")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def _member(store: redis.Redis, mode: str) -> str | None:
    for member in store.zrange(LIVE, 0, -1):
        if member.startswith(f"flask-{mode}/"):
            return str(member)
    return None


def _redis_now_ms(store: redis.Redis) -> int:
    seconds, micros = store.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _keys(store: redis.Redis) -> set[str]:
    return set(store.scan_iter(count=1000))


def _nodes_listing(redis_url: str) -> str:
    listing = subprocess.run(
        [sys.executable, "-m", "presence_kit", "nodes", "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    return listing.stdout


@pytest.mark.parametrize("mode", MODES)
def test_flask_socketio_server_mode(mode: str, redis_server: RedisServer, tmp_path: Path) -> None:
    if mode != "threading" and os.environ.get("CI") != "true":
        pytest.importorskip(mode)  # the "test" extra installs both; CI requires them
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    clients: list[RecordingClient] = []
    with mode_server(mode, redis_server.url, tmp_path) as server:
        try:
            hub = server.connect(HUB)
            clients.append(hub)
            teacher = server.connect(TEACHER)
            clients.append(teacher)

            # Presence events and the spec's alive key.
            assert hub.wait_for("teacher_connect", WAIT) == ({"user_id": 7},), server.logs()
            assert store.hget("alive:org_1_user_7", "state") == "connect"
            assert store.ttl("alive:org_1_user_7") == -1
            teacher.disconnect()
            assert hub.wait_for("teacher_disconnect", WAIT) == ({"user_id": 7},), server.logs()
            assert store.hget("alive:org_1_user_7", "state") == "disconnect"
            assert 0 < store.ttl("alive:org_1_user_7") <= 3600

            # The background loop runs in the server's concurrency model: the heartbeat
            # appears, and moves again.
            member = _poll(lambda: _member(store, mode), "no heartbeat of this node")
            first = store.zscore(LIVE, member)
            _poll(lambda: store.zscore(LIVE, member) != first, "the heartbeat did not move")

            # An invalid session is refused, and nothing is written for it. Not under
            # gevent: there Flask-SocketIO's pywsgi server often hands a polling client
            # its CONNECT_ERROR only at the next ping (25 s), with or without the kit.
            if mode != "gevent":
                before = _keys(store)
                refused = RecordingClient()
                with pytest.raises(socketio.exceptions.ConnectionError):
                    refused.client.connect(server.url, auth=INVALID, wait_timeout=10)
                refused.client.disconnect()
                assert _keys(store) == before

            staying = server.connect(STAYING)
            clients.append(staying)
            assert hub.wait_for("teacher_connect", WAIT) == ({"user_id": 8},), server.logs()
            listing = _nodes_listing(redis_server.url)
            line = next((ln for ln in listing.splitlines() if ln.startswith(member)), "")
            assert "2 connection(s)" in line, listing  # the hub and the staying teacher

            # close(): bounded, and the connections are handed over.
            answer = server.close_kit()
            assert answer["closed"] is True, server.logs()
            assert answer["seconds"] < WAIT, answer
            assert "CLOSED" in server.out(), server.logs()
            handed_over = store.zscore(LIVE, member)
            assert handed_over is not None
            # "Dead in shutdown_grace": the score is now + (shutdown_grace - node_timeout).
            assert handed_over > _redis_now_ms(store) + (SHUTDOWN_GRACE_MS - NODE_TIMEOUT_MS) / 2
            # The loop stopped: no heartbeat undoes the handover (5 heartbeat intervals).
            time.sleep(1.0)
            assert store.zscore(LIVE, member) == handed_over
            # Handed over, not left: the staying teacher is still online.
            assert store.hget("alive:org_1_user_8", "state") == "connect"
            assert [args[0]["user_id"] for args in hub.received("teacher_disconnect")] == [7]
        finally:
            # Stop the server first: a disconnect handled after close() is not tested here.
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(10)
            for client in clients:
                with contextlib.suppress(Exception):
                    client.disconnect()
    store.close()
    assert "Traceback" not in server.err(), server.logs()
