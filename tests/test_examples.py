"""The servers in ``examples/`` run as an integrator would run them, and do the spec's flows.

Each example is started as a subprocess on a free port and driven by real
``socketio.AsyncClient`` s over the websocket transport: a hub hears a teacher's
``teacher_connect`` and ``teacher_disconnect``, a participant connects and disconnects
(its Mixpanel ``disconnect`` reaches a local stand-in for Mixpanel), and an invalid
session is refused. Some runs use a real ``redis-server`` (``REDIS_URL``), and then the
alive key is checked too. At the end the server gets SIGTERM and must exit 0 after
closing the kit (exit status 0, or SIGTERM's for uvicorn, which re-raises the signal
after its graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import socketio

from tests.support.mixpanel_endpoint import MixpanelEndpoint
from tests.support.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOKEN = "example-token"
STARTUP_TIMEOUT = 15.0
EVENT_TIMEOUT = 5.0

HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 1, "lesson_id": 3}
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 1,
    "user_id": 42,
    "lesson_id": 3,
    "room_id": "room-9",
}
INVALID = [
    {"role": "TeacherAPP", "org_id": "1_user_2", "user_id": 7, "lesson_id": 3},
    {"role": "ParticipantWeb", "org_id": 1, "user_id": 42, "lesson_id": 3},  # no room_id
    {"role": "Nobody", "org_id": 1, "user_id": 7, "lesson_id": 3},
    None,
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningExample:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_until_serving(example: RunningExample) -> None:
    probe = f"{example.url}/socket.io/?EIO=4&transport=polling"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if example.process.poll() is not None:
            pytest.fail(
                f"the example exited with {example.process.returncode}:\n{example.output()}"
            )
        try:
            with urllib.request.urlopen(probe, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"the example did not serve within {STARTUP_TIMEOUT}s:\n{example.output()}"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def running_example(script: str, env: dict[str, str], tmp_path: Path) -> Iterator[RunningExample]:
    """Run ``examples/<script>`` on a free port; SIGTERM it at the end (SIGKILL if stuck)."""
    port = _free_port()
    log = tmp_path / f"{script}.log"
    full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MIXPANEL_TOKEN")}
    full_env.update(env, PYTHONUNBUFFERED="1", PORT=str(port))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script)],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    example = RunningExample(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        _wait_until_serving(example)
        yield example
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the example ignored SIGTERM for 10s:\n{example.output()}")
        output = example.output()
        # 0, or killed by SIGTERM: uvicorn re-raises the signal once it has shut down.
        assert process.returncode in (0, -signal.SIGTERM), output
        assert "presence_kit closed" in output, output
        assert "Traceback" not in output, output
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class Client:
    """A ``socketio.AsyncClient`` that queues every event it hears."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.refusals: list[Any] = []

        async def heard(event: str, data: Any) -> None:
            await self.events.put((event, data))

        async def connect_error(data: Any) -> None:
            self.refusals.append(data)

        self.sio.on("*", heard)
        self.sio.on("connect_error", connect_error)

    async def connect(self, url: str, auth: Any, wait_timeout: float = 5) -> None:
        await self.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=wait_timeout)

    async def next_event(self, name: str) -> Any:
        """The data of the next ``name`` event (other events are skipped)."""

        async def find() -> Any:
            while True:
                event, data = await self.events.get()
                if event == name:
                    return data

        return await asyncio.wait_for(find(), EVENT_TIMEOUT)


async def _drive(example: RunningExample, store: redis.Redis | None) -> None:
    hub, teacher, participant = Client(), Client(), Client()
    await hub.connect(example.url, HUB)
    try:
        await teacher.connect(example.url, TEACHER)
        assert await hub.next_event("teacher_connect") == {"user_id": 7}
        if store is not None:
            assert store.hgetall("alive:org_1_user_7")["state"] == "connect"
            assert store.ttl("alive:org_1_user_7") == -1

        await teacher.sio.disconnect()
        assert await hub.next_event("teacher_disconnect") == {"user_id": 7}
        if store is not None:
            assert store.hgetall("alive:org_1_user_7")["state"] == "disconnect"
            assert 3590 <= store.ttl("alive:org_1_user_7") <= 3600

        await participant.connect(example.url, PARTICIPANT)
        sid = participant.sio.get_sid()
        user_keys = "presence:{alive:org_1_user_42}"
        if store is not None:  # the record keeps the room_id until the disconnect
            record = store.hget(f"{user_keys}:conns:ParticipantWeb", f"c:{sid}")
            assert record is not None and "room-9" in record
        await participant.sio.disconnect()
        if store is not None:
            await _eventually(lambda: store.exists(f"{user_keys}:gone:{sid}") == 1)

        for auth in INVALID:
            refused = Client()
            with pytest.raises(socketio.exceptions.ConnectionError):
                # An older python-socketio client (5.13) waits out wait_timeout even when
                # refused: a shorter one keeps the floors' run short.
                await refused.connect(example.url, auth, wait_timeout=2)
            assert refused.refusals, auth
            assert "invalid session" in str(refused.refusals[-1]), refused.refusals
    finally:
        await hub.sio.disconnect()


