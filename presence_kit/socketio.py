"""Adapters from python-socketio servers to the :class:`~presence_kit.Sockets` ports.

Supported servers (python-socketio 5.x):

* :class:`SocketIORooms` wraps a blocking ``socketio.Server`` (any ``async_mode``:
  threading, eventlet, gevent) or a Flask-SocketIO ``SocketIO`` object. The latter's
  ``.server`` is looked up at call time, so the adapter may be built before
  ``init_app``; calling it before ``init_app`` raises :class:`~presence_kit.SocketsError`.
* :class:`AsyncSocketIORooms` wraps a ``socketio.AsyncServer`` (aiohttp, ASGI, tornado,
  sanic).

Both are thin: each call is forwarded to the server in ``namespace`` and any failure is
re-raised as :class:`~presence_kit.SocketsError` with the original as ``__cause__``.
Leaving a room is a no-op for a sid that is unknown or already gone (python-socketio
ignores it); with the default manager, entering a room for such a sid fails with
``SocketsError``. A pub/sub manager publishes both for a sid it does not hold locally
(it may live on another node), so neither fails.

Multi-node deployments need a client manager on every node (``socketio.AsyncRedisManager``
or ``socketio.RedisManager``, or Flask-SocketIO's ``message_queue=``) so that an emit
reaches clients connected to other nodes. Those emits travel over pub/sub and are
at-most-once: a node that is disconnected from the broker when a message is published
never sees it. :meth:`SocketIORooms.local_sids` always answers for this process only.

Such a manager's connection to its broker has no timeout of its own, so a network
partition would stall a handler in it. Both adapters keep handlers off it where they
can: a room of a sid this process holds is left locally (in a disconnect handler
python-socketio already counts the sid as gone, and its pub/sub manager would publish
the leave to the other hosts instead), and an emit through a pub/sub manager waits at
most ``publish_timeout`` seconds for the broker: the local clients have it by then,
and the publish finishes in the background (counted in :attr:`SocketIORooms.late_emits`, a failure
logged).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import InvalidInputError, SocketsError

__all__ = ["DEFAULT_PUBLISH_TIMEOUT", "AsyncSocketIORooms", "SocketIORooms"]

logger = logging.getLogger("presence_kit")

DEFAULT_PUBLISH_TIMEOUT = 0.5
"""Seconds an emit waits for a pub/sub client manager's broker before it goes on in
the background (the handler returns)."""


def _is_server(obj: Any) -> bool:
    return hasattr(obj, "manager") and hasattr(obj, "eio")


def _is_asyncio(server: Any) -> bool:
    check = getattr(server, "is_asyncio_based", None)
    return bool(check()) if callable(check) else False


def _check_to(to: str) -> None:
    # python-socketio broadcasts to the whole namespace when ``to`` is falsy.
    if not isinstance(to, str) or not to:
        raise InvalidInputError("to", "must be a non-empty room name or sid")


def _publishes(server: Any) -> bool:
    """The server's client manager forwards emits to other hosts through a broker."""
    # python-socketio: the adapters' own dependency, imported when first needed
    from socketio.async_pubsub_manager import AsyncPubSubManager
    from socketio.pubsub_manager import PubSubManager

    return isinstance(server.manager, (PubSubManager, AsyncPubSubManager))


def _leave_locally(server: Any, sid: str, namespace: str, room: str) -> bool:
    """Leave ``room`` here if this process holds ``sid`` (connected, or in its connect or
    disconnect handler); ``False``: the sid is not ours (a pub/sub manager publishes)."""
    manager = server.manager
    if manager.eio_sid_from_sid(sid, namespace) is None:
        return False
    manager.basic_leave_room(sid, namespace, room)
    return True


def _log_late_emit(event: str, exc: BaseException) -> None:
    logger.warning(
        "presence emit %r failed after it went on in the background",
        event,
        exc_info=exc,
        extra={"presence_event": event},
    )


