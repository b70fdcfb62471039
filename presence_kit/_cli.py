"""The ``presence-kit`` command: ``demo`` (the README's first command), ``status``,
``nodes``, ``sweep``, ``rebuild-counts``, ``feed`` and ``--version``.

Standard-library :mod:`argparse` only: the CLI has few commands and no need for a
framework, and it keeps the runtime dependencies to redis, typing-extensions and
mixpanel. Errors are one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._effects import Track
from ._errors import PresenceError
from ._feed_entry import FeedEntry
from ._keys import KeySchema
from ._model import OrgQuery
from ._policies import default_policies
from ._roles import ClientRole
from ._settings import Settings

ORG = "demo"
LESSON = "lesson-1"
TEACHER = {"role": "TeacherAPP", "org_id": ORG, "user_id": 7, "lesson_id": LESSON}
HUB = {"role": "TeacherHub", "org_id": ORG, "user_id": 1, "lesson_id": LESSON}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": ORG,
    "user_id": 42,
    "lesson_id": LESSON,
    "room_id": "room-9",
}


class CLIError(Exception):
    """A failure to report as one line."""


class _Timeline:
    """Prints numbered, timed lines so the demo reads as a story."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self, who: str, text: str) -> None:
        print(f"  {time.monotonic() - self._start:6.3f}s  {who:<12} {text}", flush=True)


class _PrintingAnalytics:
    """Analytics that prints each event (the demo sends nothing to Mixpanel)."""

    def __init__(self, say: _Timeline) -> None:
        self.events: list[Track] = []
        self._say = say

    def track(self, event: Track) -> None:
        self.events.append(event)
        self._say(
            "analytics",
            f"{event.event!r} distinct_id={event.distinct_id} {dict(event.properties)}",
        )

    def close(self, timeout: float | None = None) -> None:
        pass


_DEMO_KEY_PREFIX = "presence-demo"
"""The demo's own key prefix, so that it can remove what it wrote from a real Redis."""


async def _forget_demo_keys(raw: Any) -> None:
    """Delete the demo's bookkeeping keys (its node registration has no TTL). The
    spec's alive keys stay: after a leave they expire on their own (offline_ttl)."""
    async for key in raw.scan_iter(match=f"{_DEMO_KEY_PREFIX}:*", count=500):
        await raw.unlink(key)


async def _demo(redis_url: str | None) -> None:
    try:
        import socketio
        from aiohttp import web
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CLIError(
            f"the demo needs the 'demo' extra: pip install 'presence-kit[demo]' ({exc})"
        ) from None

    from ._async.kit import AsyncPresenceKit
    from .memory import MemoryStore
    from .socketio import AsyncSocketIORooms

    say = _Timeline()
    store: Any
    raw: Any = None
    if redis_url:
        import redis.asyncio

        from .redis import AsyncRedisStore

        try:
            raw = redis.asyncio.from_url(redis_url, decode_responses=True)
            await raw.ping()
        except (ValueError, redis.RedisError) as exc:
            raise CLIError(f"cannot use Redis at {redis_url}: {exc}") from None
        store = AsyncRedisStore(raw)
        where = f"Redis at {redis_url}"
    else:
        store = MemoryStore()
        where = "the embedded MemoryStore"

    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)
    analytics = _PrintingAnalytics(say)
    kit = AsyncPresenceKit(
        store=store,
        sockets=AsyncSocketIORooms(sio),
        analytics=analytics,
        settings=Settings(key_prefix=_DEMO_KEY_PREFIX),
    )

    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
        await sio.save_session(sid, auth)
        await kit.handle_connect(sid, auth)

    async def disconnect(sid: str, reason: str) -> None:
        await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    print(
        f"presence-kit {__version__} demo: python-socketio server on {url}, presence in {where}\n"
    )

    async def client(name: str, auth: dict[str, Any]) -> Any:
        c = socketio.AsyncClient()

        async def heard(event: str, data: Any) -> None:
            say(name, f"hears {event!r} {data}")

        c.on("*", heard)

        await c.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
        say(name, f"connected as {auth['role']} (user {auth['user_id']})")
        return c

    async def show_store() -> None:
        alive_key = f"alive:org_{ORG}_user_{TEACHER['user_id']}"
        if raw is not None:
            alive, ttl = await raw.hgetall(alive_key), await raw.ttl(alive_key)
        else:
            alive, ttl = store.hgetall(alive_key), store.ttl(alive_key)
        expiry = "no expiry" if ttl == -1 else f"TTL {ttl}s"
        say("store", f"{alive_key} = {alive} ({expiry})")

    try:
        hub = await client("hub", HUB)
        tab1 = await client("teacher/tab1", TEACHER)
        await asyncio.sleep(0.2)
        await show_store()
        tab2 = await client("teacher/tab2", TEACHER)
        pupil = await client("participant", PARTICIPANT)
        await asyncio.sleep(0.2)
        say("demo", "teacher closes tab 1: still online on tab 2, so nothing is announced")
        await tab1.disconnect()
        await asyncio.sleep(0.2)
        await show_store()
        say("demo", "teacher closes tab 2: the last connection, so the hub hears the leave")
        await tab2.disconnect()
        await asyncio.sleep(0.3)
        await show_store()
        say("demo", "participant leaves: one analytics 'disconnect' with its stored room_id")
        await pupil.disconnect()
        await asyncio.sleep(0.3)
        await hub.disconnect()
        await asyncio.sleep(0.1)
    finally:
        await kit.aclose()
        await runner.cleanup()
        if raw is not None:
            await _forget_demo_keys(raw)
            await raw.aclose()
    stats = kit.stats
    print(
        f"\ndone: {stats.connects} connects, {stats.disconnects} disconnects, "
        f"{stats.announced_offline} leave announced, {len(analytics.events)} analytics event(s)"
    )


