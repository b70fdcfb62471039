"""Real python-socketio servers and clients over loopback, for adapter and e2e tests.

asyncio path
    :func:`running_async_server` runs ``socketio.AsyncServer(async_mode="aiohttp")``
    attached to an ``aiohttp.web`` app, served by ``web.AppRunner`` + ``web.TCPSite`` on
    ``127.0.0.1`` port 0 (the real port is read back from the runner).
    :meth:`AsyncServerHandle.connect_client` makes ``socketio.AsyncClient`` s over the
    ``websocket`` transport.

sync path
    :func:`running_threaded_server` runs ``socketio.Server(async_mode="threading")``
    wrapped in ``socketio.WSGIApp`` and served by Werkzeug's threaded dev server
    (``werkzeug.serving.make_server(..., threaded=True)``) in a daemon thread. Werkzeug is
    the one stdlib-like WSGI server that exposes the raw socket (``werkzeug.socket``) that
    ``simple-websocket`` needs for the websocket upgrade; ``wsgiref`` does not, and
    Flask-SocketIO's ``socketio.run`` blocks the thread with no clean way to stop it
    (``make_server`` gives us ``shutdown()``). :meth:`ThreadedServerHandle.connect_client`
    makes ``socketio.Client`` s. The sync client needs the ``websocket-client`` package for
    the websocket transport; it is not a test dependency, so sync clients long-poll
    (``requests``) unless it is importable. Async clients (which do speak websocket)
    can connect to the threaded server too (:func:`connect_async_client` with its ``url``);
    that exercises Werkzeug's websocket upgrade.

Clients record every event they receive (a catch-all ``"*"`` handler; python-socketio's
client catch-all never sees the reserved ``connect``/``connect_error``/``disconnect``,
which are recorded by explicit handlers as ``"connect"`` and ``"disconnect"`` with the
reason). ``wait_for(name)`` returns the next not-yet-returned occurrence of ``name``.

To assert that a client did *not* receive something, emit a barrier after it
(``barrier``): packets on one connection arrive in order, so once the barrier is in,
anything sent before it is too. The sync client runs each handler in its own thread, so
its barrier also waits a short settle time.

Teardown disconnects every client the handle made, closes leftover server sockets, stops
the server's background service task and the web server, so no thread, task or socket
outlives the context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = [
    "AsyncServerHandle",
    "RecordingAsyncClient",
    "RecordingClient",
    "ThreadedServerHandle",
    "connect_async_client",
    "eventually",
    "eventually_sync",
    "running_async_server",
    "running_threaded_server",
]

BARRIER_EVENT = "__harness_barrier__"
_tokens = itertools.count(1)


def _sync_transports() -> list[str]:
    has_websocket_client = importlib.util.find_spec("websocket") is not None
    return ["websocket"] if has_websocket_client else ["polling"]


Event = tuple[str, tuple[Any, ...]]


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``predicate`` on the loop until it is true; ``AssertionError`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f}s")
        await asyncio.sleep(0.005)


def eventually_sync(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Blocking :func:`eventually`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f}s")
        time.sleep(0.005)


def _all_closed(sio: Any) -> bool:
    # A closed engine.io socket may linger in ``eio.sockets`` until the service task
    # purges it (threading mode + Werkzeug websocket never removes it inline).
    return all(sock.closed for sock in list(sio.eio.sockets.values()))


# --------------------------------------------------------------------------- asyncio


class RecordingAsyncClient:
    """A ``socketio.AsyncClient`` that records every event it receives."""

    def __init__(self, client_kwargs: dict[str, Any] | None = None) -> None:
        self.client = socketio.AsyncClient(reconnection=False, **(client_kwargs or {}))
        self.events: list[Event] = []
        self._cursor: dict[str, int] = {}
        self._changed = asyncio.Event()

        async def on_any(event: str, *args: Any) -> None:
            self._record(event, args)

        async def on_connect() -> None:
            self._record("connect", ())

        async def on_disconnect(reason: Any = None) -> None:
            self._record("disconnect", (reason,))

        self.client.on("*", on_any)
        self.client.on("connect", on_connect)
        self.client.on("disconnect", on_disconnect)

    def _record(self, event: str, args: tuple[Any, ...]) -> None:
        self.events.append((event, args))
        self._changed.set()

    @property
    def sid(self) -> str:
        sid = self.client.get_sid()
        assert sid is not None, "client is not connected"
        return str(sid)

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def received(self, event: str) -> list[tuple[Any, ...]]:
        """The argument tuples of every ``event`` received so far."""
        return [args for name, args in self.events if name == event]

    def names(self, *, include_internal: bool = False) -> list[str]:
        """Event names in arrival order (barriers, connect and disconnect left out)."""
        skip = set() if include_internal else {BARRIER_EVENT, "connect", "disconnect"}
        return [name for name, _ in self.events if name not in skip]

    async def wait_for(self, event: str, timeout: float = 3.0) -> tuple[Any, ...]:
        """Return the args of the next occurrence of ``event`` not returned before."""

        async def _wait() -> tuple[Any, ...]:
            while True:
                seen = self._cursor.get(event, 0)
                hits = self.received(event)
                if len(hits) > seen:
                    self._cursor[event] = seen + 1
                    return hits[seen]
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"no {event!r} within {timeout}s; received {self.names()}"
            ) from None

    async def disconnect(self) -> None:
        await self.client.disconnect()


async def connect_async_client(
    url: str,
    auth: dict[str, Any] | None = None,
    *,
    transports: Sequence[str] = ("websocket",),
    namespaces: Sequence[str] | None = None,
    **client_kwargs: Any,
) -> RecordingAsyncClient:
    """Connect a recording ``socketio.AsyncClient`` to any server; the caller disconnects it."""
    rc = RecordingAsyncClient(client_kwargs)
    try:
        await rc.client.connect(
            url,
            auth=auth,
            transports=list(transports),
            namespaces=list(namespaces) if namespaces else None,
            wait_timeout=5,
        )
    except BaseException:
        await rc.client.disconnect()
        raise
    return rc


@dataclass
class AsyncServerHandle:
    """What :func:`running_async_server` yields."""

    sio: Any
    url: str
    clients: list[RecordingAsyncClient] = field(default_factory=list)

    async def connect_client(
        self,
        auth: dict[str, Any] | None = None,
        *,
        transports: Sequence[str] = ("websocket",),
        namespaces: Sequence[str] | None = None,
        **client_kwargs: Any,
    ) -> RecordingAsyncClient:
        """Connect a new recording client (torn down with the server)."""
        rc = await connect_async_client(
            self.url, auth, transports=transports, namespaces=namespaces, **client_kwargs
        )
        self.clients.append(rc)
        return rc

    async def barrier(self, *clients: RecordingAsyncClient, namespace: str = "/") -> None:
        """Return once everything the server sent the clients before now has arrived."""
        token = next(_tokens)
        for c in clients:
            await self.sio.emit(BARRIER_EVENT, token, to=c.sid, namespace=namespace)
        for c in clients:
            while (await c.wait_for(BARRIER_EVENT)) != (token,):
                pass


@contextlib.asynccontextmanager
async def running_async_server(
    setup: Callable[[Any], Awaitable[None] | None] | None = None, **server_kwargs: Any
) -> AsyncIterator[AsyncServerHandle]:
    """Run a real ``socketio.AsyncServer`` on aiohttp at ``127.0.0.1:<free port>``.

    ``setup(sio)`` (sync or async) registers handlers before the first request;
    ``server_kwargs`` go to ``socketio.AsyncServer`` (``async_mode`` is ``"aiohttp"``).
    """
    server_kwargs.setdefault("async_mode", "aiohttp")
    sio = socketio.AsyncServer(**server_kwargs)
    if setup is not None:
        result = setup(sio)
        if inspect.isawaitable(result):
            await result
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    handle: AsyncServerHandle | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        handle = AsyncServerHandle(sio=sio, url=f"http://{host}:{port}")
        yield handle
    finally:
        if handle is not None:
            for c in handle.clients:
                with contextlib.suppress(Exception):
                    await c.disconnect()
        await _close_async_server_sockets(sio)
        await sio.shutdown()
        await runner.cleanup()
        await _cancel_ping_tasks(sio)


async def _close_async_server_sockets(sio: Any) -> None:
    # Let the server process the clients' close packets first. Never use
    # ``eio.disconnect()``: it closes with ``wait=True``, which waits forever for a
    # client that is already gone to drain the send queue (and raises on no sockets).
    with contextlib.suppress(AssertionError):
        await eventually(lambda: _all_closed(sio), timeout=2.0)
    for sock in list(sio.eio.sockets.values()):
        if not sock.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.close(wait=False), 1.0)


async def _cancel_ping_tasks(sio: Any) -> None:
    # engine.io schedules each ping as a fire-and-forget task that sleeps
    # ``ping_interval`` (25 s) even after its socket closed; cancel this server's.
    def ours(task: asyncio.Task[Any]) -> bool:
        coro = task.get_coro()
        if getattr(coro, "__qualname__", "") != "AsyncSocket._send_ping":
            return False
        frame = getattr(coro, "cr_frame", None)
        sock = frame.f_locals.get("self") if frame is not None else None
        return getattr(sock, "server", None) is sio.eio

    pings = [t for t in asyncio.all_tasks() if ours(t)]
    for t in pings:
        t.cancel()
    await asyncio.gather(*pings, return_exceptions=True)


# --------------------------------------------------------------------------- threads


class RecordingClient:
    """A blocking ``socketio.Client`` that records every event it receives."""

    def __init__(self, client_kwargs: dict[str, Any] | None = None) -> None:
        self.client = socketio.Client(reconnection=False, **(client_kwargs or {}))
        self.events: list[Event] = []
        self._cursor: dict[str, int] = {}
        self._cond = threading.Condition()

        def on_any(event: str, *args: Any) -> None:
            self._record(event, args)

        def on_connect() -> None:
            self._record("connect", ())

        def on_disconnect(reason: Any = None) -> None:
            self._record("disconnect", (reason,))

        self.client.on("*", on_any)
        self.client.on("connect", on_connect)
        self.client.on("disconnect", on_disconnect)

    def _record(self, event: str, args: tuple[Any, ...]) -> None:
        with self._cond:
            self.events.append((event, args))
            self._cond.notify_all()

    @property
    def sid(self) -> str:
        sid = self.client.get_sid()
        assert sid is not None, "client is not connected"
        return str(sid)

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    def received(self, event: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [args for name, args in self.events if name == event]

    def names(self, *, include_internal: bool = False) -> list[str]:
        skip = set() if include_internal else {BARRIER_EVENT, "connect", "disconnect"}
        with self._cond:
            return [name for name, _ in self.events if name not in skip]

    def wait_for(self, event: str, timeout: float = 3.0) -> tuple[Any, ...]:
        """Return the args of the next occurrence of ``event`` not returned before."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = self._cursor.get(event, 0)
                hits = [args for name, args in self.events if name == event]
                if len(hits) > seen:
                    self._cursor[event] = seen + 1
                    return hits[seen]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {event!r} within {timeout}s; received {self.names()}"
                    )
                self._cond.wait(left)

    def disconnect(self) -> None:
        self.client.disconnect()


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


