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

from ._async.socketio_rooms import AsyncSocketIORooms
from ._socketio_support import DEFAULT_PUBLISH_TIMEOUT
from ._sync.socketio_rooms import SocketIORooms

__all__ = ["DEFAULT_PUBLISH_TIMEOUT", "AsyncSocketIORooms", "SocketIORooms"]
