"""The library needs only its own keys and a short list of commands: the ACL rule the
docs give is enough for every flow, and nothing more is needed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from presence_kit import OnlineCount, PresenceKit, Settings
from presence_kit._cli import main
from presence_kit.feed import PresenceFeed
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer, free_port

# The rule documented in docs/reference/redis-acl.md (kept in sync by this test).
ACL_RULE = (
    "on >presence-secret resetkeys ~alive:* ~presence:* resetchannels -@all "
    "+evalsha +eval +script|load +time +ping "
    "+exists +get +set +del +hget +hmget +hset +hdel +hexists +hlen +hvals +hgetall "
    "+hincrby +expire +pexpire +persist +zadd +zrem +zrange +zrangebyscore +zscore "
    "+xadd +rpush +lrange +ltrim +xgroup|create +xreadgroup +xautoclaim +xack "
    "+xinfo|groups +xinfo|stream +xrange"
)


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    with RedisServer(
        extra_args=["--requirepass", "admin-secret"],
        connection_kwargs={"password": "admin-secret"},
    ) as server:
        server.admin("ACL", "SETUSER", "presence", *ACL_RULE.split())
        yield server


def test_every_flow_works_with_only_the_documented_rule(acl_server: RedisServer) -> None:
    def client() -> redis.Redis:
        return redis.Redis(port=acl_server.port, username="presence", password="presence-secret")

    url = f"redis://presence:presence-secret@127.0.0.1:{acl_server.port}"
    fast = Settings(node_timeout=0.3, heartbeat_interval=0.1, leave_grace=0.2, feed=True)
    sockets = RecordingSockets()
    kit = PresenceKit(store=RedisStore(client()), sockets=sockets, settings=fast)
    other = PresenceKit(store=RedisStore(client()), sockets=RecordingSockets(), settings=fast)
    kit.heartbeat()
    teacher = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
    participant = {
        "role": "ParticipantWeb",
        "org_id": 1,
        "user_id": 8,
        "lesson_id": 3,
        "room_id": 2,
    }
    kit.handle_connect("hub", {"role": "TeacherHub", "org_id": 1, "user_id": 9, "lesson_id": 3})
    kit.handle_connect("t1", teacher)
    kit.handle_connect("p1", {**participant, "meta": {"tab": 1}})
    assert [u.user_id for u in kit.online_users(1)] == [7]
    assert kit.presence(1, 7).state == "connect"
    moved = kit.handle_update("p1", {**participant, "lesson_id": 4})
    assert moved is not None and moved.record is not None and moved.record.meta == {"tab": 1}
    assert kit.count_online(1, lesson_id=4, role="ParticipantWeb") == OnlineCount(
        users=1, connections=1
    )
    assert main(["rebuild-counts", "--redis-url", url, "--org", "1"]) == 0
    feed = PresenceFeed(client(), settings=fast, group="audit", consumer="c", claim_idle=0)
    entries = feed.read(count=50, block=None)
    assert [e.kind for e in entries][:2] == ["join", "join"] and feed.missed == 0
    assert feed.read(count=50, block=None)  # the pending ones, taken over (claim_idle 0)
    assert feed.ack(entries) == len(entries) and feed.lag() == 0
    kit.handle_disconnect("t1", teacher)  # held back by the grace
    time.sleep(0.3)
    assert kit.run_due_leaves() == 1
    kit.handle_connect("t2", teacher)
    sockets.connected.update({"hub", "p1"})  # t2's socket is gone: reconcile leaves it
    assert kit.reconcile() == 1
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        other.heartbeat()
        time.sleep(0.05)
    assert other.sweep_dead_nodes() == 2  # kit stopped heartbeating: hub and p1
    assert other.nodes()
    assert (kit.stats.store_failures, other.stats.store_failures) == (0, 0)
    # The rule grants nothing else.
    with pytest.raises(redis.exceptions.NoPermissionError):
        client().set("someone-elses-key", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client().flushall()


def test_the_docs_give_this_rule() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "reference" / "redis-acl.md"
    assert f"ACL SETUSER presence {ACL_RULE}" in page.read_text("utf-8")


def test_tls_with_the_acl_user(tmp_path: Path) -> None:
    """rediss:// with a self-signed certificate made here, as the limited user: the
    store's own deadline pool keeps the TLS settings of the client it was given."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    tls_args = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        "--requirepass", "admin-secret",
    ]  # fmt: skip
    with RedisServer(
        extra_args=tls_args, connection_kwargs={"password": "admin-secret"}
    ) as server:
        server.admin("ACL", "SETUSER", "presence", *ACL_RULE.split())
        url = f"rediss://presence:presence-secret@127.0.0.1:{tls_port}/0"
        client = redis.Redis.from_url(url, ssl_ca_certs=str(cert))
        store = RedisStore(client)
        assert isinstance(store.client, redis.Redis)
        assert store.client.connection_pool.connection_class is redis.SSLConnection
        sockets = RecordingSockets()
        kit = PresenceKit(store=store, sockets=sockets)
        teacher = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 3}
        kit.handle_connect("t1", teacher)
        kit.handle_disconnect("t1", teacher)
        assert [e for e, _d, _to in sockets.emitted] == ["teacher_connect", "teacher_disconnect"]
        assert kit.stats.store_failures == 0
        assert client.hget("alive:org_1_user_7", "state") == b"disconnect"
        kit.close()
        # A client that does not trust the certificate is refused: TLS is really on.
        untrusting = redis.Redis.from_url(url, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            untrusting.ping()