@dataclass
class ThreadedServerHandle:
    """What :func:`running_threaded_server` yields."""

    sio: Any
    url: str
    clients: list[RecordingClient] = field(default_factory=list)

    def connect_client(
        self,
        auth: dict[str, Any] | None = None,
        *,
        transports: Sequence[str] | None = None,
        namespaces: Sequence[str] | None = None,
        **client_kwargs: Any,
    ) -> RecordingClient:
        """Connect a new recording ``socketio.Client`` (torn down with the server)."""
        rc = RecordingClient(client_kwargs)
        try:
            rc.client.connect(
                self.url,
                auth=auth,
                transports=list(transports or _sync_transports()),
                namespaces=list(namespaces) if namespaces else None,
                wait_timeout=5,
            )
        except BaseException:
            rc.client.disconnect()
            raise
        self.clients.append(rc)
        return rc

    def barrier(
        self, *clients: RecordingClient, namespace: str = "/", settle: float = 0.05
    ) -> None:
        """Return once everything sent to the clients before now has been handled."""
        token = next(_tokens)
        for c in clients:
            self.sio.emit(BARRIER_EVENT, token, to=c.sid, namespace=namespace)
        for c in clients:
            while c.wait_for(BARRIER_EVENT) != (token,):
                pass
        # socketio.Client runs every handler in a new thread: let earlier ones finish.
        time.sleep(settle)


