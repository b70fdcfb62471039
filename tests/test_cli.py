"""The ``presence-kit`` command: the demo (on memory and on a real Redis), --version,
and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from presence_kit import __version__
from presence_kit._cli import main
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
