"""Tests of the test-support code that runs real Redis servers and clusters."""

from __future__ import annotations

import os
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.redis_servers import RedisClusterServers, RedisServer, free_port

NO_RETRY = Retry(NoBackoff(), 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_free_port_is_bindable_and_never_repeats() -> None:
    ports = {free_port(cluster_bus=True) for _ in range(20)}
    assert len(ports) == 20
    assert all(10000 <= p < 22767 for p in ports)


def test_server_starts_answers_and_is_cleaned_up() -> None:
    with RedisServer() as server:
        pid, tmpdir = server.pid, server.dir
        assert pid is not None
        assert server.port != 6379
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = server.client(decode_responses=True)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.set("k", "v")
        with redis.Redis.from_url(server.url) as by_url:
            assert by_url.get("k") == b"v"
        assert server.used_memory() > 0
    assert not _pid_alive(pid)
    assert not tmpdir.exists()


def test_extra_args_and_connection_kwargs() -> None:
    with RedisServer(
        extra_args=["--requirepass", "s3cret"], connection_kwargs={"password": "s3cret"}
    ) as server:
        assert server.client().ping()
        with pytest.raises(redis.AuthenticationError):
            server.client(password=None, retry=NO_RETRY).ping()
        server.flush()
        server.stop()  # SHUTDOWN goes through the authenticated admin connection
        assert not server.is_running


def test_start_failure_reports_the_log() -> None:
    with pytest.raises(RuntimeError, match="exited with"):
        RedisServer(extra_args=["--no-such-option", "1"])


def test_kill_and_restart_on_the_same_port_loses_data(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    port, old_pid = server.port, server.pid
    server.client().set("k", "v")
    server.kill()
    assert not server.is_running
    with pytest.raises(redis.ConnectionError):
        server.client(retry=NO_RETRY).ping()
    server.restart()
    assert server.port == port
    assert server.pid != old_pid
    assert server.client().get("k") is None


def test_stop_then_restart(fresh_redis_server: RedisServer) -> None:
    fresh_redis_server.stop()
    assert not fresh_redis_server.is_running
    fresh_redis_server.restart()
    assert fresh_redis_server.client().ping()


def test_pause_times_out_and_resume_recovers(fresh_redis_server: RedisServer) -> None:
    client = fresh_redis_server.client(socket_timeout=0.2, retry=NO_RETRY)
    assert client.ping()
    fresh_redis_server.pause()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 1.0
    fresh_redis_server.resume()
    assert client.ping()


def test_session_server_is_flushed_per_test_1(redis_server: RedisServer, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("leftover", "1")
    finally:
        client.close()


def test_session_server_is_flushed_per_test_2(redis_server: RedisServer) -> None:
    assert redis_server.client().dbsize() == 0
    redis_server.client().set("leftover", "2")
    redis_server.kill()  # the next test using it gets it back


def test_session_server_is_revived_and_flushed(redis_server: RedisServer) -> None:
    assert redis_server.client().dbsize() == 0


def test_flush_empties_the_script_cache(fresh_redis_server: RedisServer) -> None:
    client = fresh_redis_server.client()
    sha = client.script_load("return 1")
    fresh_redis_server.flush()
    assert client.script_exists(sha) == [False]


async def test_async_client(redis_server: RedisServer) -> None:
    client = redis_server.async_client(decode_responses=True)
    try:
        await client.set("k", "v")
        assert await client.get("k") == "v"
    finally:
        await client.aclose()


# -- cluster ----------------------------------------------------------------------------

KEYS = [f"key:{i}" for i in range(50)]


@pytest.mark.cluster
def test_cluster_sync_client_across_slots(redis_cluster: RedisClusterServers) -> None:
    client = redis_cluster.client(decode_responses=True)
    for key in KEYS:
        client.set(key, key)
    assert [client.get(key) for key in KEYS] == KEYS
    masters = {redis_cluster.master_for_key(key).port for key in KEYS}
    assert len(masters) == 3  # the keys really are spread over the 3 masters
    assert {s.port for s in redis_cluster.masters()} == masters


@pytest.mark.cluster
async def test_cluster_async_client_across_slots(redis_cluster: RedisClusterServers) -> None:
    client = redis_cluster.async_client(decode_responses=True)
    try:
        for key in KEYS:
            await client.set(key, key)
        assert [await client.get(key) for key in KEYS] == KEYS
    finally:
        await client.aclose()


@pytest.mark.cluster
def test_cluster_is_flushed_per_test(redis_cluster: RedisClusterServers) -> None:
    assert redis_cluster.client().dbsize() == 0  # summed over the masters
    redis_cluster.client().set("leftover", "1")


@pytest.mark.cluster
def test_cluster_hash_tag_lands_on_master_for_key(redis_cluster: RedisClusterServers) -> None:
    client = redis_cluster.client()
    keys = ["{room:42}:members", "{room:42}:meta", "{room:42}"]
    for key in keys:
        client.set(key, "x")
    owner = redis_cluster.master_for_key("{room:42}")
    direct = owner.client()
    assert all(direct.get(key) == b"x" for key in keys)  # stored on that node itself
    assert redis_cluster.keyslot("{room:42}:meta") == redis_cluster.keyslot("room:42")


@pytest.mark.cluster
@pytest.mark.slow
def test_failover_promotes_a_replica(redis_cluster_with_replicas: RedisClusterServers) -> None:
    cluster = redis_cluster_with_replicas
    key = "{failover}:k"
    client = cluster.client(decode_responses=True)
    assert client.set(key, "before")
    old_master = cluster.master_for_key(key)
    replicas = cluster.replicas_of(old_master)
    assert len(replicas) == 1
    direct = old_master.client(single_connection_client=True)
    direct.set(key, "replicated")
    assert direct.wait(1, 2000) == 1  # the replica has it
    new_master = cluster.kill_master_and_wait_failover(old_master, timeout=30)
    assert new_master is replicas[0]
    assert cluster.master_for_key(key) is new_master
    assert not old_master.is_running
    assert client.get(key) == "replicated"  # the client follows the new topology
    client.set(key, "after")
    assert new_master.client(decode_responses=True).get(key) == "after"


@pytest.mark.cluster
def test_cluster_is_healed_after_failover(
    redis_cluster_with_replicas: RedisClusterServers,
) -> None:
    cluster = redis_cluster_with_replicas
    assert all(s.is_running for s in cluster.servers)
    assert len(cluster.masters()) == 3
    assert all(len(cluster.replicas_of(m)) == 1 for m in cluster.masters())
    client = cluster.client()
    client.set("{failover}:k", "v")
    assert client.get("{failover}:k") == b"v"