@contextlib.contextmanager
def running_threaded_server(
    setup: Callable[[Any], None] | None = None, **server_kwargs: Any
) -> Iterator[ThreadedServerHandle]:
    """Run a real ``socketio.Server(async_mode="threading")`` on Werkzeug in a thread."""
    server_kwargs.setdefault("async_mode", "threading")
    sio = socketio.Server(**server_kwargs)
    # engine.io's per-socket ping thread sleeps ``ping_interval`` (25 s) with
    # ``time.sleep`` even after its socket closed. Give this server (only: ``_async`` is
    # a module-level dict, so copy it) a sleep that teardown can interrupt.
    stopping = threading.Event()

    def _sleep(seconds: float = 0) -> None:
        stopping.wait(seconds)

    sio.eio._async = {**sio.eio._async, "sleep": _sleep}
    if setup is not None:
        setup(sio)
    httpd: BaseWSGIServer = make_server(
        "127.0.0.1", 0, socketio.WSGIApp(sio), threaded=True, request_handler=_QuietHandler
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="sio-harness-wsgi"
    )
    thread.daemon = True
    thread.start()
    handle = ThreadedServerHandle(sio=sio, url=f"http://127.0.0.1:{httpd.port}")
    try:
        yield handle
    finally:
        for c in handle.clients:
            with contextlib.suppress(Exception):
                c.disconnect()
        # As in the asyncio path: never ``eio.disconnect()`` (it can wait forever).
        with contextlib.suppress(AssertionError):
            eventually_sync(lambda: _all_closed(sio), timeout=2.0)
        for sock in list(sio.eio.sockets.values()):
            if not sock.closed:
                with contextlib.suppress(Exception):
                    sock.close(wait=False)
        stopping.set()
        sio.shutdown()
        httpd.shutdown()
        thread.join(timeout=5)
        httpd.server_close()