class _ReportingSockets:
    """The CLI's sockets port: prints what a sweep announces and, with a client manager
    URL, emits it through python-socketio's write-only ``RedisManager`` so it reaches
    the hubs connected to every node."""

    namespace = "/"

    def __init__(self, manager_url: str | None) -> None:
        self._manager: Any = None
        if manager_url:
            import socketio

            self._manager = socketio.RedisManager(manager_url, write_only=True)

    def enter_room(self, sid: str, room: str) -> None:
        pass

    def leave_room(self, sid: str, room: str) -> None:
        pass

    def emit(self, event: str, data: Any, *, to: str) -> None:
        print(f"  announce {event} {data} to {to}")
        if self._manager is not None:
            self._manager.emit(event, data, namespace="/", room=to)

    def start_background_task(self, target: Any, *args: Any) -> None:
        return None

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _client(redis_url: str) -> Any:
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        client.ping()
    except (ValueError, redis.RedisError) as exc:
        raise CLIError(f"cannot use Redis at {redis_url}: {exc}") from None
    return client


def _open_kit(redis_url: str, manager_url: str | None = None, node_timeout: float = 10.0) -> Any:
    from ._sync.kit import PresenceKit
    from .redis import RedisStore

    client = _client(redis_url)
    settings = Settings(node_timeout=node_timeout, heartbeat_interval=node_timeout / 5)
    return PresenceKit(
        store=RedisStore(client, timeout=5),
        sockets=_ReportingSockets(manager_url),
        settings=settings,
    )


def _nodes(redis_url: str) -> None:
    kit = _open_kit(redis_url)
    nodes = kit.nodes()
    if not nodes:
        print("no nodes registered")
    now = time.time()
    for node in nodes:
        if node.last_heartbeat is None:
            beat = "being swept"
        elif node.last_heartbeat > now:  # stamped ahead by a graceful shutdown's hand-over
            beat = f"shut down, swept in {node.last_heartbeat - now:4.1f}s"
        else:
            beat = f"last heartbeat {now - node.last_heartbeat:5.1f}s ago"
        print(f"{node.member:<48} {beat:<28} {node.connections} connection(s)")


def _sweep(redis_url: str, manager_url: str | None, node_timeout: float) -> None:
    kit = _open_kit(redis_url, manager_url, node_timeout)
    recovered = kit.sweep_dead_nodes()
    print(f"recovered {recovered} connection(s) of dead nodes")
    if recovered and not manager_url:
        print("  (announcements were not delivered: pass --manager-url to emit them)")


def _status(redis_url: str, org_id: str) -> None:
    kit = _open_kit(redis_url)
    users = kit.online_users(org_id)  # "5" and 5 name the same keys
    print(f"org {org_id}: {len(users)} teacher(s) online")
    for user in users:
        lessons = ", ".join(str(lesson) for lesson in user.lesson_ids)
        print(f"  {user.user_id!s:<20} {user.connections} connection(s)  lessons: {lessons}")
    for role in ClientRole:
        counted = kit.count_online(org_id, role=role)
        listed = kit.online_users(org_id, role)
        index = (len(listed), sum(user.connections for user in listed))
        line = (
            f"  count_online {role.value:<15} {counted.users} user(s), "
            f"{counted.connections} connection(s)"
        )
        if (counted.users, counted.connections) != index:
            line += (
                f"  (the index lists {index[0]} user(s), {index[1]} connection(s): "
                f"run presence-kit rebuild-counts --org {org_id})"
            )
        print(line)


