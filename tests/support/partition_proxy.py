"""A TCP proxy on loopback that holds bytes like a network partition does.

One :class:`PartitionProxy` per node sits in front of the test's redis-server.

- :meth:`~PartitionProxy.hold` ``("both")``: a partition. Bytes in both directions are
  held (buffered, in order), nothing is reset, and new connections are accepted but hang
  (they are not connected upstream) until the heal.
- :meth:`~PartitionProxy.hold` ``("replies")``: a one-way cut. Commands still reach
  Redis and run; Redis's replies are held.
- :meth:`~PartitionProxy.heal` ``("flush")``: deliver everything held, in order, and
  forward again; hanging connections are connected upstream.
- :meth:`~PartitionProxy.heal` ``("reset")``: every connection is closed with a reset
  (``SO_LINGER`` 0) on both sides, held bytes are discarded; new connections are
  forwarded normally.

Each connection has a reader thread and a writer thread per direction; every decision
(held or not, reset or not, hanging or not) is taken under the proxy's one condition
lock, so a connection accepted, or bytes read, just before a hold cannot slip past it.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from contextlib import suppress
from typing import Literal

__all__ = ["Direction", "HealMode", "PartitionProxy"]

Direction = Literal["both", "replies"]
HealMode = Literal["flush", "reset"]

_UP, _DOWN = 0, 1  # commands (client -> Redis), replies (Redis -> client)
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Link:
    """One proxied connection: its sockets and the bytes held for each direction."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.queues: tuple[deque[bytes], deque[bytes]] = (deque(), deque())
        self.eof = [False, False]
        self.dead = False

    def is_dead(self) -> bool:
        return self.dead

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset, waking a thread blocked in ``recv`` on it."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a blocked recv (Linux); sends nothing
    sock.close()


def _close(sock: socket.socket) -> None:
    """Close ``sock`` normally (a FIN), waking a thread blocked in ``recv`` on it."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class PartitionProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; see the module doc."""

    def __init__(self, target_port: int, *, name: str = "partition-proxy") -> None:
        self.target_port = target_port
        self.name = name
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._held: Direction | None = None
        self._links: set[_Link] = set()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name=name)
        self._acceptor.start()

    @property
    def url(self) -> str:
        """A ``redis://`` URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def held(self) -> Direction | None:
        """What is held now (``None``: forwarding)."""
        return self._held

    @property
    def connections(self) -> int:
        """Connections open through the proxy (hanging ones included)."""
        with self._cond:
            return len(self._links)

    def hold(self, direction: Direction) -> None:
        """Start holding ``"both"`` directions (a partition) or only the ``"replies"``."""
        if direction not in ("both", "replies"):
            raise ValueError(f"direction must be 'both' or 'replies', got {direction!r}")
        with self._cond:
            self._held = direction
            self._cond.notify_all()

    def heal(self, mode: HealMode) -> None:
        """End the hold: ``"flush"`` delivers what was held, ``"reset"`` resets every
        connection and discards it."""
        if mode not in ("flush", "reset"):
            raise ValueError(f"mode must be 'flush' or 'reset', got {mode!r}")
        with self._cond:
            self._held = None
            doomed = self._kill_all() if mode == "reset" else []
            self._cond.notify_all()
        for sock in doomed:
            _reset(sock)

    def close(self) -> None:
        """Stop the proxy and reset every connection through it."""
        with self._cond:
            self._closed = True
            self._held = None
            doomed = self._kill_all()
            self._cond.notify_all()
        for sock in doomed:
            _reset(sock)
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(5)

    def __enter__(self) -> PartitionProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- under self._cond ------------------------------------------------------------

    def _kill_all(self) -> list[socket.socket]:
        links, self._links = self._links, set()
        doomed: list[socket.socket] = []
        for link in links:
            link.dead = True
            for queue in link.queues:
                queue.clear()
            doomed.extend(link.sockets())
        return doomed

    def _holds(self, direction: int) -> bool:
        return self._held == "both" or (self._held == "replies" and direction == _DOWN)

    # --- threads -----------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(client)
            with self._cond:
                if self._closed:
                    _reset(client)
                    return
                self._links.add(link)
            threading.Thread(target=self._connect, args=(link,), daemon=True).start()

    def _connect(self, link: _Link) -> None:
        """Connect ``link`` upstream once no partition holds it, then start its pumps."""
        with self._cond:
            while self._held == "both" and not link.dead:
                self._cond.wait()
            if link.dead:
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            with self._cond:
                link.dead = True
                self._links.discard(link)
            _reset(link.client)
            return
        upstream.settimeout(None)
        with self._cond:
            if link.is_dead():  # reset while connecting (not narrowed: other threads)
                _reset(upstream)
                return
            link.upstream = upstream
        for direction, source, sink in (
            (_UP, link.client, upstream),
            (_DOWN, upstream, link.client),
        ):
            threading.Thread(
                target=self._read, args=(link, direction, source), daemon=True
            ).start()
            threading.Thread(target=self._write, args=(link, direction, sink), daemon=True).start()

    def _read(self, link: _Link, direction: int, source: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            with self._cond:
                if link.dead:
                    return
                if data:
                    link.queues[direction].append(data)
                else:
                    link.eof[direction] = True
                self._cond.notify_all()
            if not data:
                return

    def _write(self, link: _Link, direction: int, sink: socket.socket) -> None:
        queue = link.queues[direction]
        while True:
            with self._cond:
                while not link.dead and (
                    self._holds(direction) or not (queue or link.eof[direction])
                ):
                    self._cond.wait()
                if link.dead:
                    return
                data = b"".join(queue)
                queue.clear()
                ended = not data and link.eof[direction]
                if ended:  # the source closed and everything before it was delivered
                    link.dead = True
                    self._links.discard(link)
                    self._cond.notify_all()
            if ended:
                for sock in link.sockets():
                    _close(sock)
                return
            try:
                sink.sendall(data)
            except OSError:
                with self._cond:
                    if link.dead:
                        return
                    link.dead = True
                    self._links.discard(link)
                    self._cond.notify_all()
                for sock in link.sockets():
                    _reset(sock)
                return