class _BackgroundEmit:
    """A blocking server's emit, run as one of its background tasks so that the
    handler can stop waiting for it: then its failure is logged, not raised."""

    def __init__(
        self, event: str, send: Callable[[], object], finished_late: Callable[[], None]
    ) -> None:
        self._event, self._send, self._finished_late = event, send, finished_late
        self._lock = threading.Lock()
        self._finished = self._abandoned = False
        self.error: Exception | None = None

    def run(self, done: Any) -> None:
        try:
            self._send()
        except Exception as exc:
            self.error = exc
        with self._lock:
            self._finished, abandoned = True, self._abandoned
        done.set()
        if abandoned:
            self._finished_late()
            if self.error is not None:
                _log_late_emit(self._event, self.error)

    def abandon(self) -> bool:
        """Stop waiting, unless it finished meanwhile (``False``: its outcome stands)."""
        with self._lock:
            self._abandoned = not self._finished
            return self._abandoned


def _local_sids(server: Any, namespace: str) -> set[str]:
    try:
        return {sid for sid, _eio_sid in server.manager.get_participants(namespace, None)}
    except KeyError:
        # The namespace's last sid left between the manager's membership test and its
        # lookup (threaded servers): the namespace was empty at that moment.
        return set()
    except Exception as exc:
        raise SocketsError(f"could not list the sids of namespace {namespace!r}") from exc


