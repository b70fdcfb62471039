"""What truly differs between the asyncio and the blocking code, one name per side.

Everything else is written once, as asyncio code in :mod:`presence_kit._async`, and
made blocking by ``.ci/unasync.py`` (``AsyncX`` becomes ``X``, ``async_x`` becomes
``x``, ``await`` goes). So each pair here has the same shape:

* :class:`AsyncStarted` / :class:`Started`: a call started now and collected later.
  asyncio runs it meanwhile (a sweep's next round trip while the last one's leaves
  are announced); the blocking side has made it already, and keeps its failure for
  :meth:`~Started.result`.
* :class:`AsyncBackground` / :class:`Background`: the kit's background loop, started
  by the server's own means (the sockets port) and stopped: a task is cancelled, a
  thread or greenlet is asked to stop and waited for.
* :func:`async_run_blocking` / :func:`run_blocking`: a blocking call (the analytics
  flush) off the event loop, or just made.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, ParamSpec, TypeVar, cast

from ._async.ports import AsyncSockets, AsyncStore
from ._ports import DeclaresBlocking

if TYPE_CHECKING:
    from ._sync.ports import Sockets, Store

__all__ = [
    "AsyncBackground",
    "AsyncStarted",
    "Background",
    "Started",
    "async_run_blocking",
    "async_store_for",
    "run_blocking",
    "store_for",
]

T = TypeVar("T")
P = ParamSpec("P")

logger = logging.getLogger("presence_kit")

_STOP_POLL_INTERVAL = 0.01
"""Seconds between looks at a blocking background's done flag while it stops."""


class AsyncStarted(Generic[T]):
    """``fn(*args)`` started now as a task; :meth:`result` awaits it."""

    __slots__ = ("_task",)

    def __init__(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> None:
        self._task: asyncio.Future[T] = asyncio.ensure_future(fn(*args, **kwargs))

    async def result(self) -> T:
        """What the call returned (its failure raised here)."""
        return await self._task


class Started(Generic[T]):
    """``fn(*args)`` made now; :meth:`result` returns what it returned, or raises its
    failure (as :class:`AsyncStarted` would when collected)."""

    __slots__ = ("_failure", "_value")

    def __init__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> None:
        self._failure: Exception | None = None
        try:
            self._value: T | None = fn(*args, **kwargs)
        except Exception as exc:
            self._value, self._failure = None, exc

    def result(self) -> T:
        """What the call returned (its failure raised here)."""
        if self._failure is not None:
            raise self._failure
        return self._value  # type: ignore[return-value]  # set whenever there is no failure


class AsyncBackground:
    """The kit's background loop as an asyncio task (started by the sockets port)."""

    def __init__(self, sockets: AsyncSockets, loop: Callable[[], Awaitable[None]]) -> None:
        self._task = sockets.start_background_task(loop)

    async def stop(self, bound: float) -> None:
        """Cancel the task and wait for it to end (``bound`` is the blocking side's).

        The loop's own end (its cancellation, a failure) is not raised here; a
        cancellation of the caller is, after the task has been cancelled too."""
        task = self._task
        if not isinstance(task, asyncio.Future) or task.done():
            return
        task.cancel()
        await asyncio.wait([task])


class Background:
    """The kit's background loop in the server's thread or greenlet (sockets port)."""

    def __init__(self, sockets: Sockets, loop: Callable[[], None]) -> None:
        self._sockets = sockets
        self._done = False
        self._task = sockets.start_background_task(self._run, loop)

    def _run(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        finally:
            self._done = True

    def stop(self, bound: float) -> None:
        """Wait at most ``bound`` seconds for the loop to see the kit stopping and end.

        It polls a done flag with the port's own sleep: a thread's handle takes
        ``join(timeout)``, but engine.io's eventlet handle only ``join()`` (unbounded),
        and a bare sleep is the one primitive every concurrency model gives
        cooperatively. No handle (the port started nothing, e.g. RecordingSockets):
        nothing to wait for."""
        if self._task is None:
            return
        deadline = time.monotonic() + bound
        while not self._done:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("presence background did not stop within %.1fs", bound)
                return
            self._sockets.sleep(min(_STOP_POLL_INTERVAL, left))


async def async_run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args)`` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args)``, here (the blocking side of :func:`async_run_blocking`)."""
    return fn(*args, **kwargs)


def async_store_for(store: AsyncStore | Store | None) -> AsyncStore:
    """The store port of an asyncio kit: ``store`` itself if it is an async store; a
    store that declares it never blocks (the in-memory one, the default), its calls
    made awaitable; a blocking one refused (``TypeError``)."""
    from ._inline import inline_async_store
    from .memory import MemoryStore

    if store is None:
        return inline_async_store(MemoryStore())
    if isinstance(store, AsyncStore) and inspect.iscoroutinefunction(store.connect):
        return store
    if isinstance(store, DeclaresBlocking) and store.blocking is False:
        return inline_async_store(cast("Store", store))
    raise TypeError(
        f"{type(store).__name__} blocks; AsyncPresenceKit needs an async store "
        "(presence_kit.redis.AsyncRedisStore) or the in-memory MemoryStore"
    )


def store_for(store: Store | None) -> Store:
    """The store port of a blocking kit: ``store``, or a new in-memory one."""
    from .memory import MemoryStore

    return MemoryStore() if store is None else store
