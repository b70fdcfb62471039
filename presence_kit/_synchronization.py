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
* :func:`async_within` / :func:`within`: a call given up at a deadline (asyncio), or
  made (a blocking call is bounded by its socket timeouts instead).
* :func:`async_gather` / :func:`gather`: calls run concurrently (asyncio), or their
  results, made one after another already.
* :class:`AsyncSlots` / :class:`Slots`: at most so many calls at once (a semaphore),
  or no limit of ours (a blocking pool makes the caller wait for a connection itself).
* :class:`AsyncCoalescer` / :class:`Coalescer`: calls made while another is in flight
  sent together in one round trip, by the tasks of an event loop or by threads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, ParamSpec, TypeVar, cast

from ._async.ports import AsyncSockets, AsyncStore
from ._ports import DeclaresBlocking

if TYPE_CHECKING:
    from ._sync.ports import Sockets, Store

__all__ = [
    "AsyncBackground",
    "AsyncCoalescer",
    "AsyncSlots",
    "AsyncStarted",
    "Background",
    "Coalescer",
    "Slots",
    "Started",
    "async_gather",
    "async_run_blocking",
    "async_store_for",
    "async_within",
    "gather",
    "run_blocking",
    "store_for",
    "within",
]

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C")
R = TypeVar("R")

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


# --- deadlines and slots -----------------------------------------------------------

_timeout_block = getattr(asyncio, "timeout", None)  # asyncio.timeout: Python 3.11+