class SocketIORooms:
    """:class:`~presence_kit.Sockets` over a ``socketio.Server`` or Flask-SocketIO ``SocketIO``.

    ``start_background_task`` and ``sleep`` use the server's concurrency model (a thread,
    an eventlet or gevent greenlet), so they are safe inside its handlers.
    """

    def __init__(
        self,
        server: Any,
        namespace: str = "/",
        *,
        publish_timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        if _is_server(server):
            if _is_asyncio(server):
                raise TypeError("SocketIORooms needs a blocking server; use AsyncSocketIORooms")
        elif not hasattr(server, "server"):
            raise TypeError(
                "expected a socketio.Server or a flask_socketio.SocketIO, "
                f"got {type(server).__name__}"
            )
        self._target: Any = server
        self._namespace = namespace
        self._publish_timeout = publish_timeout
        self._late = 0
        self._publishing = 0
        self._lock = threading.Lock()

    @property
    def late_emits(self) -> int:
        """Emits that waited ``publish_timeout`` for the broker and went on in the
        background (see the module's notes)."""
        return self._late

    @property
    def publishing(self) -> int:
        """Late emits still publishing in the background now."""
        return self._publishing

    def _late_done(self) -> None:
        with self._lock:
            self._publishing -= 1

    @property
    def namespace(self) -> str:
        """The Socket.IO namespace every call addresses."""
        return self._namespace

    @property
    def server(self) -> Any:
        """The ``socketio.Server`` (for Flask-SocketIO, its current ``.server``)."""
        if _is_server(self._target):
            return self._target
        server = self._target.server
        if server is None:
            raise SocketsError(
                "the Flask-SocketIO SocketIO object has no server yet; call init_app(app) first"
            )
        return server

    def enter_room(self, sid: str, room: str) -> None:
        """Add ``sid`` to ``room`` (an unknown sid fails unless a pub/sub manager is used)."""
        server = self.server
        try:
            server.enter_room(sid, room, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not add sid {sid!r} to room {room!r}") from exc

    def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room`` (locally when this process holds it); a no-op for
        a sid that already left."""
        server = self.server
        try:
            if not _leave_locally(server, sid, self._namespace, room):
                server.leave_room(sid, room, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not remove sid {sid!r} from room {room!r}") from exc

    def emit(self, event: str, data: Any, *, to: str) -> None:
        """Emit ``event`` to a room or a sid (a tuple ``data`` is sent as several args);
        through a pub/sub manager, waiting at most ``publish_timeout`` for its broker."""
        _check_to(to)
        server = self.server
        if self._publish_timeout is None or not _publishes(server):
            try:
                server.emit(event, data, to=to, namespace=self._namespace)
            except Exception as exc:
                raise SocketsError(f"could not emit {event!r} to {to!r}") from exc
            return
        namespace = self._namespace
        emit = _BackgroundEmit(
            event, lambda: server.emit(event, data, to=to, namespace=namespace), self._late_done
        )
        with self._lock:  # counted before it can finish late
            self._publishing += 1
        done = server.eio.create_event()  # the server's kind of event, and of task
        server.start_background_task(emit.run, done)
        abandoned = not done.wait(self._publish_timeout) and emit.abandon()
        with self._lock:
            if abandoned:
                self._late += 1
            else:
                self._publishing -= 1
        if abandoned:
            return
        if emit.error is not None:
            raise SocketsError(f"could not emit {event!r} to {to!r}") from emit.error

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> Any:
        """Run ``target(*args)`` via the server; return its handle.

        The handle's ``join`` differs by ``async_mode`` (a thread's takes a timeout,
        engine.io's eventlet one takes none), so the kit never joins it: it waits for
        its background loop with :meth:`sleep` instead.
        """
        server = self.server
        try:
            return server.start_background_task(target, *args)
        except Exception as exc:
            raise SocketsError("could not start a background task") from exc

    def sleep(self, seconds: float) -> None:
        """Sleep with the server's ``sleep`` (cooperative under eventlet/gevent)."""
        self.server.sleep(seconds)

    def local_sids(self) -> set[str]:
        """The sids connected to this process in the namespace (never other nodes').

        Includes sids whose connect or disconnect handler is still running.
        """
        return _local_sids(self.server, self._namespace)


class AsyncSocketIORooms:
    """:class:`~presence_kit.AsyncSockets` over a ``socketio.AsyncServer``."""

    def __init__(
        self,
        server: Any,
        namespace: str = "/",
        *,
        publish_timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        if not _is_server(server) or not _is_asyncio(server):
            raise TypeError(
                f"expected a socketio.AsyncServer, got {type(server).__name__}"
                " (use SocketIORooms for blocking servers)"
            )
        self._server: Any = server
        self._namespace = namespace
        self._publish_timeout = publish_timeout
        self._late = 0
        self._publishing: set[asyncio.Task[Any]] = set()  # referenced until done

    @property
    def late_emits(self) -> int:
        """Emits that waited ``publish_timeout`` for the broker and went on in the
        background (see the module's notes)."""
        return self._late

    @property
    def publishing(self) -> int:
        """Late emits still publishing in the background now."""
        return len(self._publishing)

    @property
    def namespace(self) -> str:
        """The Socket.IO namespace every call addresses."""
        return self._namespace

    @property
    def server(self) -> Any:
        """The wrapped ``socketio.AsyncServer``."""
        return self._server

    async def enter_room(self, sid: str, room: str) -> None:
        """Add ``sid`` to ``room`` (an unknown sid fails unless a pub/sub manager is used)."""
        try:
            await self._server.enter_room(sid, room, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not add sid {sid!r} to room {room!r}") from exc

    async def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room`` (locally when this process holds it); a no-op for
        a sid that already left."""
        server = self._server
        try:
            if not _leave_locally(server, sid, self._namespace, room):
                await server.leave_room(sid, room, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not remove sid {sid!r} from room {room!r}") from exc

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        """Emit ``event`` to a room or a sid (a tuple ``data`` is sent as several args);
        through a pub/sub manager, waiting at most ``publish_timeout`` for its broker."""
        _check_to(to)
        server = self._server
        try:
            if self._publish_timeout is None or not _publishes(server):
                await server.emit(event, data, to=to, namespace=self._namespace)
                return
            task = asyncio.ensure_future(
                server.emit(event, data, to=to, namespace=self._namespace)
            )
            await asyncio.wait((task,), timeout=self._publish_timeout)
        except Exception as exc:
            raise SocketsError(f"could not emit {event!r} to {to!r}") from exc
        if task.done():
            if task.exception() is not None:
                raise SocketsError(f"could not emit {event!r} to {to!r}") from task.exception()
            return
        self._late += 1
        self._publishing.add(task)
        task.add_done_callback(lambda t: self._late_done(event, t))

    def _late_done(self, event: str, task: asyncio.Task[Any]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log_late_emit(event, task.exception())  # type: ignore[arg-type]

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start ``target(*args)`` on the running loop and return the ``asyncio.Task``.

        Neither the server nor this adapter keeps a reference to the task: the caller
        must hold it until it finishes, or the loop may garbage-collect it mid-run.
        """
        try:
            return self._server.start_background_task(target, *args)
        except Exception as exc:
            raise SocketsError("could not start a background task") from exc

    async def sleep(self, seconds: float) -> None:
        """Sleep without blocking the loop."""
        await self._server.sleep(seconds)

    def local_sids(self) -> set[str]:
        """The sids connected to this process in the namespace (never other nodes').

        Includes sids whose connect or disconnect handler is still running.
        """
        return _local_sids(self._server, self._namespace)
