"""What the python-socketio adapters share, and what differs between the two.

The adapter is written once (:mod:`presence_kit._async.socketio_rooms`, made blocking
by ``.ci/unasync.py``); here are the helpers both call, and the pairs that differ:
which servers each wraps (:func:`async_server_of` / :func:`server_of`: a Flask-SocketIO
``SocketIO`` is looked up at call time) and how an emit stops waiting for a pub/sub
broker (:class:`AsyncPublisher`: an asyncio task; :class:`Publisher`: one of the
server's background tasks, thread or greenlet).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from ._errors import InvalidInputError, SocketsError

__all__ = [
    "DEFAULT_PUBLISH_TIMEOUT",
    "AsyncPublisher",
    "Publisher",
    "async_checked_server",
    "async_server_of",
    "check_to",
    "checked_server",
    "leave_locally",
    "local_sids_of",
    "publishes",
    "server_of",
]

logger = logging.getLogger("presence_kit")

DEFAULT_PUBLISH_TIMEOUT = 0.5
"""Seconds an emit waits for a pub/sub client manager's broker before it goes on in
the background (the handler returns)."""


def _is_server(obj: Any) -> bool:
    return hasattr(obj, "manager") and hasattr(obj, "eio")


def _is_asyncio(server: Any) -> bool:
    check = getattr(server, "is_asyncio_based", None)
    return bool(check()) if callable(check) else False


def async_checked_server(server: Any) -> Any:
    """``server`` if it is a ``socketio.AsyncServer``, else ``TypeError``."""
    if not _is_server(server) or not _is_asyncio(server):
        raise TypeError(
            f"expected a socketio.AsyncServer, got {type(server).__name__}"
            " (use SocketIORooms for blocking servers)"
        )
    return server


def checked_server(server: Any) -> Any:
    """``server`` if it is a blocking ``socketio.Server`` or a Flask-SocketIO
    ``SocketIO`` (whose ``.server`` may come later, with ``init_app``), else
    ``TypeError``."""
    if _is_server(server):
        if _is_asyncio(server):
            raise TypeError("SocketIORooms needs a blocking server; use AsyncSocketIORooms")
    elif not hasattr(server, "server"):
        raise TypeError(
            f"expected a socketio.Server or a flask_socketio.SocketIO, got {type(server).__name__}"
        )
    return server


def async_server_of(target: Any) -> Any:
    """The ``socketio.AsyncServer`` the adapter wraps: ``target`` itself."""
    return target


def server_of(target: Any) -> Any:
    """The ``socketio.Server``: ``target``, or a Flask-SocketIO object's current
    ``.server`` (:class:`~presence_kit.SocketsError` before ``init_app``)."""
    if _is_server(target):
        return target
    server = target.server
    if server is None:
        raise SocketsError(
            "the Flask-SocketIO SocketIO object has no server yet; call init_app(app) first"
        )
    return server


def check_to(to: str) -> None:
    """Refuse an emit without a target: python-socketio would broadcast it to the
    whole namespace."""
    if not isinstance(to, str) or not to:
        raise InvalidInputError("to", "must be a non-empty room name or sid")


def publishes(server: Any) -> bool:
    """The server's client manager forwards emits to other hosts through a broker."""
    # python-socketio: the adapters' own dependency, imported when first needed
    from socketio.async_pubsub_manager import AsyncPubSubManager
    from socketio.pubsub_manager import PubSubManager

    return isinstance(server.manager, (PubSubManager, AsyncPubSubManager))


def leave_locally(server: Any, sid: str, namespace: str, room: str) -> bool:
    """Leave ``room`` here if this process holds ``sid`` (connected, or in its connect or
    disconnect handler); ``False``: the sid is not ours (a pub/sub manager publishes)."""
    manager = server.manager
    if manager.eio_sid_from_sid(sid, namespace) is None:
        return False
    manager.basic_leave_room(sid, namespace, room)
    return True


def local_sids_of(server: Any, namespace: str) -> set[str]:
    """The sids this process holds in ``namespace``."""
    try:
        return {sid for sid, _eio_sid in server.manager.get_participants(namespace, None)}
    except KeyError:
        # The namespace's last sid left between the manager's membership test and its
        # lookup (threaded servers): the namespace was empty at that moment.
        return set()
    except Exception as exc:
        raise SocketsError(f"could not list the sids of namespace {namespace!r}") from exc


def _log_late_emit(event: str, exc: BaseException) -> None:
    logger.warning(
        "presence emit %r failed after it went on in the background",
        event,
        exc_info=exc,
        extra={"presence_event": event},
    )


def _emit_failed(event: str, to: str) -> SocketsError:
    return SocketsError(f"could not emit {event!r} to {to!r}")


class AsyncPublisher:
    """Emits through a pub/sub manager that wait at most ``timeout`` seconds for the
    broker, then finish as asyncio tasks (referenced until done)."""

    def __init__(self) -> None:
        self.late = 0
        """Emits that went on in the background."""
        self._publishing: set[asyncio.Future[Any]] = set()

    @property
    def publishing(self) -> int:
        """Late emits still on their way."""
        return len(self._publishing)

    async def emit(
        self, server: Any, event: str, data: Any, to: str, namespace: str, timeout: float
    ) -> None:
        """Emit, waiting at most ``timeout``; its failure (in time) raised as
        :class:`~presence_kit.SocketsError`, a late one logged."""
        try:
            task = asyncio.ensure_future(server.emit(event, data, to=to, namespace=namespace))
            await asyncio.wait((task,), timeout=timeout)
        except Exception as exc:
            raise _emit_failed(event, to) from exc
        if task.done():
            if task.exception() is not None:
                raise _emit_failed(event, to) from task.exception()
            return
        self.late += 1
        self._publishing.add(task)
        task.add_done_callback(lambda t: self._late_done(event, t))

    def _late_done(self, event: str, task: asyncio.Future[Any]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log_late_emit(event, exc)


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


class Publisher:
    """:class:`AsyncPublisher` for a blocking server: the emit runs as one of the
    server's background tasks (thread or greenlet), waited for with the server's own
    kind of event."""

    def __init__(self) -> None:
        self.late = 0
        """Emits that went on in the background."""
        self.publishing = 0
        """Late emits still on their way."""
        self._lock = threading.Lock()

    def _late_done(self) -> None:
        with self._lock:
            self.publishing -= 1

    def emit(
        self, server: Any, event: str, data: Any, to: str, namespace: str, timeout: float
    ) -> None:
        """Emit, waiting at most ``timeout``; its failure (in time) raised as
        :class:`~presence_kit.SocketsError`, a late one logged."""
        emit = _BackgroundEmit(
            event, lambda: server.emit(event, data, to=to, namespace=namespace), self._late_done
        )
        with self._lock:  # counted before it can finish late
            self.publishing += 1
        done = server.eio.create_event()  # the server's kind of event, and of task
        server.start_background_task(emit.run, done)
        abandoned = not done.wait(timeout) and emit.abandon()
        with self._lock:
            if abandoned:
                self.late += 1
            else:
                self.publishing -= 1
        if not abandoned and emit.error is not None:
            raise _emit_failed(event, to) from emit.error