async def async_within(
    deadline: float | None, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``await fn(*args)``, given up (``TimeoutError``) after ``deadline`` seconds."""
    if deadline is None:
        return await fn(*args, **kwargs)
    if _timeout_block is None:  # Python 3.10
        return await asyncio.wait_for(fn(*args, **kwargs), deadline)
    async with _timeout_block(deadline):  # no extra task per call
        return await fn(*args, **kwargs)


def within(deadline: float | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args)``: a blocking call is bounded by its own socket timeouts."""
    return fn(*args, **kwargs)


async def async_gather(*calls: Awaitable[T]) -> list[T]:
    """What ``calls`` return, run concurrently (the first failure raised)."""
    return list(await asyncio.gather(*calls))


def gather(*results: T) -> list[T]:
    """``results``: the blocking calls were made, in order, as the arguments were."""
    return list(results)


class AsyncSlots:
    """At most ``size`` calls at once (``async with slots:``); the others wait."""

    __slots__ = ("_semaphore",)

    def __init__(self, size: int) -> None:
        self._semaphore = asyncio.Semaphore(size)

    async def __aenter__(self) -> None:
        await self._semaphore.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._semaphore.release()


class Slots:
    """No limit of ours: a blocking pool makes a caller wait for a free connection
    itself (within its timeout), so threads need no semaphore besides."""

    __slots__ = ()

    def __init__(self, size: int) -> None:
        pass

    def __enter__(self) -> None:
        pass

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


# --- coalescing --------------------------------------------------------------------
# A store's handler call is one round trip. Alone, it goes straight out (``send_one``);
# the calls that arrive while one is in flight go out together (``send_batch``: one
# round trip, one reply or failure per call, each call failing on its own). A failure
# is raised to its caller as it came; the store translates it.


class AsyncCoalescer(Generic[C, R]):
    """For the tasks of an event loop. The calls that arrive while one is in flight are
    sent when the event loop next runs: at most ``batch_size`` calls per batch, each
    batch on its own connection (Redis runs one while we read the last), within
    ``deadline(n)`` seconds for ``n`` calls."""

    def __init__(
        self,
        send_one: Callable[[C], Awaitable[R]],
        send_batch: Callable[[list[C]], Awaitable[list[R | Exception]]],
        deadline: Callable[[int], float | None],
        batch_size: int,
    ) -> None:
        self._send_one, self._send_batch = send_one, send_batch
        self._deadline, self._batch_size = deadline, batch_size
        self._in_flight = 0
        self._waiting: list[tuple[C, asyncio.Future[R]]] = []
        self._batches: set[asyncio.Future[None]] = set()

    @property
    def sending(self) -> bool:
        """Calls are in flight now."""
        return self._in_flight > 0

    @property
    def queued(self) -> int:
        """Calls waiting to be sent together when the event loop next runs."""
        return len(self._waiting)

    async def call(self, call: C) -> R:
        """The reply to ``call`` (its failure raised)."""
        if not self._in_flight:
            self._in_flight += 1
            try:
                return await self._send_one(call)
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((call, future))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return await future

    def _send_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self._batch_size):
            task = asyncio.ensure_future(self._send(waiting[start : start + self._batch_size]))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send(self, batch: list[tuple[C, asyncio.Future[R]]]) -> None:
        self._in_flight += 1
        try:
            calls = [call for call, _future in batch]
            # One connection (pool slot) and one deadline for the whole batch.
            replies = await async_within(self._deadline(len(batch)), self._send_batch, calls)
            for (_call, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        except Exception as exc:
            for _call, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._in_flight -= 1


class _Turn(Generic[C, R]):
    """A thread's call, queued while another thread sends."""

    __slots__ = ("call", "done", "promoted", "reply")

    def __init__(self, call: C) -> None:
        self.call = call
        self.done = threading.Event()  # sent by another thread, or our turn to send
        self.promoted = False  # our turn: send this call and those queued since
        self.reply: R | Exception | None = None


class Coalescer(Generic[C, R]):
    """For threads. One thread at a time sends: alone, its own call; otherwise its call
    and every call that queued meanwhile (one round trip). Then it hands the turn to
    the first thread that queued since, so no thread sends more than one round trip for
    the others. A queued call waits at most ``deadline(1)`` seconds for its turn; the
    batch size is the store's to bound (its batches are cut into scripts of it)."""

    def __init__(
        self,
        send_one: Callable[[C], R],
        send_batch: Callable[[list[C]], list[R | Exception]],
        deadline: Callable[[int], float | None],
        batch_size: int,
    ) -> None:
        self._send_one, self._send_batch = send_one, send_batch
        self._turn_timeout = deadline(1)
        self._lock = threading.Lock()
        self._sending = False
        self._waiting: list[_Turn[C, R]] = []

    @property
    def sending(self) -> bool:
        """A thread is sending calls now."""
        return self._sending

    @property
    def queued(self) -> int:
        """Calls of other threads waiting for the sending one."""
        return len(self._waiting)

    def call(self, call: C) -> R:
        """The reply to ``call``; a failed call raises its error (``TimeoutError`` if it
        got no turn in time: then it was never sent). A call another thread took into
        its batch is never given up: it may run, so its caller waits for the batch's
        reply (the batch is bounded by the connection's own timeout)."""
        with self._lock:
            queued = self._sending
            if queued:
                mine: _Turn[C, R] = _Turn(call)  # only a queued call needs an event
                self._waiting.append(mine)
            else:
                self._sending = True
        if queued and not self._await_turn(mine):
            reply = mine.reply  # another thread sent it
        else:
            try:
                if not self._waiting:  # alone (a call queued from now on waits its turn)
                    return self._send_one(call)
                with self._lock:
                    others, self._waiting = self._waiting, []
                reply = self._send_with(call, others)
            finally:
                self._hand_over()
        if isinstance(reply, Exception):
            raise reply
        return cast("R", reply)

    def _await_turn(self, mine: _Turn[C, R]) -> bool:
        """Wait until another thread sent this call (``False``) or handed us the turn."""
        if mine.done.wait(self._turn_timeout):
            return mine.promoted
        with self._lock:
            if mine.promoted:
                return True
            if mine in self._waiting:
                self._waiting.remove(mine)  # never sent
                raise TimeoutError("no turn to send within the deadline")
        # Taken into another thread's batch, in flight: it may have run already.
        mine.done.wait()
        return False

    def _send_with(self, call: C, others: list[_Turn[C, R]]) -> R | Exception:
        """Send ``call`` with the calls of ``others`` (one round trip); ``call``'s reply.
        Every queued thread gets a reply, even if this one is interrupted (GreenletExit)."""
        interrupted = RuntimeError("the sending thread was interrupted")
        replies: list[R | Exception] = [interrupted] * len(others)
        try:
            mine, *replies = self._send_batch([call, *[turn.call for turn in others]])
            return mine
        except Exception as exc:
            replies = [exc] * len(others)
            return exc
        finally:
            for turn, reply in zip(others, replies, strict=True):
                turn.reply = reply
                turn.done.set()

    def _hand_over(self) -> None:
        with self._lock:
            if self._waiting:
                successor = self._waiting.pop(0)
                successor.promoted = True
                successor.done.set()
            else:
                self._sending = False
