"""Coalescing: script calls made while another is in flight share one round trip.

A handler's connect or disconnect is one script call. Alone, it goes straight to
Redis. Under a burst (a reconnect or disconnect storm) the calls that arrive while one
is in flight are sent together, as batched EVALSHAs in one pipeline, each call still
atomic and failing on its own. :class:`ThreadCoalescer` does it for the threads of a
blocking server, :class:`TaskCoalescer` for the tasks of an event loop; both hand the
batch to the same operation (:func:`presence_kit._redis_ops.batch_replies`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ._redis_ops import FAILURES, store_error
from ._redis_scripts import BATCH_CALLS, Invocation

T = TypeVar("T")

ScriptCall = tuple[Any, Invocation]
"""A registered script and one call's keys and args."""

_timeout_block: Any = getattr(asyncio, "timeout", None)  # asyncio.timeout: Python 3.11+


async def within(deadline: float | None, call: Awaitable[T]) -> T:
    """``await call``, given up (``TimeoutError``) after ``deadline`` seconds."""
    if deadline is None:
        return await call
    if _timeout_block is None:  # Python 3.10
        return await asyncio.wait_for(call, deadline)
    async with _timeout_block(deadline):  # no extra task per call
        return await call


class _Turn:
    """A thread's script call, queued while another thread sends."""

    __slots__ = ("call", "done", "promoted", "reply")

    def __init__(self, call: ScriptCall) -> None:
        self.call = call
        self.done = threading.Event()  # sent by another thread, or our turn to send
        self.promoted = False  # our turn: send this call and those queued since
        self.reply: Any = None


class ThreadCoalescer:
    """One thread at a time sends: alone, its own call (``send_one``); otherwise its call
    and every call that queued meanwhile (``send_batch``, one round trip). Then it hands
    the turn to the first thread that queued since, so no thread sends more than one
    round trip for the others. A queued call waits at most ``turn_timeout`` seconds."""

    def __init__(
        self,
        send_one: Callable[[ScriptCall], Any],
        send_batch: Callable[[list[ScriptCall]], list[Any]],
        turn_timeout: float | None,
    ) -> None:
        self._send_one, self._send_batch = send_one, send_batch
        self._turn_timeout = turn_timeout
        self._lock = threading.Lock()
        self._sending = False
        self._waiting: list[_Turn] = []

    @property
    def sending(self) -> bool:
        """A thread is sending calls now."""
        return self._sending

    @property
    def queued(self) -> int:
        """Calls of other threads waiting for the sending one."""
        return len(self._waiting)

    def call(self, call: ScriptCall) -> Any:
        """The reply to ``call``; a failed call raises its error (``TimeoutError`` if it
        got no turn in time: then it was never sent). A call another thread took into
        its batch is never given up: it may run, so its caller waits for the batch's
        reply (the batch is bounded by the connection's own timeout)."""
        with self._lock:
            queued = self._sending
            if queued:
                mine = _Turn(call)  # only a queued call needs an event to wait on
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
        return reply

    def _await_turn(self, mine: _Turn) -> bool:
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

    def _send_with(self, call: ScriptCall, others: list[_Turn]) -> Any:
        """Send ``call`` with the calls of ``others`` (one round trip); ``call``'s reply.
        Every queued thread gets a reply, even if this one is interrupted (GreenletExit)."""
        replies: list[Any] = [RedisError("the sending thread was interrupted")] * len(others)
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


_Waiting = tuple[ScriptCall, "asyncio.Future[Any]", str]
"""A coalesced call, its caller's future and the operation (for the error)."""


def _failure(operation: str, exc: Exception) -> Exception:
    """What a coalesced call raises: a Redis failure as a :class:`StoreError`."""
    if not isinstance(exc, FAILURES):
        return exc
    error = store_error(operation, exc)
    error.__cause__ = exc
    return error


class TaskCoalescer:
    """Alone, a call goes straight out (``send_one``: bounded by the store). The calls
    that arrive while one is in flight are sent together when the event loop next
    runs: at most :data:`~presence_kit._redis_scripts.BATCH_CALLS` calls per batch,
    each batch on its own connection (``send_batch``), within ``batch_deadline(n)``
    seconds for ``n`` calls. Failures come out as :class:`~presence_kit.StoreError`."""

    def __init__(
        self,
        send_one: Callable[[str, ScriptCall], Awaitable[Any]],
        send_batch: Callable[[list[ScriptCall]], Awaitable[list[Any]]],
        batch_deadline: Callable[[int], float | None],
    ) -> None:
        self._send_one, self._send_batch = send_one, send_batch
        self._batch_deadline = batch_deadline
        self._in_flight = 0
        self._waiting: list[_Waiting] = []
        self._batches: set[asyncio.Future[None]] = set()

    def call(self, operation: str, call: ScriptCall) -> Awaitable[Any]:
        """An awaitable of ``call``'s reply."""
        if not self._in_flight:
            return self._alone(operation, call)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((call, future, operation))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return future

    async def _alone(self, operation: str, call: ScriptCall) -> Any:
        self._in_flight += 1
        try:
            return await self._send_one(operation, call)
        finally:
            self._in_flight -= 1

    def _send_waiting(self) -> None:
        # Each batch on its own connection: Redis runs one while we read the last.
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), BATCH_CALLS):
            task = asyncio.ensure_future(self._send(waiting[start : start + BATCH_CALLS]))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        self._in_flight += 1
        try:
            calls = [call for call, _future, _operation in batch]
            # One connection (pool slot) and one deadline for the whole batch.
            replies = await within(self._batch_deadline(len(batch)), self._send_batch(calls))
            for (_call, future, operation), reply in zip(batch, replies, strict=True):
                if not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(_failure(operation, reply))
                    else:
                        future.set_result(reply)
        except Exception as exc:
            for _call, future, operation in batch:
                if not future.done():
                    future.set_exception(_failure(operation, exc))
        finally:
            self._in_flight -= 1
