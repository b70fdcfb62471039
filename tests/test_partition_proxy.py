"""The partition proxy against a real redis-server: what each hold lets through, what
each heal delivers or resets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.partition_proxy import PartitionProxy
from tests.support.redis_servers import RedisServer
from tests.support.sio_harness import eventually_sync


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[PartitionProxy]:
    with PartitionProxy(redis_server.port) as p:
        yield p


def raw_connection(proxy: PartitionProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(0.3)
    return sock


def client_names(direct: redis.Redis) -> set[str]:
    return {str(c["name"]) for c in direct.client_list()}


def recv_or_none(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(1024)
    except TimeoutError:
        return None


def test_forwards_when_nothing_is_held(proxy: PartitionProxy) -> None:
    client = redis.Redis.from_url(proxy.url)
    assert client.ping() is True
    client.close()


def test_replies_held_the_command_runs_and_flush_delivers_its_reply(
    proxy: PartitionProxy, redis_server: RedisServer
) -> None:
    sock = raw_connection(proxy)
    sock.sendall(b"PING\r\n")
    assert sock.recv(64) == b"+PONG\r\n"
    proxy.hold("replies")
    sock.sendall(b"SET k v\r\n")
    direct = redis_server.client()
    eventually_sync(lambda: direct.get("k") == b"v")  # the command ran
    assert recv_or_none(sock) is None  # its reply is held
    proxy.heal("flush")
    sock.settimeout(2)
    assert sock.recv(64) == b"+OK\r\n"
    sock.sendall(b"GET k\r\n")
    assert sock.recv(64) == b"$1\r\nv\r\n"
    sock.close()


def test_both_held_nothing_runs_and_flush_delivers_in_order(
    proxy: PartitionProxy, redis_server: RedisServer
) -> None:
    sock = raw_connection(proxy)
    sock.sendall(b"PING\r\n")
    assert sock.recv(64) == b"+PONG\r\n"
    proxy.hold("both")
    for _ in range(3):
        sock.sendall(b"INCR c\r\n")
    time.sleep(0.2)
    assert redis_server.client().get("c") is None
    assert recv_or_none(sock) is None
    proxy.heal("flush")
    sock.settimeout(2)
    got = b""
    while len(got) < len(b":1\r\n:2\r\n:3\r\n"):
        got += sock.recv(64)
    assert got == b":1\r\n:2\r\n:3\r\n"
    sock.close()


def test_reset_breaks_the_client_connection_and_discards_what_was_held(
    proxy: PartitionProxy, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(proxy.url, client_name="pooled")
    assert client.ping() is True
    sock = raw_connection(proxy)
    sock.sendall(b"CLIENT SETNAME raw\r\n")
    assert sock.recv(64) == b"+OK\r\n"
    proxy.hold("both")
    sock.sendall(b"SET held 1\r\n")
    proxy.heal("reset")
    sock.settimeout(2)
    with pytest.raises(ConnectionResetError):
        sock.recv(64)
    sock.close()
    direct = redis_server.client()
    assert direct.get("held") is None
    # Redis saw both connections go...
    eventually_sync(lambda: not {"raw", "pooled"} & client_names(direct))
    # ...and redis-py reconnects through the proxy, forwarded normally again.
    assert client.ping() is True
    client.close()


def test_a_new_connection_hangs_during_a_partition_until_the_heal(
    proxy: PartitionProxy,
) -> None:
    proxy.hold("both")
    sock = raw_connection(proxy)  # accepted by the proxy's listener...
    sock.sendall(b"PING\r\n")
    assert recv_or_none(sock) is None  # ...but not forwarded
    proxy.heal("flush")
    sock.settimeout(2)
    assert sock.recv(64) == b"+PONG\r\n"
    sock.close()


def test_a_hanging_connection_is_reset_by_a_reset_heal(proxy: PartitionProxy) -> None:
    proxy.hold("both")
    sock = raw_connection(proxy)
    sock.sendall(b"PING\r\n")
    eventually_sync(lambda: proxy.connections == 1)  # accepted (not just in the backlog)
    proxy.heal("reset")
    sock.settimeout(2)
    with pytest.raises(ConnectionResetError):
        sock.recv(64)
    sock.close()
    fresh = raw_connection(proxy)
    fresh.sendall(b"PING\r\n")
    fresh.settimeout(2)
    assert fresh.recv(64) == b"+PONG\r\n"
    fresh.close()


def test_a_client_closing_during_a_partition_is_closed_upstream_after_the_flush(
    proxy: PartitionProxy, redis_server: RedisServer
) -> None:
    sock = raw_connection(proxy)
    sock.sendall(b"CLIENT SETNAME leaving\r\nINCR before\r\n")
    sock.settimeout(2)
    assert sock.recv(64) == b"+OK\r\n:1\r\n"
    proxy.hold("both")
    sock.sendall(b"INCR after\r\n")
    sock.close()
    direct = redis_server.client()
    time.sleep(0.2)
    assert "leaving" in client_names(direct)
    proxy.heal("flush")
    eventually_sync(lambda: direct.get("after") == b"1")  # sent before the close: it runs
    eventually_sync(lambda: "leaving" not in client_names(direct))
    eventually_sync(lambda: proxy.connections == 0)