_INDEX_KEY = re.compile(
    r"^(?P<prefix>.+):\{(?P=prefix):org:(?P<org>.+)\}:online:(?P<role>[A-Za-z0-9_\-]{1,64})$"
)


def _rebuild_counts(redis_url: str, org_id: str | None) -> None:
    """Rebuild the counts beside every org index (or one org's) from the index, one
    atomic script per (org, role): safe while nodes serve."""
    from .redis import RedisStore

    client = _client(redis_url)
    store, settings, policies = RedisStore(client, timeout=5), Settings(), default_policies()
    schema = KeySchema(alive_template=settings.alive_key, prefix=settings.key_prefix)
    if org_id is not None:
        targets = [(org_id, role.value) for role in ClientRole]
    else:
        pattern = f"{settings.key_prefix}:{{{settings.key_prefix}:org:*}}:online:*"
        targets = []
        for raw in client.scan_iter(match=pattern, count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            found = _INDEX_KEY.match(key)
            if found and found["prefix"] == settings.key_prefix:
                targets.append((found["org"], found["role"]))
    changed = 0
    for org, role in sorted(set(targets)):
        policy = policies.get(role)
        query = OrgQuery(
            keys=schema,
            org_id=org,
            role=role,
            tracks_alive=bool(policy is not None and policy.tracks_alive),
        )
        connections, users, differed = store.rebuild_counts(query)
        changed += differed
        if users or differed:
            mark = "  (rebuilt: they differed)" if differed else ""
            print(f"org {org} {role}: {users} user(s), {connections} connection(s){mark}")
    print(f"rebuilt the counts of {len(set(targets))} index(es); {changed} had differed")
    store.close()


def _feed_client(redis_url: str) -> Any:
    """A client of ``redis_url``: a cluster client when the server is a cluster node."""
    import redis
    import redis.cluster

    client = _client(redis_url)
    info = client.info("cluster")
    if info.get("cluster_enabled"):
        client.close()
        return redis.cluster.RedisCluster.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=5
        )
    return client


def _entry_line(entry: FeedEntry, as_json: bool) -> str:
    if as_json:
        values = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
        values["at_ms"] = round(entry.at.timestamp() * 1000)
        values["observed_ms"] = round(entry.observed_at.timestamp() * 1000)
        del values["at"], values["observed_at"]
        return json.dumps(values, separators=(",", ":"))
    extra = "".join(
        f" {name}={value}"
        for name, value in (
            ("room", entry.room_id),
            ("reason", entry.reason),
            ("version", entry.version),
        )
        if value is not None
    )
    return (
        f"{entry.id} {entry.at.isoformat(timespec='milliseconds')} {entry.kind:<7} "
        f"org={entry.org_id} user={entry.user_id} role={entry.role} sid={entry.sid} "
        f"lesson={entry.lesson_id}{extra} node={entry.node}"
    )


