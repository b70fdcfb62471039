"""A TCP proxy on loopback that reads the Redis protocol and spoils chosen replies.

One :class:`FaultProxy` sits in front of one redis-server. It parses the commands a
client sends and the replies Redis sends back (RESP2 and RESP3), pairs them in order,
and, while a fault is injected, spoils the round trips of the chosen commands (by
default ``EVALSHA``, alone or in a pipeline):

- ``"reset"``: the connection is reset (``SO_LINGER`` 0) instead of forwarding the
  command; the client sees its connection reset by the peer.
- ``"timeout"``: the command runs, its reply never comes (the client's deadline ends).
- ``"reply"``: the command runs, and its reply is replaced by ``reply`` (by default an
  integer where every command of ours expects an array): an unexpected reply.

``delay`` holds each chosen command that long before the fault applies, so that other
calls pile up behind it meanwhile (a burst). A Redis Cluster is proxied node by node:
give the cluster client ``address_remap`` with :meth:`FaultProxies.remap`.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from typing import Literal

__all__ = ["Fault", "FaultProxies", "FaultProxy"]

Fault = Literal["reset", "timeout", "reply"]

_LINGER_RESET = struct.pack("ii", 1, 0)
_LINE_TYPES = b"+-:_,#("
_BLOB_TYPES = b"$=!"
_AGGREGATE_TYPES = b"*~>"
_PAIR_TYPES = b"%|"


def _end_of_value(buf: bytes | bytearray, pos: int) -> int | None:
    """Where the RESP value starting at ``pos`` ends, or ``None`` if it is incomplete."""
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind, head, after = buf[pos : pos + 1], buf[pos + 1 : line_end], line_end + 2
    if kind in _LINE_TYPES:
        return after
    if kind in _BLOB_TYPES:
        size = int(head)
        if size < 0:
            return after
        end = after + size + 2
        return end if len(buf) >= end else None
    if kind not in _AGGREGATE_TYPES + _PAIR_TYPES:
        raise ValueError(f"not RESP: {bytes(buf[pos : pos + 20])!r}")
    count = int(head)
    if count < 0:
        return after
    for _ in range(count * 2 if kind in _PAIR_TYPES else count):
        end = _end_of_value(buf, after)
        if end is None:
            return None
        after = end
    if kind == b"|":  # an attribute goes before the reply it describes
        return _end_of_value(buf, after)
    return after


def _command_name(command: bytes) -> str:
    """The first word of a command (``*N`` then bulk strings, as redis-py sends)."""
    first = command.index(b"\r\n") + 2  # past "*N"
    start = command.index(b"\r\n", first) + 2  # past "$len"
    return command[start : command.index(b"\r\n", start)].decode().upper()


def _reset(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    sock.close()


class _Link:
    """One proxied connection: what each command sent asked of its reply, in order."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.pending: deque[Fault | None] = deque()
        self.dead = False
        self.lock = threading.Lock()

    def kill(self) -> None:
        with self.lock:
            if self.dead:
                return
            self.dead = True
        _reset(self.client)
        _reset(self.upstream)


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; see the module doc."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._fault: Fault | None = None
        self._commands: frozenset[str] = frozenset({"EVALSHA"})
        self._reply = b":1\r\n"
        self._delay = 0.0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self.spoiled = 0
        """Round trips spoiled so far."""
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def inject(
        self,
        fault: Fault,
        *,
        commands: Iterable[str] = ("EVALSHA",),
        reply: bytes = b":1\r\n",
        delay: float = 0.0,
    ) -> None:
        """Spoil every later round trip of ``commands`` with ``fault``."""
        with self._lock:
            self._fault, self._commands = fault, frozenset(c.upper() for c in commands)
            self._reply, self._delay = reply, delay

    def clear(self) -> None:
        """Forward everything again."""
        with self._lock:
            self._fault = None

    def close(self) -> None:
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            links, self._links = self._links, set()
        for link in links:
            link.kill()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._commands_of, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies_to, args=(link,), daemon=True).start()

    def _chosen(self, name: str) -> tuple[Fault | None, float]:
        with self._lock:
            if self._fault is not None and name in self._commands:
                return self._fault, self._delay
            return None, 0.0

    def _commands_of(self, link: _Link) -> None:
        buf = bytearray()
        while not link.dead:
            try:
                data = link.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                link.kill()
                return
            buf += data
            out = bytearray()
            while True:
                end = _end_of_value(buf, 0)
                if end is None:
                    break
                command = bytes(buf[:end])
                del buf[:end]
                fault, delay = self._chosen(_command_name(command))
                if fault is not None:
                    if out:
                        self._send(link, link.upstream, bytes(out))
                        out.clear()
                    time.sleep(delay)
                    if fault == "reset":
                        self.spoiled += 1
                        link.kill()
                        return
                with link.lock:
                    link.pending.append(fault)
                out += command
            if out:
                self._send(link, link.upstream, bytes(out))

    def _replies_to(self, link: _Link) -> None:
        buf = bytearray()
        while not link.dead:
            try:
                data = link.upstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                link.kill()
                return
            buf += data
            out = bytearray()
            while True:
                end = _end_of_value(buf, 0)
                if end is None:
                    break
                reply = bytes(buf[:end])
                del buf[:end]
                with link.lock:
                    fault = link.pending.popleft() if link.pending else None
                if fault == "timeout":
                    self.spoiled += 1
                    continue
                if fault == "reply":
                    self.spoiled += 1
                    with self._lock:
                        reply = self._reply
                out += reply
            if out:
                self._send(link, link.client, bytes(out))

    @staticmethod
    def _send(link: _Link, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            link.kill()


class FaultProxies:
    """One :class:`FaultProxy` per server port, injected and cleared together."""

    def __init__(self, ports: Iterable[int]) -> None:
        self.by_port = {port: FaultProxy(port) for port in ports}

    def remap(self, address: tuple[str, int]) -> tuple[str, int]:
        """redis-py's ``address_remap``: a cluster node's address -> its proxy's."""
        host, port = address
        proxy = self.by_port.get(port)
        return ("127.0.0.1", proxy.port) if proxy is not None else (host, port)

    @property
    def spoiled(self) -> int:
        return sum(proxy.spoiled for proxy in self.by_port.values())

    def inject(self, fault: Fault, **options: object) -> None:
        for proxy in self.by_port.values():
            proxy.inject(fault, **options)  # type: ignore[arg-type]

    def clear(self) -> None:
        for proxy in self.by_port.values():
            proxy.clear()

    def close(self) -> None:
        for proxy in self.by_port.values():
            proxy.close()
