"""The presence feed's docs: docs/reference/feed.md's field table is generated from
FEED_FIELDS, its shard examples are right, the how-to's worker works, and the Node.js
consumer (docs/_examples/feed_consumer.mjs) reads what presence_kit writes, for real:
``npm install redis@4`` and ``node`` against our own redis-server (skipped without
node and npm, unless CI=true)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest

from presence_kit import PresenceKit, Settings
from presence_kit.feed import FEED_FIELDS, PresenceFeed, feed_shard
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference" / "feed.md"
HOWTO = ROOT / "docs" / "howto" / "feed.md"
NODE_EXAMPLE = ROOT / "docs" / "_examples" / "feed_consumer.mjs"
BEGIN, END = "<!-- generated: FEED_FIELDS -->", "<!-- end of FEED_FIELDS -->"
QUIET = Settings(feed=True, heartbeat_interval=30, node_timeout=60, reconcile_interval=30)
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
PUPIL = {"role": "ParticipantWeb", "org_id": 1, "user_id": "p-42", "lesson_id": 5, "room_id": 9}


def field_table() -> list[str]:
    """The reference's field table, built from FEED_FIELDS."""
    rows = ["| field | meaning |", "| --- | --- |"]
    for name, meaning in FEED_FIELDS.items():
        rows.append(f"| `{name}` | {meaning.replace('|', chr(92) + '|')} |")
    return rows


def test_the_field_table_is_generated_from_feed_fields() -> None:
    page = REFERENCE.read_text("utf-8")
    assert page.count(BEGIN) == 1 and page.count(END) == 1
    between = page.split(BEGIN)[1].split(END)[0].strip("\n").splitlines()
    assert between == field_table(), "regenerate with tests/test_feed_docs.py:field_table()"


def test_the_shard_examples_are_right() -> None:
    page = REFERENCE.read_text("utf-8")
    table = page.split("<!-- shard examples: checked by tests/test_feed_docs.py -->")[1]
    rows = re.findall(
        r"^\| `(\"?)([^`\"]+)\"?` \| `([^`]+)` \| (\d+) \(`(0x[0-9a-f]+)`\) \| (\d+) \|$",
        table,
        re.MULTILINE,
    )
    assert len(rows) == 4
    for quoted, value, text, crc, crc_hex, shard in rows:
        org_id: int | str = value if quoted else int(value)
        assert str(org_id) == text
        assert zlib.crc32(text.encode()) == int(crc) == int(crc_hex, 16)
        assert feed_shard(org_id, 4) == int(shard), org_id


def _marked_block(page: Path, marker: str) -> str:
    text = page.read_text("utf-8")
    found = re.search(rf"<!-- feed-docs: {marker} -->\n```python\n(.*?)\n```", text, re.DOTALL)
    assert found, f"{page}: no {marker} block"
    return found.group(1)


def _write_entries(server: RedisServer) -> None:
    kit = PresenceKit(
        store=RedisStore(server.client()), sockets=RecordingSockets(), settings=QUIET
    )
    try:
        kit.handle_connect("t1", TEACHER)
        kit.handle_connect("p1", PUPIL)
        kit.handle_update("p1", {**PUPIL, "lesson_id": 6})
        kit.handle_disconnect("t1", TEACHER, reason="transport close")
    finally:
        kit.close()


def test_the_howto_worker_applies_the_feed_once() -> None:
    module = types.ModuleType("docs_feed_worker")  # (a dataclass needs its module)
    sys.modules[module.__name__] = module
    try:
        exec(compile(_marked_block(HOWTO, "sync"), str(HOWTO), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    namespace = module.__dict__
    compile(_marked_block(HOWTO, "async"), str(HOWTO), "exec")
    with RedisServer() as server:
        _write_entries(server)
        feed = PresenceFeed(
            server.client(), settings=namespace["SETTINGS"], group="attendance", consumer="w1"
        )
        db = namespace["Attendance"]()  # type: ignore[operator]
        process_batch = namespace["process_batch"]
        total = 0
        while batch := process_batch(feed, db):  # type: ignore[operator]
            total += batch
        assert total == 6  # join, online, join, update, leave, offline
        assert set(db.connections) == {"p1"} and db.online == set()
        assert db.versions == {(1, 7, "TeacherAPP"): 2}
        assert feed.lag() == 0
        # a duplicate (a Redis Cluster's at-least-once, or a redelivery) changes nothing
        again = PresenceFeed(server.client(), settings=QUIET, group="again", consumer="w1")
        entries = again.read(count=100, block=None)
        assert not any(namespace["is_new"](entry, db) for entry in entries)  # type: ignore[operator]


def _node_or_skip() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed to run the docs' Node.js feed consumer"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(f"{message} (required when CI=true)")
    return node, npm


def test_the_nodejs_consumer_reads_the_feed(tmp_path: Path) -> None:
    node, npm = _node_or_skip()
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "redis@4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / NODE_EXAMPLE.name
    shutil.copyfile(NODE_EXAMPLE, script)
    with RedisServer() as server:
        _write_entries(server)
        stream = PresenceFeed(server.client(), settings=QUIET, group="g", consumer="c").streams[0]
        assert stream == "presence:{presence:feed:0}"
        expected = [(e.id, e.kind, e.sid, e.version) for e in _all(server)]
        done = subprocess.run(
            [node, str(script), server.url, stream, "--drain"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        got = []
        for line in lines:
            entry_id, kind, *pairs = line.split(" ", 7)
            fields = dict(pair.split("=", 1) for pair in pairs[:5])
            got.append((entry_id, kind, fields["sid"], int(fields["version"] or 0) or None))
        assert got == expected
        assert "org=1 user=p-42 role=ParticipantWeb sid=p1" in lines[2]
        assert lines[-1].endswith("reason=transport close")
        groups = {g["name"].decode(): g for g in server.client().xinfo_groups(stream)}
        assert groups["node-attendance"]["pending"] == 0  # acknowledged after printing
        assert groups["node-attendance"]["entries-read"] == len(expected)


def _all(server: RedisServer) -> list:  # type: ignore[type-arg]
    feed = PresenceFeed(server.client(), settings=QUIET, group="python", consumer="c")
    return feed.read(count=100, block=None)
