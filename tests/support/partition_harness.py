"""A cluster of real node processes, each reaching Redis through its own
:class:`~tests.support.partition_proxy.PartitionProxy`, real python-socketio clients, a
TeacherHub that records what it hears, and :meth:`Cluster.problems`: the one checker
that every partition test (and the soak) runs after a heal and a settle.

``node-1`` carries the hub and is never cut: Socket.IO's pub/sub emits are at most once
only towards a node cut off from the broker, so with the hub's node always connected
every announcement that was published must reach the hub.

What the kits announced is read from each node process's emit log (written before the
emit is handed to python-socketio, so it survives a SIGKILL); what the hub heard is
compared with it separately: the channel can lose an emit (its node was killed before
publishing) or repeat one (python-socketio publishes again after a connection error,
though the first PUBLISH may have run: a one-way cut). ``strict_delivery`` makes
those problems too (the scenarios); the soak reports them as figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presence_kit import AsyncPresenceKit, ClientRole, Settings
from presence_kit.redis import AsyncRedisStore
from presence_kit.testing import AsyncRecordingSockets
from tests.support.node_process import NodeProcess
from tests.support.partition_proxy import Direction, HealMode, PartitionProxy
from tests.support.redis_servers import RedisServer, aclose_client
from tests.support.sio_harness import RecordingAsyncClient, connect_async_client, eventually

__all__ = ["HUB", "ORG", "Cluster", "Node", "Tracked", "participant", "teacher"]

ORG = 1
LESSON = 5
HUB: dict[str, Any] = {"role": "TeacherHub", "org_id": ORG, "user_id": 100, "lesson_id": LESSON}
NODE_TIMEOUT = 1.5
HEARTBEAT_INTERVAL = 0.2
REGISTRY_PREFIX = "presence:{presence:nodes}:"
NODE_INDEX_MATCH = "presence:{presence:node:*"
TEACHER_EVENTS = ("teacher_connect", "teacher_disconnect")


def teacher(user_id: int) -> dict[str, Any]:
    """A TeacherAPP session of org 1."""
    return {"role": "TeacherAPP", "org_id": ORG, "user_id": user_id, "lesson_id": LESSON}


def participant(user_id: int) -> dict[str, Any]:
    """A ParticipantWeb session of org 1 (its room is ``r-<user_id>``)."""
    return {
        "role": "ParticipantWeb",
        "org_id": ORG,
        "user_id": user_id,
        "lesson_id": LESSON,
        "room_id": f"r-{user_id}",
    }


@dataclass
class Node:
    """A node slot: its proxy (kept across restarts) and its current process."""

    name: str
    proxy: PartitionProxy
    process: NodeProcess | None = None
    log: Path | None = None
    """The current process's emit log."""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def url(self) -> str:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.url


@dataclass
class Tracked:
    """A client the test connected, with the session it sent and its node."""

    auth: dict[str, Any]
    node: str
    client: RecordingAsyncClient

    @property
    def live(self) -> bool:
        return self.client.connected


