"""The ``presence-kit`` command: the demo (on memory and on a real Redis), --version,
and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from presence_kit import PresenceKit, Settings, __version__
from presence_kit._cli import main
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer, free_port


def test_demo_on_the_embedded_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "presence in the embedded MemoryStore" in out
    assert "hub          hears 'teacher_connect' {'user_id': 7}" in out
    assert out.count("hears 'teacher_disconnect' {'user_id': 7}") == 1
    assert "'state': 'disconnect'" in out
    assert "(TTL 3600s)" in out
    assert "analytics    'disconnect' distinct_id=42" in out
    assert "'room_id': 'room-9'" in out
    assert "1 leave announced, 1 analytics event(s)" in out


def test_demo_on_a_real_redis(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--redis-url", redis_server.url]) == 0
    assert f"presence in Redis at {redis_server.url}" in capsys.readouterr().out
    raw = redis_server.client(decode_responses=True)
    assert raw.hget("alive:org_demo_user_7", "state") == "disconnect"
    # It cleans up after itself: nothing of it stays in the user's Redis for good.
    left = {key: raw.ttl(key) for key in raw.scan_iter(count=1000)}
    assert left, "the spec's alive key stays, with its offline TTL"
    assert all(ttl > 0 for ttl in left.values()), left


@pytest.mark.parametrize("url", ["not-a-url", f"redis://127.0.0.1:{free_port()}/0"])
def test_demo_with_a_bad_or_unreachable_redis_is_one_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--redis-url", url]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("presence-kit: error: cannot use Redis at")
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_version_and_help_through_the_console_entry_point() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "presence_kit", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == f"presence-kit {__version__}"
    demo_help = subprocess.run(
        [sys.executable, "-m", "presence_kit", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--redis-url" in demo_help.stdout


def _seed(redis_server: RedisServer) -> PresenceKit:
    kit = PresenceKit(
        store=RedisStore(redis_server.client()),
        sockets=RecordingSockets(),
        settings=Settings(node_id="web-1", node_timeout=0.3, heartbeat_interval=0.1),
    )
    kit.heartbeat()
    kit.handle_connect("s1", {"role": "TeacherAPP", "org_id": 5, "user_id": 7, "lesson_id": 2})
    kit.handle_connect("s2", {"role": "TeacherAPP", "org_id": 5, "user_id": 7, "lesson_id": 3})
    return kit


def test_status_nodes_and_sweep(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(redis_server)
    assert main(["status", "--redis-url", redis_server.url, "--org", "5"]) == 0
    out = capsys.readouterr().out
    assert "org 5: 1 teacher(s) online" in out
    assert "2 connection(s)  lessons: 2, 3" in out
    assert main(["nodes", "--redis-url", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "web-1/" in out
    assert "2 connection(s)" in out
    time.sleep(0.4)  # web-1 stops heartbeating: it is dead
    assert main(["sweep", "--redis-url", redis_server.url, "--node-timeout", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "announce teacher_disconnect {'user_id': 7} to org:5" in out
    assert "recovered 2 connection(s) of dead nodes" in out
    assert "pass --manager-url" in out
    assert main(["status", "--redis-url", redis_server.url, "--org", "5"]) == 0
    assert "0 teacher(s) online" in capsys.readouterr().out
    assert main(["nodes", "--redis-url", redis_server.url]) == 0
    assert "no nodes registered" in capsys.readouterr().out


def test_nodes_shows_a_node_that_shut_down_as_handed_over(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = PresenceKit(
        store=RedisStore(redis_server.client()),
        sockets=RecordingSockets(),
        settings=Settings(node_id="web-2", node_timeout=1.0, heartbeat_interval=0.2),
    )
    kit.heartbeat()
    kit.handle_connect("s1", {"role": "TeacherAPP", "org_id": 5, "user_id": 7, "lesson_id": 2})
    kit.close()  # hands its connections over: swept shutdown_grace (15 s) from now
    assert main(["nodes", "--redis-url", redis_server.url]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "web-2/" in line)
    assert "shut down, swept in" in line and "1 connection(s)" in line, line
    assert "ago" not in line


def test_sweep_delivers_through_a_client_manager(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(redis_server)
    subscriber = redis_server.client().pubsub()
    subscriber.subscribe("socketio")
    time.sleep(0.4)
    url = redis_server.url
    assert main(["sweep", "--redis-url", url, "--manager-url", url, "--node-timeout", "0.3"]) == 0
    messages = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any(b"teacher_disconnect" in m for m in messages):
        message = subscriber.get_message(timeout=0.2)
        if message and message["type"] == "message":
            messages.append(message["data"])
    assert any(b"teacher_disconnect" in m for m in messages)
    subscriber.close()


@pytest.mark.parametrize("command", ["status", "nodes", "sweep"])
def test_ops_commands_report_an_unreachable_redis_in_one_line(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    if command == "status":
        argv += ["--org", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("presence-kit: error: cannot use Redis")
    assert err.count("\n") == 1


def test_status_with_a_bad_org_id_is_one_line(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--redis-url", redis_server.url, "--org", "a b"]) == 2
    assert capsys.readouterr().err.startswith("presence-kit: error: org_id:")


def test_rebuild_counts_heals_counts_and_status_shows_them(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counts written before they were kept (a 0.2 deployment: deleted here) or damaged
    are rebuilt from the org index; ``status`` shows the counts beside the index."""
    quiet = Settings(heartbeat_interval=30, node_timeout=60, reconcile_interval=30)
    kit = PresenceKit(
        store=RedisStore(redis_server.client()), sockets=RecordingSockets(), settings=quiet
    )
    try:
        for n, org in enumerate((5, 5, 5, "six")):
            kit.handle_connect(
                f"t{n}", {"role": "TeacherAPP", "org_id": org, "user_id": n % 2, "lesson_id": 9}
            )
        kit.handle_connect(
            "p1",
            {"role": "ParticipantWeb", "org_id": 5, "user_id": 3, "lesson_id": 9, "room_id": 1},
        )
        raw = redis_server.client(decode_responses=True)
        counts = sorted(raw.scan_iter(match="presence:{presence:org:*}:count:*"))
        assert counts  # written with the index
        raw.delete(*counts)
        raw.hset("presence:{presence:org:six}:count:TeacherAPP:conns", "org", 40)
        assert main(["status", "--redis-url", redis_server.url, "--org", "5"]) == 0
        out = capsys.readouterr().out
        assert "count_online TeacherAPP      0 user(s), 0 connection(s)" in out
        assert "run presence-kit rebuild-counts --org 5" in out
        assert main(["rebuild-counts", "--redis-url", redis_server.url]) == 0
        out = capsys.readouterr().out
        assert "org 5 TeacherAPP: 2 user(s), 3 connection(s)  (rebuilt: they differed)" in out
        assert "org six TeacherAPP: 1 user(s), 1 connection(s)  (rebuilt: they differed)" in out
        assert "org 5 ParticipantWeb: 1 user(s), 1 connection(s)" in out
        assert "had differed" in out
        for org, role, expected in (
            (5, "TeacherAPP", (2, 3)),
            ("six", "TeacherAPP", (1, 1)),
            (5, "ParticipantWeb", (1, 1)),
        ):
            counted = kit.count_online(org, role=role)
            assert (counted.users, counted.connections) == expected
            assert kit.count_online(org, role=role, lesson_id=9) == counted
        # a second run finds nothing to change; one org at a time works too
        assert main(["rebuild-counts", "--redis-url", redis_server.url, "--org", "5"]) == 0
        out = capsys.readouterr().out
        assert "differed)" not in out and "0 had differed" in out
        assert main(["status", "--redis-url", redis_server.url, "--org", "5"]) == 0
        assert "rebuild-counts" not in capsys.readouterr().out
    finally:
        kit.close()