def _feed(
    redis_url: str,
    org_id: str | None,
    start: str,
    follow: bool,
    as_json: bool,
    shards: int,
    prefix: str,
) -> None:
    """Print the feed's entries (plain reads: no consumer group is created)."""
    from ._feed_entry import parse_feed_entry
    from ._keys import feed_shard

    if not re.fullmatch(r"0|now|\d+(-\d+)?", start):
        raise CLIError("--from must be an entry id (<ms>-<seq>), 0 or now")
    try:
        settings = Settings(feed=True, feed_shards=shards, key_prefix=prefix)
    except PresenceError as exc:
        raise CLIError(str(exc)) from None
    schema = KeySchema(alive_template=settings.alive_key, prefix=prefix, feed_shards=shards)
    streams = schema.feeds() if org_id is None else [schema.feed(feed_shard(org_id, shards))]
    client = _feed_client(redis_url)

    def show(stream: str, items: Any) -> str | None:
        last = None
        for raw_id, raw_fields in items:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            last = entry_id
            fields = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in raw_fields.items()
            }
            try:
                entry = parse_feed_entry(entry_id, fields)
            except ValueError as exc:
                print(
                    f"presence-kit: skipping entry {entry_id} of {stream}: {exc}", file=sys.stderr
                )
                continue
            if org_id is None or str(entry.org_id) == org_id:
                print(_entry_line(entry, as_json), flush=True)
        return last

    positions: dict[str, str] = {}
    for stream in streams:
        if start == "now":
            positions[stream] = "$"
            continue
        last = show(stream, client.xrange(stream, "-" if start == "0" else start, "+"))
        positions[stream] = last or ("0-0" if start == "0" else start)
    while follow:
        for stream in streams:  # shard by shard: on a cluster each is its own slot
            reply = client.xread({stream: positions[stream]}, block=max(1, 1000 // len(streams)))
            for _name, items in reply.items() if isinstance(reply, dict) else reply:
                if isinstance(items, list) and items and isinstance(items[0], list):
                    items = items[0]  # RESP3 wraps the entries once more
                last = show(stream, items)
                if last is not None:
                    positions[stream] = last


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-kit", description="Presence for python-socketio servers."
    )
    parser.add_argument("--version", action="version", version=f"presence-kit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run an in-process Socket.IO server with simulated clients",
        description="Run a python-socketio server with a hub, a teacher on two tabs and a "
        "participant, and print what the hub hears, what the store holds and what "
        "analytics receives.",
    )
    demo.add_argument(
        "--redis-url", help="use this Redis (redis:// or rediss://) instead of memory"
    )
    status = commands.add_parser(
        "status", help="who is online in an organisation", description="List online teachers."
    )
    status.add_argument("--redis-url", required=True, help="the deployment's Redis")
    status.add_argument("--org", required=True, help="the organisation id")
    nodes = commands.add_parser(
        "nodes",
        help="list server nodes",
        description="List node incarnations: last heartbeat and connection count.",
    )
    nodes.add_argument("--redis-url", required=True, help="the deployment's Redis")
    rebuild = commands.add_parser(
        "rebuild-counts",
        help="rebuild count_online's counts from the org indexes",
        description="Rebuild the counts kept beside each organisation's index (for data "
        "written before they were kept, or to repair them), one atomic script per "
        "organisation and role: safe while nodes serve.",
    )
    rebuild.add_argument("--redis-url", required=True, help="the deployment's Redis")
    rebuild.add_argument("--org", help="only this organisation (default: every one, by SCAN)")
    feed = commands.add_parser(
        "feed",
        help="print the presence feed",
        description="Print the presence feed's entries, one per line (plain reads: it "
        "creates no consumer group). On a cluster it reads every shard.",
    )
    feed.add_argument("--redis-url", required=True, help="the deployment's Redis")
    feed.add_argument("--org", help="only this organisation's entries (from its shard)")
    feed.add_argument(
        "--from", dest="start", default="0", help="an entry id, 0 (the start, default) or now"
    )
    feed.add_argument("--follow", action="store_true", help="keep printing new entries")
    feed.add_argument("--json", action="store_true", help="one JSON object per line")
    feed.add_argument(
        "--shards", type=int, default=Settings().feed_shards, help="Settings.feed_shards"
    )
    feed.add_argument("--prefix", default=Settings().key_prefix, help="Settings.key_prefix")
    sweep = commands.add_parser(
        "sweep",
        help="recover the connections of dead nodes now",
        description="Claim dead nodes and run the leave of each of their connections once.",
    )
    sweep.add_argument("--redis-url", required=True, help="the deployment's Redis")
    sweep.add_argument(
        "--manager-url",
        help="the python-socketio client manager's Redis, to deliver the announcements",
    )
    sweep.add_argument(
        "--node-timeout",
        type=float,
        default=Settings().node_timeout,
        help="seconds without a heartbeat after which a node is dead (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``presence-kit`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            asyncio.run(_demo(args.redis_url))
        elif args.command == "status":
            _status(args.redis_url, args.org)
        elif args.command == "nodes":
            _nodes(args.redis_url)
        elif args.command == "sweep":
            _sweep(args.redis_url, args.manager_url, args.node_timeout)
        elif args.command == "rebuild-counts":
            _rebuild_counts(args.redis_url, args.org)
        elif args.command == "feed":
            _feed(
                args.redis_url, args.org, args.start, args.follow, args.json, args.shards,
                args.prefix,
            )  # fmt: skip
        else:
            parser.print_help()
            return 2
        return 0
    except (CLIError, PresenceError) as exc:
        print(f"presence-kit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
