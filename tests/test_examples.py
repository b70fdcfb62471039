"""The servers in ``examples/`` run as an integrator would run them, and do the spec's flows.

Each example is started as a subprocess on a free port and driven by real
``socketio.AsyncClient`` s over the websocket transport: a hub hears a teacher's
``teacher_connect`` and ``teacher_disconnect``, a participant connects and disconnects
(its Mixpanel ``disconnect`` reaches a local stand-in for Mixpanel), and an invalid
session is refused. Some runs use a real ``redis-server`` (``REDIS_URL``), and then the
alive key is checked too. At the end the server gets SIGTERM and must exit 0 after
closing the kit (exit status 0, or SIGTERM's for uvicorn, which re-raises the signal
after its graceful shutdown).

The quickstarts (``examples/quickstart_*.py``, verbatim in README.md and
docs/quickstart.md: tests/test_docs.py keeps them equal) run the same way, on a real
``redis-server`` only (they default to ``localhost:6379``, which the tests never touch),
and are stopped with Ctrl+C's SIGINT, as their readers are told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
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


# Runs a quickstart with mixpanel.Consumer's default endpoint moved to the test's
# stand-in (TEST_MIXPANEL_EVENTS_URL): a quickstart names no endpoint, only a token.
_LOCAL_MIXPANEL = """\
import os, runpy, sys
import mixpanel
_init = mixpanel.Consumer.__init__
def _init_local(self, events_url=None, *args, **kwargs):
    _init(self, events_url or os.environ["TEST_MIXPANEL_EVENTS_URL"], *args, **kwargs)
mixpanel.Consumer.__init__ = _init_local
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@contextlib.contextmanager
def running_example(
    script: str,
    env: dict[str, str],
    tmp_path: Path,
    *,
    stop: signal.Signals = signal.SIGTERM,
    closed_line: bool = True,
    local_mixpanel: bool = False,
) -> Iterator[RunningExample]:
    """Run ``examples/<script>`` on a free port; ``stop`` it at the end (SIGKILL if stuck).

    ``closed_line``: the script prints ``presence_kit closed`` once it closed the kit.
    ``local_mixpanel``: run it with Mixpanel's default endpoint at
    ``TEST_MIXPANEL_EVENTS_URL`` (see ``_LOCAL_MIXPANEL``)."""
    port = _free_port()
    log = tmp_path / f"{script}.log"
    full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MIXPANEL_TOKEN")}
    full_env.update(env, PYTHONUNBUFFERED="1", PORT=str(port))
    command = [sys.executable, str(EXAMPLES / script)]
    if local_mixpanel:
        command[1:1] = ["-c", _LOCAL_MIXPANEL]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
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
        process.send_signal(stop)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the example ignored {stop.name} for 10s:\n{example.output()}")
        output = example.output()
        # 0, or killed by SIGTERM: uvicorn re-raises the signal once it has shut down.
        assert process.returncode in (0, -signal.SIGTERM), output
        if closed_line:
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


QUICKSTARTS = ["quickstart_asyncio.py", "quickstart_flask.py"]


def _handed_over(store: redis.Redis) -> bool:
    """Every node incarnation's heartbeat is stamped ahead of the Redis clock: what a
    kit's close (``aclose``) does to hand its connections over to the sweepers."""
    seconds, micros = store.time()
    now_ms = seconds * 1000 + micros // 1000
    beats = store.zrange("presence:{presence:nodes}:live", 0, -1, withscores=True)
    return bool(beats) and all(score > now_ms for _member, score in beats)


@pytest.mark.parametrize("script", QUICKSTARTS)
async def test_quickstart_on_redis(
    script: str, tmp_path: Path, redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "MIXPANEL_TOKEN": TOKEN,
        "TEST_MIXPANEL_EVENTS_URL": mixpanel_endpoint.url,
    }
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as store:
        with running_example(
            script, env, tmp_path, stop=signal.SIGINT, closed_line=False, local_mixpanel=True
        ) as example:
            await _drive(example, store=store)
            await asyncio.to_thread(_check_mixpanel_event, mixpanel_endpoint)
        assert _handed_over(store), example.output()


def test_examples_are_all_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS + QUICKSTARTS)


# --- the Flask servers in-process: a refused session leaves nothing behind ------------


def _load_flask_app(script: str, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Any:
    """Import ``examples/<script>`` as a module, on ``redis_url`` and without analytics."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("MIXPANEL_TOKEN", raising=False)
    spec = importlib.util.spec_from_file_location(
        f"flask_app_{script.removesuffix('.py')}", EXAMPLES / script
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["quickstart_flask.py", "flask_socketio_server.py"])
def test_flask_app_refuses_an_invalid_session_and_leaves_nothing_behind(
    script: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = vars(_load_flask_app(script, monkeypatch, redis_server.url))
    flask_app, socketio_app, kit, sessions = (
        app["app"],
        app["socketio_app"],
        app["kit"],
        app["sessions"],
    )
    raw = redis_server.client()
    try:
        for auth in INVALID:
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