@dataclass
class Cluster:
    """``count`` nodes over ``redis_server``; :meth:`start` connects the hub to node-1."""

    redis_server: RedisServer
    count: int = 3
    node_timeout: float = NODE_TIMEOUT
    nodes: dict[str, Node] = field(default_factory=dict)
    clients: list[Tracked] = field(default_factory=list)
    users: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    hub: RecordingAsyncClient | None = None
    strict_delivery: bool = True
    """The hub must hear exactly what the kits emitted (see the module's notes)."""

    def __post_init__(self) -> None:
        self._logs = Path(tempfile.mkdtemp(prefix="presence-emits-"))
        self._starts = 0
        self._killed: set[str] = set()  # emit logs of processes killed with SIGKILL
        self._kills: list[tuple[float, str]] = []
        self.raw = self.redis_server.async_client(decode_responses=True)
        self._admin = self.redis_server.client()
        self.query = AsyncPresenceKit(
            store=AsyncRedisStore(self.redis_server.async_client()),
            sockets=AsyncRecordingSockets(),
            settings=Settings(include_version=True),
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Cluster:
        for n in range(1, self.count + 1):
            name = f"node-{n}"
            self.nodes[name] = Node(name, PartitionProxy(self.redis_server.port, name=name))
        await asyncio.gather(*(self.start_node(name) for name in self.nodes))
        self.hub = await connect_async_client(self.nodes["node-1"].url, HUB)
        # The hub's node subscribes once its first client connected: wait for it.
        await eventually(lambda: self._numsub >= 1, 5)
        return self

    @property
    def _numsub(self) -> int:
        return int(self._admin.pubsub_numsub("socketio")[0][1])

    async def start_node(self, name: str) -> None:
        """Start (or start again, after a kill) the node process of slot ``name``."""
        node = self.nodes[name]
        self._starts += 1
        node.log = self._logs / f"{name}-{self._starts}.jsonl"
        env = {
            "EMIT_LOG": str(node.log),
            "HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "INCLUDE_VERSION": "1",
            "RECONCILE_INTERVAL": "1",
            "SHUTDOWN_GRACE": "0.5",
        }
        node.process = await asyncio.to_thread(
            NodeProcess,
            node.proxy.url,
            None,
            name,
            node_timeout=self.node_timeout,
            env=env,
        )

    async def close(self) -> None:
        for tracked in self.clients:
            with contextlib.suppress(Exception):
                await tracked.client.disconnect()
        if self.hub is not None:
            with contextlib.suppress(Exception):
                await self.hub.disconnect()
        for node in self.nodes.values():
            node.proxy.heal("reset")
        await asyncio.gather(
            *(asyncio.to_thread(n.process.stop) for n in self.nodes.values() if n.process)
        )
        for node in self.nodes.values():
            node.proxy.close()
        await self.query.aclose()
        await aclose_client(self.raw)
        self._admin.close()

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- actions -------------------------------------------------------------------------

    async def connect(self, node: str, auth: dict[str, Any]) -> Tracked:
        """Connect a client with ``auth`` to ``node`` (tracked for the checker)."""
        self.users[auth["role"]].add(auth["user_id"])
        client = await connect_async_client(self.nodes[node].url, auth)
        tracked = Tracked(auth, node, client)
        self.clients.append(tracked)
        return tracked

    async def disconnect(self, tracked: Tracked) -> None:
        await tracked.client.disconnect()

    async def move(self, tracked: Tracked, changes: dict[str, Any]) -> None:
        """Ask ``tracked``'s node to update its connection (``handle_update``)."""
        tracked.auth.update(changes)
        await tracked.client.client.emit("move", changes)

    async def disconnect_all(self) -> None:
        await asyncio.gather(*(t.client.disconnect() for t in self.clients if t.live))

    async def disconnect_hub(self) -> None:
        assert self.hub is not None
        await self.hub.disconnect()

    def hold(self, name: str, direction: Direction) -> None:
        assert name != "node-1", "the hub's node stays connected"
        self.nodes[name].proxy.hold(direction)

    def heal(self, name: str, mode: HealMode) -> None:
        self.nodes[name].proxy.heal(mode)

    def kill(self, name: str) -> None:
        """SIGKILL the node process of ``name``."""
        node = self.nodes[name]
        assert node.process is not None and node.log is not None
        node.process.kill()
        self._killed.add(node.log.stem)
        self._kills.append((time.time(), node.log.stem))

    # --- what the hub heard ---------------------------------------------------------------

    def heard(self, event: str | None = None) -> list[tuple[str, int, int | None]]:
        """``(event, user_id, version)`` of every teacher event the hub received."""
        assert self.hub is not None
        return [
            (name, args[0]["user_id"], args[0].get("version"))
            for name, args in list(self.hub.events)
            if name in TEACHER_EVENTS and (event is None or name == event)
        ]

    def emitted(self) -> list[tuple[str, int, int | None]]:
        """``(event, user_id, version)`` of every teacher event the kits emitted (every
        node process's emit log, killed ones' included)."""
        found = []
        for log in sorted(self._logs.glob("*.jsonl")):
            for line in log.read_text(encoding="utf-8").splitlines():
                event, data, *_ = json.loads(line)
                if event in TEACHER_EVENTS:
                    found.append((event, data["user_id"], data.get("version")))
        return found

    def trace(self, user: int, versions: list[int]) -> str:
        """The policy calls for ``user`` near ``versions`` (and failed ones), and the
        kills: what a failure message needs to tell where an announcement went."""
        lines = []
        for log in sorted(self._logs.glob("*.jsonl")):
            for line in log.read_text(encoding="utf-8").splitlines():
                kind, *rest = json.loads(line)
                if kind != "policy" or rest[1] != user:
                    continue
                outcome = rest[3]
                if outcome is None or any(abs(outcome[1] - v) <= 2 for v in versions):
                    lines.append((rest[4], log.stem, rest[0], rest[2], outcome))
        return f"policy calls {sorted(lines)}; kills {self._kills}"

    def lost_with_a_kill(self, item: tuple[str, int, int | None]) -> bool:
        """``item`` was granted only to node processes that were SIGKILLed before they
        emitted it: the one loss no kit can prevent (a decision dies with its process)."""
        granted = self.decided().get(item, [])
        return bool(granted) and all(stem in self._killed for stem in granted)

    def decided(self) -> dict[tuple[str, int, int | None], list[str]]:
        """Which node processes' policies were granted each teacher transition (the
        log's ``decided`` lines; a process killed before its emit shows here only)."""
        found: dict[tuple[str, int, int | None], list[str]] = defaultdict(list)
        for log in sorted(self._logs.glob("*.jsonl")):
            for line in log.read_text(encoding="utf-8").splitlines():
                kind, *rest = json.loads(line)
                if kind == "decided":
                    event, user, version, _sid = rest
                    found[(event, user, version)].append(log.stem)
        return found

    def heard_users(self, event: str) -> list[int]:
        return sorted(user for _, user, _ in self.heard(event))

    # --- the checker ---------------------------------------------------------------------

    async def node_states(self) -> dict[str, dict[str, Any]]:
        """``/_test/state`` of every live node process."""
        live = [n for n in self.nodes.values() if n.alive]
        states = await asyncio.gather(*(asyncio.to_thread(n.process.state) for n in live))  # type: ignore[union-attr]
        return {n.name: s for n, s in zip(live, states, strict=True)}

    async def problems(self, *, everyone_left: bool = False) -> list[str]:
        """Everything in which Redis, the nodes and the hub disagree (empty: converged)."""
        states = await self.node_states()
        found: list[str] = []
        found += self._socket_problems(states)
        found += await self._presence_problems()
        found += await self._registry_problems(states)
        found += await self._announcement_problems()
        for name, state in sorted(states.items()):
            handlers = state["handlers"]
            if handlers["over_deadline"]:
                found.append(
                    f"{name}: {handlers['over_deadline']} handler(s) over "
                    f"{handlers['deadline']}s, slowest {handlers['slowest']}"
                )
            if state["pending"]:
                found.append(f"{name}: {state['pending']} operation(s) still in the outbox")
        if everyone_left:
            found += await self._ttl_problems()
        return found

    async def settle(self, timeout: float = 10.0, *, everyone_left: bool = False) -> float:
        """Wait until :meth:`problems` is empty; the seconds it took, or AssertionError
        saying exactly what still differs."""
        started = time.monotonic()
        while True:
            found = await self.problems(everyone_left=everyone_left)
            if not found:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"not converged {timeout:.0f}s after the heal:\n  " + "\n  ".join(found)
                )
            await asyncio.sleep(0.2)

    def expected_lessons(self, role: str) -> dict[int, set[Any]]:
        """The lessons of each user's live clients in ``role`` (as last moved)."""
        lessons: dict[int, set[Any]] = defaultdict(set)
        for tracked in self.clients:
            if tracked.live and tracked.auth["role"] == role:
                lessons[tracked.auth["user_id"]].add(tracked.auth["lesson_id"])
        if role == HUB["role"] and self.hub is not None and self.hub.connected:
            lessons[HUB["user_id"]].add(HUB["lesson_id"])
        return dict(lessons)

    def expected(self) -> dict[str, Counter[int]]:
        """Live client connections per role and user (what Redis must say)."""
        live: dict[str, Counter[int]] = defaultdict(Counter)
        for tracked in self.clients:
            if tracked.live:
                live[tracked.auth["role"]][tracked.auth["user_id"]] += 1
        if self.hub is not None and self.hub.connected:
            live[HUB["role"]][HUB["user_id"]] += 1
        return live

    def _socket_problems(self, states: dict[str, dict[str, Any]]) -> list[str]:
        clients = {
            t.client.sid: (t.node, t.auth["role"], t.auth["user_id"])
            for t in self.clients
            if t.live
        }
        if self.hub is not None and self.hub.connected:
            clients[self.hub.sid] = ("node-1", HUB["role"], HUB["user_id"])
        served = {
            sid: (name, session["role"], session["user_id"])
            for name, state in states.items()
            for sid, session in state["sockets"].items()
        }
        if clients == served:
            return []
        return [
            f"the nodes' sockets differ from the live clients: only on the clients "
            f"{_diff(clients, served)}, only on the nodes {_diff(served, clients)}"
        ]

    async def _presence_problems(self) -> list[str]:
        found: list[str] = []
        expected = self.expected()
        for role in ClientRole:
            online = await self.query.online_users(ORG, role)
            got = {u.user_id: u.connections for u in online}
            want = dict(expected[role.value])
            if got != want:
                found.append(f"online_users({role.value}): Redis {got} != clients {want}")
            lessons = {u.user_id: set(u.lesson_ids) for u in online}
            want_lessons = self.expected_lessons(role.value)
            if lessons != want_lessons:
                found.append(f"lessons ({role.value}): Redis {lessons} != clients {want_lessons}")
            counted = await self.query.count_online(ORG, role=role)
            listed = (len(online), sum(u.connections for u in online))
            if (counted.users, counted.connections) != listed:
                found.append(f"count_online({role.value}) {counted} != online_users {listed}")
        for user in sorted(self.users["TeacherAPP"]):
            live = expected["TeacherAPP"][user]
            state = await self.raw.hget(f"alive:org_{ORG}_user_{user}", "state")
            want_state = "connect" if live else "disconnect"
            if state != want_state:
                found.append(
                    f"teacher {user}: alive state {state!r}, expected {want_state!r} "
                    f"({live} live connection(s))"
                )
        return found

    async def _registry_problems(self, states: dict[str, dict[str, Any]]) -> list[str]:
        found: list[str] = []
        current = {
            f"{state['node_id']}/{state['incarnation']}": len(state["sockets"])
            for state in states.values()
        }
        registered = {info.member: info.connections for info in await self.query.nodes()}
        indexed: Counter[str] = Counter()
        async for key in self.raw.scan_iter(match=NODE_INDEX_MATCH, count=1000):
            member = key.split("{presence:node:", 1)[1].split("}", 1)[0]
            indexed[member] += await self.raw.hlen(key)
        for member, sockets in sorted(current.items()):
            # A kit registers with its first handled connection: none yet, none listed.
            if registered.get(member, 0 if not sockets else None) != sockets:
                found.append(
                    f"registry: {member} counts {registered.get(member)} connection(s), "
                    f"the node has {sockets}"
                )
            if indexed[member] != sockets:
                found.append(
                    f"node index of {member}: {indexed[member]} record(s), the node has {sockets}"
                )
        for member, connections in sorted(registered.items()):
            if member not in current and connections:
                found.append(f"registry: gone incarnation {member} still counts {connections}")
        for member, records in sorted(indexed.items()):
            if member not in current and records:
                found.append(f"node index of gone incarnation {member}: {records} record(s) left")
        return found

    async def _announcement_problems(self) -> list[str]:
        found: list[str] = []
        emitted = self.emitted()
        for item, times in sorted(Counter(emitted).items()):
            if times > 1:
                found.append(f"duplicate: {item} announced {times} times")
        if self.strict_delivery and (delivery := self.delivery()):
            found.append(f"delivery: {delivery}")
        for user in sorted(self.users["TeacherAPP"]):
            version = int(await self.raw.hget(f"alive:org_{ORG}_user_{user}", "version") or 0)
            want = {
                (TEACHER_EVENTS[0] if v % 2 else TEACHER_EVENTS[1], user, v)
                for v in range(1, version + 1)
            }
            got = {item for item in emitted if item[1] == user}
            missing = [m for m in want - got if not self.lost_with_a_kill(m)]
            if missing:
                decided = self.decided()
                found.append(
                    f"teacher {user}: Redis counted version {version}, never announced "
                    f"{sorted(missing, key=lambda i: i[2])} "
                    f"(granted to {[decided.get(m, []) for m in missing]}); "
                    f"{self.trace(user, [m[2] or 0 for m in missing])}"
                )
            if extra := sorted(got - want, key=lambda i: i[2] or 0):
                found.append(f"teacher {user}: Redis counted version {version}, announced {extra}")
        return found

    async def _ttl_problems(self) -> list[str]:
        lasting: list[str] = []
        async for key in self.raw.scan_iter(count=1000):
            if key.startswith((REGISTRY_PREFIX, "__")):
                continue
            if await self.raw.ttl(key) == -1:
                lasting.append(key)
        if not lasting:
            return []
        return [f"{len(lasting)} key(s) without a TTL once everyone left: {sorted(lasting)[:20]}"]

    def delivery(self) -> dict[str, Any]:
        """How the hub's events differ from the kits' emits (empty: not at all)."""
        heard, emitted = Counter(self.heard()), Counter(self.emitted())
        differs: dict[str, Any] = {}
        if lost := sorted((emitted - heard).elements(), key=str):
            differs["emitted, never heard"] = lost
        if repeated := sorted((heard - emitted).elements(), key=str):
            differs["heard more often than emitted"] = repeated
        return differs

    def summary(self) -> dict[str, Any]:
        emitted = self.emitted()
        delivery = self.delivery()
        return {
            "announcements": len(emitted),
            "duplicates": sum(t - 1 for t in Counter(emitted).values() if t > 1),
            "delivery_lost": len(delivery.get("emitted, never heard", [])),
            "delivery_repeated": len(delivery.get("heard more often than emitted", [])),
            "lost_with_a_killed_node": sum(
                1 for item in self.decided() if item not in emitted and self.lost_with_a_kill(item)
            ),
        }


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if b.get(k) != v}
