"""The sockets port over a python-socketio server, written once (see
:mod:`presence_kit.socketio` for the servers each adapter wraps)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from presence_kit._errors import SocketsError
from presence_kit._socketio_support import (
    DEFAULT_PUBLISH_TIMEOUT,
    AsyncPublisher,
    async_checked_server,
    async_server_of,
    check_to,
    leave_locally,
    local_sids_of,
    publishes,
)

__all__ = ["AsyncSocketIORooms"]


class AsyncSocketIORooms:
    """The sockets port (:class:`~presence_kit.AsyncSockets`) over a python-socketio
    server: a ``socketio.AsyncServer``.

    Every call addresses ``namespace``; a failure is raised as
    :class:`~presence_kit.SocketsError` with the original as ``__cause__``. An emit
    through a pub/sub client manager waits at most ``publish_timeout`` seconds for its
    broker, then goes on in the background (``None``: it waits as long as the manager
    does).
    """

    def __init__(
        self,
        server: Any,
        namespace: str = "/",
        *,
        publish_timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        self._target = async_checked_server(server)
        self._namespace = namespace
        self._publish_timeout = publish_timeout
        self._publisher = AsyncPublisher()

    @property
    def late_emits(self) -> int:
        """Emits that waited ``publish_timeout`` for the broker and went on in the
        background (see the module's notes)."""
        return self._publisher.late

    @property
    def publishing(self) -> int:
        """Late emits still publishing in the background now."""
        return self._publisher.publishing

    @property
    def namespace(self) -> str:
        """The Socket.IO namespace every call addresses."""
        return self._namespace

    @property
    def server(self) -> Any:
        """The wrapped server (for Flask-SocketIO, its current ``.server``)."""
        return async_server_of(self._target)

    async def enter_room(self, sid: str, room: str) -> None:
        """Add ``sid`` to ``room`` (an unknown sid fails unless a pub/sub manager is used)."""
        server = self.server
        try:
            await server.enter_room(sid, room, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not add sid {sid!r} to room {room!r}") from exc

    async def leave_room(self, sid: str, room: str) -> None:
        """Remove ``sid`` from ``room`` (locally when this process holds it); a no-op for
        a sid that already left."""
        server = self.server
        try:
            if not leave_locally(server, sid, self._namespace, room):
                await server.leave_room(sid, room, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not remove sid {sid!r} from room {room!r}") from exc

    async def emit(self, event: str, data: Any, *, to: str) -> None:
        """Emit ``event`` to a room or a sid (a tuple ``data`` is sent as several args);
        through a pub/sub manager, waiting at most ``publish_timeout`` for its broker."""
        check_to(to)
        server, timeout = self.server, self._publish_timeout
        if timeout is not None and publishes(server):
            await self._publisher.emit(server, event, data, to, self._namespace, timeout)
            return
        try:
            await server.emit(event, data, to=to, namespace=self._namespace)
        except Exception as exc:
            raise SocketsError(f"could not emit {event!r} to {to!r}") from exc

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``target(*args)`` the server's way and return its handle: a task, a
        thread or a greenlet (whose ``join`` differs by server mode, so the kit never
        joins it, but waits with :meth:`sleep`).

        The caller must hold the handle until the task ends: neither the server nor
        this adapter keeps a reference to it.
        """
        try:
            return self.server.start_background_task(target, *args)
        except Exception as exc:
            raise SocketsError("could not start a background task") from exc

    async def sleep(self, seconds: float) -> None:
        """Sleep with the server's ``sleep`` (cooperative under asyncio, eventlet, gevent)."""
        await self.server.sleep(seconds)

    def local_sids(self) -> set[str]:
        """The sids connected to this process in the namespace (never other nodes').

        Includes sids whose connect or disconnect handler is still running.
        """
        return local_sids_of(self.server, self._namespace)