async def _eventually(predicate: Any) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {EVENT_TIMEOUT}s"
        await asyncio.sleep(0.02)


def _check_mixpanel_event(endpoint: MixpanelEndpoint) -> None:
    (event,) = endpoint.wait_for(1)
    assert event["event"] == "disconnect"
    properties = event["properties"]
    assert properties["token"] == TOKEN
    assert properties["distinct_id"] == "42"
    assert (properties["room_id"], properties["lesson_id"], properties["org_id"]) == (
        "room-9",
        3,
        1,
    )
    assert isinstance(properties["reason"], str) and properties["reason"]
    assert len(properties["$insert_id"]) == 32


SCRIPTS = [
    "aiohttp_server.py",
    "asgi_uvicorn_server.py",
    "fastapi_server.py",
    "flask_socketio_server.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
async def test_example_in_memory(
    script: str, tmp_path: Path, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    env = {"MIXPANEL_TOKEN": TOKEN, "MIXPANEL_EVENTS_URL": mixpanel_endpoint.url}
    with running_example(script, env, tmp_path) as example:
        await _drive(example, store=None)
        await asyncio.to_thread(_check_mixpanel_event, mixpanel_endpoint)


@pytest.mark.parametrize("script", ["aiohttp_server.py", "flask_socketio_server.py"])
async def test_example_on_redis(script: str, tmp_path: Path, redis_server: RedisServer) -> None:
    with (
        running_example(script, {"REDIS_URL": redis_server.url}, tmp_path) as example,
        redis.Redis.from_url(redis_server.url, decode_responses=True) as store,
    ):
        await _drive(example, store=store)


def test_examples_are_all_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS)


# --- the Flask quickstart in-process: a refused session leaves nothing behind ----------


def _load_flask_example(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Any:
    """Import ``examples/flask_socketio_server.py`` as a module, on ``redis_url``."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("MIXPANEL_TOKEN", raising=False)
    spec = importlib.util.spec_from_file_location(
        "flask_socketio_example", EXAMPLES / "flask_socketio_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_flask_quickstart(redis_url: str) -> dict[str, Any]:
    """Run the README's Flask quickstart block, on ``redis_url``; returns its namespace."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart: Flask-SocketIO", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README has no Flask quickstart block"
    code = found.group(1)
    # Two test-only substitutions: the test's redis-server instead of localhost:6379, and
    # threading pinned (with eventlet installed, SocketIO(app) would pick eventlet, which
    # needs a monkey-patched process; tests/test_server_modes.py runs that one).
    for snippet, replacement in (
        ("redis.Redis()", "redis.Redis.from_url(REDIS_URL)"),
        ("SocketIO(app)", 'SocketIO(app, async_mode="threading")'),
    ):
        assert code.count(snippet) == 1, snippet
        code = code.replace(snippet, replacement)

    def authenticate(auth: Any) -> Any:  # the server's own auth; the test trusts the client
        return auth

    namespace: dict[str, Any] = {
        "__name__": "readme_flask_quickstart",
        "REDIS_URL": redis_url,
        "authenticate": authenticate,
    }
    exec(compile(code, "README.md:flask-quickstart", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("source", ["readme", "example"])
def test_flask_quickstart_refuses_an_invalid_session_and_leaves_nothing_behind(
    source: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "readme":
        app: Any = _readme_flask_quickstart(redis_server.url)
    else:
        app = vars(_load_flask_example(monkeypatch, redis_server.url))
    flask_app, socketio_app, kit, sessions = (
        app["app"],
        app["socketio_app"],
        app["kit"],
        app["sessions"],
    )
    raw = redis_server.client()
    try:
        for auth in INVALID[:3]:  # the README's authenticate() returns what it was given
            client = socketio_app.test_client(flask_app, auth=auth)
            assert not client.is_connected(), auth
            assert sessions == {}, auth
            assert raw.dbsize() == 0, auth  # nothing written: no key, not even a heartbeat

        # The disconnect handler copes with a sid it has no session for.
        with flask_app.test_request_context():
            flask_request = app["request"]
            flask_request.sid = "never-connected"
            app["on_disconnect"]("client disconnect")
        assert sessions == {} and raw.dbsize() == 0

        # A valid session still works, and its entry goes with its disconnect.
        teacher = socketio_app.test_client(flask_app, auth=dict(TEACHER))
        assert teacher.is_connected()
        assert len(sessions) == 1
        assert raw.hget("alive:org_1_user_7", "state") == b"connect"
        teacher.disconnect()
        assert sessions == {}
        assert raw.hget("alive:org_1_user_7", "state") == b"disconnect"
    finally:
        kit.close()
        raw.close()
        client_of_example = app.get("redis_client")
        if client_of_example is not None:
            client_of_example.close()
