"""Crash recovery with real processes: three python-socketio server nodes sharing one
redis-server (and an AsyncRedisManager), real clients, a local Mixpanel endpoint.
Node 2 is killed with SIGKILL; the survivors must run each lost connection's leave
exactly once, within node_timeout plus a few seconds."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from tests.support.mixpanel_endpoint import MixpanelEndpoint
from tests.support.node_process import NodeProcess, nodes
from tests.support.partition_proxy import PartitionProxy
from tests.support.redis_servers import RedisServer
from tests.support.sio_harness import RecordingAsyncClient, connect_async_client, eventually

NODE_TIMEOUT = 1.0
HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 100, "lesson_id": 5}
T1 = {"role": "TeacherAPP", "org_id": 1, "user_id": 1, "lesson_id": 5}
T2 = {"role": "TeacherAPP", "org_id": 1, "user_id": 2, "lesson_id": 5}
P1 = {"role": "ParticipantWeb", "org_id": 1, "user_id": 9, "lesson_id": 5, "room_id": "r-9"}


def teacher_events(client: RecordingAsyncClient, event: str) -> list[Any]:
    return [args[0]["user_id"] for args in client.received(event)]


async def run_kill_scenario(redis_server: RedisServer, endpoint: MixpanelEndpoint) -> None:
    with nodes(redis_server.url, endpoint.url, 3) as (node1, node2, node3):
        clients: list[RecordingAsyncClient] = []
        try:
            hub = await connect_async_client(node1.url, HUB)
            clients.append(hub)
            # Socket.IO's pub/sub emits are at most once, and a node's manager subscribes
            # only once its first client connected: wait until the hub's node listens.
            raw = redis_server.client()
            await eventually(lambda: raw.pubsub_numsub("socketio")[0][1] >= 1, 5)
            for url, auth in ((node2.url, T1), (node2.url, T2), (node3.url, T2), (node2.url, P1)):
                clients.append(await connect_async_client(url, auth))
            try:
                await eventually(
                    lambda: sorted(teacher_events(hub, "teacher_connect")) == [1, 2], 5
                )
            except AssertionError:
                raise AssertionError(f"the hub heard {hub.names()}") from None
            node2.kill()
            killed_at = time.monotonic()
            await eventually(lambda: teacher_events(hub, "teacher_disconnect") == [1], 10)
            recovered_in = time.monotonic() - killed_at
            await asyncio.to_thread(endpoint.wait_for, 1, 10)
            await asyncio.sleep(NODE_TIMEOUT)  # nothing more may arrive
            assert teacher_events(hub, "teacher_disconnect") == [1]
            events = endpoint.events
            assert [e["properties"]["distinct_id"] for e in events] == ["9"]
            assert events[0]["properties"]["reason"] == "node lost"
            assert events[0]["properties"]["room_id"] == "r-9"
            text = redis_server.client(decode_responses=True)
            assert text.hget("alive:org_1_user_1", "state") == "disconnect"
            assert text.hget("alive:org_1_user_2", "state") == "connect"
            assert list(text.scan_iter("presence:{presence:node:node-2/*")) == []
            assert text.hget("alive:org_1_user_2", "n") == "1"
            print(f"recovered node 2 in {recovered_in:.2f}s")
        finally:
            for client in clients:
                if client.connected:
                    await client.disconnect()


def registered(redis_server: RedisServer, node_id: str) -> bool:
    """Whether ``node_id`` has heartbeat into the registry: a node registers with its
    background's first step, after its first handler call; one cut off before that is
    not in the registry, so nobody can sweep it (what these tests are not about)."""
    live = redis_server.client().zrange("presence:{presence:nodes}:live", 0, -1)
    return any(member.decode().startswith(f"{node_id}/") for member in live)


async def test_a_killed_node_is_recovered_exactly_once(
    redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    await run_kill_scenario(redis_server, mixpanel_endpoint)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(20))
async def test_kill_repeatedly(
    redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint, attempt: int
) -> None:
    """``pytest -m slow -k kill_repeatedly``: the kill scenario 20 times in a row."""
    await run_kill_scenario(redis_server, mixpanel_endpoint)


async def test_a_stalled_node_is_swept_then_fenced_and_registers_again(
    redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    """SIGSTOP node 2 past node_timeout: it is swept (the hub hears the leave); on
    SIGCONT it learns it was fenced, takes a new incarnation and registers the teacher
    it still serves again (the hub hears the teacher come back)."""
    with nodes(redis_server.url, mixpanel_endpoint.url, 2) as (node1, node2):
        hub = await connect_async_client(node1.url, HUB)
        raw = redis_server.client()
        await eventually(lambda: raw.pubsub_numsub("socketio")[0][1] >= 1, 5)
        teacher = await connect_async_client(node2.url, T1)
        try:
            await eventually(lambda: teacher_events(hub, "teacher_connect") == [1], 5)
            await eventually(lambda: registered(redis_server, "node-2"), 5)
            node2.proc.send_signal(signal.SIGSTOP)
            try:
                await eventually(lambda: teacher_events(hub, "teacher_disconnect") == [1], 10)
            finally:
                node2.proc.send_signal(signal.SIGCONT)
            await eventually(lambda: teacher_events(hub, "teacher_connect") == [1, 1], 10)
            text = redis_server.client(decode_responses=True)
            assert text.hget("alive:org_1_user_1", "state") == "connect"
            assert teacher.connected
        finally:
            for client in (teacher, hub):
                if client.connected:
                    await client.disconnect()


async def test_a_node_cut_off_from_redis_is_swept_then_fenced(
    redis_server: RedisServer, mixpanel_endpoint: MixpanelEndpoint
) -> None:
    """Node 2 reaches Redis through a proxy that the test cuts (its connections reset)
    for longer than node_timeout: node 1 sweeps it; when the link is restored node 2
    learns it was fenced and registers the teacher it still serves again. (Partitions
    that hold bytes, and one-way cuts, are in ``test_partitions.py``.)"""
    proxy = PartitionProxy(redis_server.port)
    node1 = NodeProcess(redis_server.url, mixpanel_endpoint.url, "node-1")
    node2 = NodeProcess(proxy.url, mixpanel_endpoint.url, "node-2")
    hub = teacher = None
    try:
        hub = await connect_async_client(node1.url, HUB)
        raw = redis_server.client()
        await eventually(lambda: raw.pubsub_numsub("socketio")[0][1] >= 1, 5)
        teacher = await connect_async_client(node2.url, T1)
        await eventually(lambda: teacher_events(hub, "teacher_connect") == [1], 5)
        await eventually(lambda: registered(redis_server, "node-2"), 5)
        proxy.hold("both")
        proxy.heal("reset")  # the open connections reset
        proxy.hold("both")  # new ones hang
        try:
            try:
                await eventually(lambda: teacher_events(hub, "teacher_disconnect") == [1], 10)
            except AssertionError:
                now_ms = int(raw.time()[0]) * 1000
                beats = raw.zrange("presence:{presence:nodes}:live", 0, -1, withscores=True)
                ages = {m.decode(): now_ms - int(s) for m, s in beats}
                raise AssertionError(
                    f"node 1 did not sweep node 2; heartbeat ages (ms) {ages}, "
                    f"claimed {raw.zrange('presence:{presence:nodes}:claimed', 0, -1)}, "
                    f"the hub heard {hub.names()}"
                ) from None
            assert raw.hget("alive:org_1_user_1", "state") == b"disconnect"
        finally:
            proxy.heal("flush")
        await eventually(lambda: teacher_events(hub, "teacher_connect") == [1, 1], 10)
        assert raw.hget("alive:org_1_user_1", "state") == b"connect"
        assert teacher.connected
    finally:
        for client in (teacher, hub):
            if client is not None and client.connected:
                await client.disconnect()
        node2.stop()
        node1.stop()
        proxy.close()