def test_feed_prints_the_entries_and_follows(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``presence-kit feed`` reads the feed's streams with plain reads (no group)."""
    settings = Settings(feed=True, heartbeat_interval=30, node_timeout=60, reconcile_interval=30)
    kit = PresenceKit(
        store=RedisStore(redis_server.client()), sockets=RecordingSockets(), settings=settings
    )
    try:
        kit.handle_connect(
            "t1", {"role": "TeacherAPP", "org_id": 5, "user_id": "u-7", "lesson_id": 9}
        )
        kit.handle_disconnect(
            "t1", {"role": "TeacherAPP", "org_id": 5, "user_id": "u-7", "lesson_id": 9}
        )
        assert main(["feed", "--redis-url", redis_server.url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[2] for line in lines] == ["join", "online", "leave", "offline"]
        assert "org=5 user=u-7 role=TeacherAPP sid=t1 lesson=9" in lines[0]
        assert "reason=unknown version=2" in lines[3]
        assert main(["feed", "--redis-url", redis_server.url, "--json", "--org", "5"]) == 0
        first = json.loads(capsys.readouterr().out.splitlines()[0])
        assert (first["kind"], first["org_id"], first["user_id"], first["room_id"]) == (
            "join",
            5,
            "u-7",
            None,
        )
        assert main(["feed", "--redis-url", redis_server.url, "--org", "6"]) == 0
        assert capsys.readouterr().out == ""
        assert main(["feed", "--redis-url", redis_server.url, "--from", "now"]) == 0
        assert capsys.readouterr().out == ""
        assert main(["feed", "--redis-url", redis_server.url, "--from", "yesterday"]) == 2
        assert "--from" in capsys.readouterr().err
        raw = redis_server.client()
        assert [
            g for s in raw.scan_iter("presence:{presence:feed:*") for g in raw.xinfo_groups(s)
        ] == []
        # --follow prints what comes later (a child process, stopped after it has)
        child = subprocess.Popen(
            [sys.executable, "-m", "presence_kit", "feed", "--redis-url", redis_server.url,
             "--from", "now", "--follow"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(1.0)
            kit.handle_connect(
                "t2", {"role": "TeacherAPP", "org_id": 5, "user_id": 8, "lesson_id": 9}
            )
            assert child.stdout is not None
            assert " join " in child.stdout.readline()
        finally:
            child.kill()
            child.wait()
    finally:
        kit.close()
