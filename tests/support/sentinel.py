"""A real local Redis Sentinel setup for the tests: one master, one replica, three sentinels.

Every process is a :class:`~tests.support.redis_servers.RedisServer` (our own child, on
a free port of the shared port picker, killed at close, at garbage collection and, via
``setpriv --pdeathsig``, when pytest dies). The sentinels run ``redis-server CONFIG
--sentinel`` with a config file of their own (Sentinel rewrites it), and are tuned for a
fast failover: ``down-after-milliseconds`` 1000, a short ``failover-timeout``, quorum 2.

The topology changes in a failover, so the current master is always asked of the
sentinels (:meth:`SentinelSetup.current_master`), never taken from the start-up order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tests.support.redis_servers import HOST, RedisServer, RedisServerError, wait_until

__all__ = ["SERVICE", "SentinelServer", "SentinelSetup"]

SERVICE = "mymaster"


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` monitoring ``master_port`` as ``service``."""

    def __init__(
        self,
        master_port: int,
        *,
        service: str = SERVICE,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        extra_config: Sequence[str] = (),
    ) -> None:
        self._config_lines = [
            f"sentinel monitor {service} {HOST} {master_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
            *extra_config,
        ]
        super().__init__()

    def _command(self) -> list[str]:
        config = self.dir / "sentinel.conf"
        if not config.exists():  # kept across restarts: Sentinel rewrites it with its state
            config.write_text("\n".join(self._config_lines) + "\n")
        command = super()._command()
        at = command.index("--port")  # the config file must be the first argument
        # Sentinel mode takes only the general options (no --save/--appendonly/...).
        options = command[at:]
        general = []
        skip = {"--save", "--appendonly", "--repl-diskless-sync-delay"}
        i = 0
        while i < len(options):
            if options[i] in skip:
                i += 2
                continue
            general.append(options[i])
            i += 1
        return [*command[:at], str(config), "--sentinel", *general]

    def sentinel(self, *args: Any, timeout: float = 2.0) -> Any:
        """``SENTINEL <args>`` on this sentinel (str replies)."""
        return self.admin("SENTINEL", *args, timeout=timeout)

    def __repr__(self) -> str:
        return "<Sentinel " + super().__repr__().removeprefix("<RedisServer ")


class SentinelSetup:
    """One master, one replica (``--replicaof``) and ``sentinels`` sentinels, ready:
    every sentinel sees the master, its replica and every other sentinel."""

    def __init__(
        self,
        *,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        start_timeout: float = 30.0,
    ) -> None:
        self.service = SERVICE
        self.servers: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []
        try:
            master = RedisServer()
            self.servers.append(master)
            self.servers.append(RedisServer(extra_args=["--replicaof", HOST, str(master.port)]))
            wait_until(
                lambda: (
                    self.servers[1].admin("INFO", "replication").get("master_link_status") == "up"
                ),
                start_timeout,
                "the replica to sync",
            )
            for _ in range(sentinels):
                self.sentinels.append(
                    SentinelServer(
                        master.port,
                        down_after_ms=down_after_ms,
                        failover_timeout_ms=failover_timeout_ms,
                    )
                )
            wait_until(self.is_ready, start_timeout, "the sentinels to know each other")
        except BaseException:
            self.close()
            raise

    # -- topology -------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' ``(host, port)`` s, for ``Sentinel([...])``."""
        return [(HOST, s.port) for s in self.sentinels]

    def server_for_port(self, port: int) -> RedisServer:
        """The data server (master or replica) listening on ``port``."""
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(port)

    def _master_state(self, sentinel: SentinelServer) -> dict[str, Any]:
        reply = sentinel.sentinel("MASTER", self.service)
        if isinstance(reply, dict):  # RESP3 / newer redis-py parse it
            return {str(k): v for k, v in reply.items()}
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def is_ready(self) -> bool:
        """Every sentinel sees a healthy master (no failover running), its replica, and
        every other sentinel; and that master's replica link is up."""
        ports = set()
        for sentinel in self.sentinels:
            state = self._master_state(sentinel)
            flags = set(str(state["flags"]).split(","))
            if flags != {"master"}:
                return False
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                return False
            if int(state["num-slaves"]) < len(self.servers) - 1:
                return False
            ports.add(int(state["port"]))
        if len(ports) != 1:
            return False
        master = self.server_for_port(ports.pop())
        if not master.is_available:
            return False
        replicas = [s for s in self.servers if s is not master]
        return all(
            r.admin("INFO", "replication").get("master_link_status") == "up" for r in replicas
        )

    def current_master(self) -> RedisServer:
        """The server every sentinel names as the master (raises if they disagree)."""
        ports = {
            int(s.sentinel("GET-MASTER-ADDR-BY-NAME", self.service)[1]) for s in self.sentinels
        }
        if len(ports) != 1:
            raise RedisServerError(f"the sentinels disagree on the master: {sorted(ports)}")
        return self.server_for_port(ports.pop())

    def replica(self) -> RedisServer:
        """The (one) data server that is not the current master."""
        master = self.current_master()
        return next(s for s in self.servers if s is not master)

    def wait_failover(self, old_master: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every sentinel names another server as the master and that server
        answers as a master; return it."""

        def promoted() -> RedisServer | None:
            try:
                master = self.current_master()
            except RedisServerError:
                return None
            if master is old_master:
                return None
            role = master.admin("INFO", "replication").get("role")
            return master if role == "master" else None

        return wait_until(promoted, timeout, f"the sentinels to replace {old_master!r}")

    def clients_named(self, server: RedisServer, name: str) -> int:
        """How many connections to ``server`` carry the client name ``name``."""
        clients = server.admin("CLIENT", "LIST")
        if isinstance(clients, str):  # some redis-py versions leave it unparsed
            return sum(f" name={name} " in f" {line} " for line in clients.splitlines())
        return sum(1 for c in clients if c.get("name") == name)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process (sentinels first, so none reconfigures the others)."""
        for server in [*self.sentinels, *self.servers]:
            with contextlib.suppress(Exception):
                server.close()

    def __enter__(self) -> SentinelSetup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
