"""How a flow asks for I/O: typed calls on the ports, run by a driver.

A flow (:mod:`presence_kit._flows`) yields :data:`Call` values and gets back what each
returned; :func:`call` types that seam with a ``ParamSpec``, so each call site checks
its arguments against the port method and gets its result type. The drivers (the
facades of :mod:`presence_kit._kit`) run each call: the blocking one as it is, the
asyncio one awaiting the coroutine that the same method of an ``Async`` port returns.
A flow may also :func:`start` a call and :func:`collect` it later: the asyncio driver
runs it in the meantime (a sweep's next round trip while it announces the last one's
leaves), the blocking one has made it by then.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Generic, ParamSpec, TypeVar, cast

__all__ = ["Call", "Flow", "Started", "call", "collect", "effect_call", "enqueue", "start"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

Call = tuple[Callable[..., object], tuple[object, ...], Mapping[str, object], bool]
"""One I/O a flow needs, ``(fn, args, kwargs, awaited)``: ``fn(*args, **kwargs)``, a
method of a port (the store, the sockets, analytics); ``awaited`` is false for
analytics, which only enqueues. Made by :func:`call`, :func:`effect_call` and
:func:`enqueue`, which type it; a driver only runs it. A plain tuple: one is made per
port call, on the hot path."""

Flow = Generator[Call, object, T]
"""An operation written once: it yields its I/O and returns its result."""


def call(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Flow[R]:
    """Have the driver run ``fn(*args, **kwargs)`` (a port method) and return its result:
    ``outcome = yield from call(self._store.connect, request)``.

    The asyncio driver awaits the result first: there ``fn`` is the same method of the
    ``Async`` port, whose coroutine gives an ``R``. That is the one claim the ``cast``
    makes."""
    result = yield (fn, args, kwargs, True)
    return cast(R, result)


def effect_call(fn: Callable[P, None], /, *args: P.args, **kwargs: P.kwargs) -> Call:
    """The call that runs an effect, to ``yield`` as it is: its result is ``None`` (the
    sockets' methods), so nothing comes back to type, and the hot path saves the frame
    of :func:`call`."""
    return (fn, args, kwargs, True)


def enqueue(fn: Callable[P, None], /, *args: P.args, **kwargs: P.kwargs) -> Call:
    """As :func:`effect_call`, for a call that returns at once in both facades and is
    never awaited (``Analytics.track``, shared by both)."""
    return (fn, args, kwargs, False)


Begin = Callable[[Callable[..., object], tuple[object, ...], Mapping[str, object]], object]
"""A facade's way to start a call: make it now (blocking), or schedule it (asyncio)."""

Finish = Callable[[object], object]
"""A facade's way to collect a started call: its result (or error), or an awaitable."""


class Started(Generic[R]):
    """A call a flow started with :func:`start` and collects with :func:`collect`."""

    __slots__ = ("handle",)

    def __init__(self, handle: object) -> None:
        self.handle = handle
        """What the facade's ``begin`` returned: the call's outcome, or an asyncio task."""


def start(
    begin: Begin, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> Flow[Started[R]]:
    """Have the driver start ``fn(*args, **kwargs)`` without waiting for it: the
    asyncio facade's ``begin`` schedules it as a task, the blocking one's makes it."""
    handle = yield (begin, (fn, args, kwargs), {}, False)
    return Started(handle)


def collect(finish: Finish, started: Started[R]) -> Flow[R]:
    """The result of a started call (its failure raised here), once it is done."""
    result = yield (finish, (started.handle,), {}, True)
    return cast(R, result)
