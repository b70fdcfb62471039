"""Mixpanel analytics adapter: :class:`MixpanelAnalytics`, a non-blocking event sink.

Wrap the integrator's own client::

    analytics = MixpanelAnalytics(mixpanel.Mixpanel(token))

Design
    *Why a thread.* ``mixpanel.Consumer`` sends each call as a blocking HTTP request
    (with no timeout by default), which a Socket.IO handler or an event loop must never
    wait for. :meth:`MixpanelAnalytics.track` therefore only builds and serialises the
    event message, then puts it on a bounded in-memory queue; ``senders`` daemon threads
    (``presence-kit-mixpanel``) own all I/O: each batches up to ``batch_size`` events
    (waiting at most ``flush_interval`` after the first one), posts each batch as one
    JSON array to the ``events`` endpoint and retries transient failures with
    exponential backoff. Several senders keep a slow endpoint from capping delivery (one
    sender against a 500 ms endpoint posts at most 100 events/s; four, 400). The
    threads work the same under the blocking and the asyncio facade.

    *Drop policy.* The queue holds at most ``queue_size`` events. When it is full the
    *new* event is dropped (the queued, older ones are kept), counted in
    :attr:`MixpanelAnalytics.stats` and reported by a rate-limited warning. Events are
    also dropped, and counted, when Mixpanel rejects a batch, when retries run out, when
    they are tracked after :meth:`~MixpanelAnalytics.close`, and when they are still
    undelivered at ``close``'s deadline. Analytics never slows down or breaks presence.

    *Deduplication.* ``time`` and ``$insert_id`` come from the
    :class:`~presence_kit.Track` effect, fixed when the event was made, and a retried
    batch is sent with the very same bytes; Mixpanel drops events whose ``$insert_id``
    it has already seen, so a retry after a lost response does not double-count.

    *Delivery.* The adapter builds its own ``mixpanel.Consumer`` per sender thread,
    aimed at the client's events URL (and TLS setting), with a request timeout and no
    urllib3 retries (it retries itself). A custom consumer of another type is used
    as-is, by one sender at a time (its thread safety is unknown). See
    ``_delivery_for`` for the (private) parts of the client this reads.

Retries (see ``_classify``)
    Retried: connection errors, timeouts, HTTP 5xx, 408 and 429, responses that are not
    a Mixpanel answer (not JSON, or JSON without ``status``). Rejected (dropped at once):
    other HTTP 4xx, a Mixpanel answer ``{"status": 0, "error": ...}`` with a non-error
    HTTP status, an invalid URL or endpoint, and unexpected errors of a custom consumer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import mixpanel

from ._effects import Track
from ._errors import InvalidInputError

__all__ = ["MixpanelAnalytics", "MixpanelStats"]

logger = logging.getLogger("presence_kit.mixpanel")

_THREAD_NAME = "presence-kit-mixpanel"
_MAX_BATCH = 50  # Mixpanel's /track accepts at most 50 events per request.
_MAX_SENDERS = 32
_IDLE_POLL = 1.0  # the idle worker re-checks for close() this often (a backstop).
_DROP_LOG_INTERVAL = 10.0  # at most one warning per reason per this many seconds.
_MAX_CAUSE_DEPTH = 5

_Sender = Callable[[Sequence[str]], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class MixpanelStats:
    """Counters of one :class:`MixpanelAnalytics` since it was built.

    ``enqueued``: events accepted by :meth:`~MixpanelAnalytics.track`; ``sent``:
    events Mixpanel accepted; ``retried``: batch re-sends; ``dropped``: events given
    up on (queue full, tracked after close, unserialisable, rejected, retries exhausted,
    or undelivered at close's deadline). Once ``close`` returns, the counters are final
    and ``enqueued == sent + (dropped after enqueueing)``.
    """

    enqueued: int = 0
    sent: int = 0
    retried: int = 0
    dropped: int = 0


# --- the one place that reads mixpanel's private attributes ---------------------------


@dataclass(frozen=True, slots=True)
class _Delivery:
    token: str
    serializer: type[json.JSONEncoder]
    send: _Sender
    via: str  # for logs: "own-consumer" or "client-consumer"


def _delivery_for(
    client: Any, *, request_timeout: float, on_status: Callable[[int], None]
) -> _Delivery:
    """Read what we need from the integrator's client and build the batch sender.

    mixpanel exposes no public accessor for a client's token, serializer or consumer,
    nor for a consumer's events URL, TLS setting or HTTP session, so this function (and
    only this one) reads ``client._token``, ``client._serializer``, ``client._consumer``,
    ``BufferedConsumer._consumer``, ``Consumer._endpoints``, ``Consumer._verify_cert``
    and, on the consumer we build ourselves, ``Consumer._session`` (to see the HTTP
    status, which ``Consumer.send`` hides). Each read has a fallback: if the consumer's
    internals are missing, batches go through the client's own consumer (for a
    ``BufferedConsumer``, through its inner consumer, bypassing its buffer).
    """
    token = getattr(client, "_token", None)
    if not isinstance(token, str) or not token:
        raise InvalidInputError("client", "expected a mixpanel.Mixpanel client with a token")
    serializer = getattr(client, "_serializer", None)
    if not (isinstance(serializer, type) and issubclass(serializer, json.JSONEncoder)):
        serializer = mixpanel.DatetimeSerializer
    consumer = getattr(client, "_consumer", None)
    if consumer is None or not callable(getattr(consumer, "send", None)):
        raise InvalidInputError("client", "the Mixpanel client has no usable consumer")

    inner = consumer
    if isinstance(consumer, mixpanel.BufferedConsumer):
        inner = getattr(consumer, "_consumer", None)
    endpoints = getattr(inner, "_endpoints", None)
    events_url = endpoints.get("events") if isinstance(endpoints, dict) else None
    if isinstance(inner, mixpanel.Consumer) and isinstance(events_url, str):
        verify_cert = getattr(inner, "_verify_cert", True)

        def record_status(response: Any, *args: Any, **kwargs: Any) -> None:
            on_status(response.status_code)

        def build() -> mixpanel.Consumer:
            own = mixpanel.Consumer(
                events_url=events_url,
                request_timeout=request_timeout,
                retry_limit=0,
                verify_cert=verify_cert,
            )
            hooks = getattr(getattr(own, "_session", None), "hooks", None)
            if isinstance(hooks, dict) and isinstance(hooks.get("response"), list):
                hooks["response"].append(record_status)
            return own

        consumers = threading.local()  # one Consumer (one HTTP session) per sender thread

        def send_own(messages: Sequence[str]) -> None:
            own = getattr(consumers, "consumer", None)
            if own is None:
                own = consumers.consumer = build()
            own.send("events", _json_array(messages))

        return _Delivery(token, serializer, send_own, "own-consumer")

    # Not a Consumer we can copy: post each batch through the client's consumer, or,
    # for a BufferedConsumer, through its inner consumer, as BufferedConsumer.flush does.
    # Never through the BufferedConsumer's own buffer: a failed flush keeps the messages
    # there, so a rejected batch would be re-posted with every later one.
    if not callable(getattr(inner, "send", None)):
        raise InvalidInputError("client", "the Mixpanel client's BufferedConsumer has no consumer")

    one_at_a_time = threading.Lock()

    def send_custom(messages: Sequence[str]) -> None:
        with one_at_a_time:
            inner.send("events", _json_array(messages))

    return _Delivery(token, serializer, send_custom, "client-consumer")


# --- helpers ---------------------------------------------------------------------------


def _json_array(messages: Sequence[str]) -> str:
    """The batch body: already-serialised messages joined as one JSON array."""
    return "[" + ",".join(messages) + "]"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__`` chain (BufferedConsumer wraps once more)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < _MAX_CAUSE_DEPTH:
        chain.append(current)
        current = current.__cause__
    return chain


def _classify(exc: BaseException, status: int | None) -> tuple[bool, str]:
    """Whether a failed send is worth retrying, and a short reason for the logs.

    ``mixpanel.Consumer`` raises ``MixpanelException`` for every failure, so we look at
    the HTTP status (when our own consumer saw a response), then the cause chain, then
    the message text that ``Consumer._write_request`` uses.
    """
    if status is not None and status >= 400:
        if status >= 500 or status in (408, 429):
            return True, f"http-{status}"
        return False, f"http-{status}"
    chain = _causes(exc)
    for link in chain:
        # requests' exceptions are OSErrors; the ValueError ones (InvalidURL,
        # MissingSchema, ...) are configuration errors that a retry will not fix.
        # RetryError (urllib3's status retry of a 5xx over https) is retried here.
        if isinstance(link, OSError):
            if isinstance(link, ValueError):
                return False, "invalid-url"
            return True, type(link).__name__
    if any(isinstance(link, mixpanel.MixpanelException) for link in chain):
        text = str(exc)
        if "Cannot interpret Mixpanel server response" in text:
            return True, "unparseable-response"
        if "Mixpanel error" in text:
            return False, "mixpanel-error"
        return False, "mixpanel-exception"  # e.g. "No such endpoint"
    if status is not None:
        # A response arrived but was not a Mixpanel answer: Consumer indexes
        # response.json()["status"] unguarded (KeyError/TypeError).
        return True, "unparseable-response"
    return False, f"unexpected-{type(exc).__name__}"


class _RateLimit:
    """Allows one log line per key per interval and counts the ones it held back."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        """``None`` to stay quiet, else how many were held back since the last line."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


# --- the adapter -----------------------------------------------------------------------


class MixpanelAnalytics:
    """A non-blocking :class:`~presence_kit.Analytics` sink that delivers to Mixpanel.

    ``client`` is the integrator's ``mixpanel.Mixpanel`` (its token, serializer and
    consumer's events URL are reused; any ``Consumer``/``BufferedConsumer`` settings
    other than URL and ``verify_cert`` are not). ``queue_size`` bounds the memory:
    when the queue is full, new events are dropped (drop-newest) and counted.
    ``batch_size`` (at most 50) events are posted per request, waiting at most
    ``flush_interval`` seconds to fill a batch, by up to ``senders`` threads at once
    (started with the first event). Each request times out after
    ``request_timeout`` seconds; a transient failure is retried up to ``max_retries``
    times after ``backoff * 2**n`` seconds (at most ``max_backoff``).

    :meth:`track` never blocks and never raises; :meth:`close` flushes and stops.
    """

    def __init__(
        self,
        client: Any,
        *,
        queue_size: int = 10_000,
        batch_size: int = _MAX_BATCH,
        flush_interval: float = 0.5,
        request_timeout: float = 5.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        senders: int = 4,
    ) -> None:
        _check_int("queue_size", queue_size, 1, None)
        _check_int("senders", senders, 1, _MAX_SENDERS)
        _check_int("batch_size", batch_size, 1, _MAX_BATCH)
        _check_int("max_retries", max_retries, 0, None)
        _check_seconds("flush_interval", flush_interval, allow_zero=True)
        _check_seconds("request_timeout", request_timeout, allow_zero=False)
        _check_seconds("backoff", backoff, allow_zero=True)
        _check_seconds("max_backoff", max_backoff, allow_zero=True)
        self._batch_size = batch_size
        self._senders = senders
        self._flush_interval = float(flush_interval)
        self._max_retries = max_retries
        self._backoff = float(backoff)
        self._max_backoff = float(max_backoff)
        self._status = threading.local()  # each sender's last HTTP status
        self._delivery = _delivery_for(
            client, request_timeout=float(request_timeout), on_status=self._record_status
        )
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._deadline: float | None = None  # monotonic; set once, before _closing
        self._finalized = False  # close() wrote off the rest; counters are final
        self._threads: list[threading.Thread] = []
        self._enqueued = 0
        self._sent = 0
        self._retried = 0
        self._dropped_unqueued = 0  # never entered the queue
        self._dropped_queued = 0  # entered the queue, then given up on
        self._rate_limit = _RateLimit(_DROP_LOG_INTERVAL)

    # --- the Analytics port -------------------------------------------------------------

    def track(self, event: Track) -> None:
        """Serialise ``event`` now and queue it for delivery; never blocks or raises.

        When the queue is full, or after :meth:`close`, the event is dropped and counted.
        """
        try:
            message = self._message(event)
        except Exception as exc:
            self._drop_unqueued("unserialisable", exc)
            return
        try:
            with self._lock:
                if self._closing.is_set():
                    self._dropped_unqueued += 1
                    reason = "closed"
                else:
                    try:
                        self._queue.put_nowait(message)
                    except queue.Full:
                        self._dropped_unqueued += 1
                        reason = "queue-full"
                    else:
                        self._enqueued += 1
                        if len(self._threads) < self._senders:
                            self._start_workers()
                        return
            self._warn_drop(reason, 1)
        except Exception as exc:  # pragma: no cover - defensive: never raise into handlers
            self._drop_unqueued("unexpected", exc)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop accepting events, deliver the queued ones and stop the worker thread.

        Waits at most ``timeout`` seconds overall (``None``: until the queue is
        delivered or given up on); events still undelivered then are counted as dropped
        and logged. Idempotent; after it returns, :attr:`stats` no longer changes.
        """
        started = time.monotonic()
        with self._lock:
            if not self._closing.is_set():
                if timeout is not None:
                    self._deadline = started + max(0.0, timeout)
                self._closing.set()
            threads = list(self._threads)
        with contextlib.suppress(queue.Full):  # a full queue: the workers are not idle
            for _ in threads:
                self._queue.put_nowait(None)  # wake an idle worker at once
        for thread in threads:
            remaining = None if timeout is None else max(0.0, started + timeout - time.monotonic())
            thread.join(remaining)
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
            abandoned = self._enqueued - self._sent - self._dropped_queued
            self._dropped_queued += abandoned
            alive = any(thread.is_alive() for thread in threads)
        if abandoned:
            logger.warning(
                "Mixpanel analytics closed with %d undelivered event(s); dropped them",
                abandoned,
                extra={"presence_reason": "close-deadline", "presence_events": abandoned},
            )
        if alive:
            logger.debug(
                "Mixpanel worker still finishing a request; it will exit on its own",
                extra={"presence_reason": "close-deadline"},
            )

    # --- extras -------------------------------------------------------------------------

    @property
    def stats(self) -> MixpanelStats:
        """A consistent snapshot of the counters (thread-safe)."""
        with self._lock:
            return MixpanelStats(
                enqueued=self._enqueued,
                sent=self._sent,
                retried=self._retried,
                dropped=self._dropped_unqueued + self._dropped_queued,
            )

    def __enter__(self) -> MixpanelAnalytics:
        """Return ``self``; :meth:`close` runs on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close with the default timeout."""
        self.close()

    # --- caller side --------------------------------------------------------------------

    def _message(self, event: Track) -> str:
        """The Mixpanel event JSON, as ``Mixpanel.track`` builds it, with fixed ids.

        ``event.properties`` may override ``mp_lib``/``$lib_version`` but not ``token``,
        ``distinct_id``, ``time`` or ``$insert_id``.
        """
        properties: dict[str, Any] = {
            "mp_lib": "python",
            "$lib_version": mixpanel.__version__,
        }
        properties.update(event.properties)
        properties.update(
            {
                "token": self._delivery.token,
                "distinct_id": event.distinct_id,
                "time": event.time,
                "$insert_id": event.insert_id,
            }
        )
        message = {"event": event.event, "properties": properties}
        text: str = mixpanel.json_dumps(message, cls=self._delivery.serializer)
        return text

    def _drop_unqueued(self, reason: str, exc: BaseException) -> None:
        try:
            with self._lock:
                self._dropped_unqueued += 1
            self._warn_drop(reason, 1, exc)
        except Exception:  # pragma: no cover - logging itself failed; stay silent
            pass

    def _warn_drop(self, reason: str, count: int, exc: BaseException | None = None) -> None:
        """A rate-limited warning (no user ids, no token); details go to DEBUG."""
        held = self._rate_limit.check(reason)
        error = type(exc).__name__ if exc is not None else None
        if held is not None:
            logger.warning(
                "Mixpanel analytics dropped %d event(s): %s%s",
                count,
                reason,
                f" ({held} more drop report(s) suppressed)" if held else "",
                extra={
                    "presence_reason": reason,
                    "presence_events": count,
                    "presence_suppressed": held,
                    "presence_error": error,
                },
            )
        if exc is not None and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Mixpanel drop detail: %s",
                self._scrub(str(exc)),
                extra={"presence_reason": reason, "presence_error": error},
            )

    def _scrub(self, text: str) -> str:
        return text.replace(self._delivery.token, "<token>")[:500]

    # --- worker side --------------------------------------------------------------------

    def _start_workers(self) -> None:
        """Start the sender threads (called under the lock, on the first event)."""
        while len(self._threads) < self._senders:
            thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": try again next time
                logger.warning(
                    "Mixpanel worker thread could not start (%s); will retry on the next event",
                    type(exc).__name__,
                    extra={"presence_reason": "no-worker-thread"},
                )
                return
            self._threads.append(thread)

    def _record_status(self, status: int) -> None:
        self._status.last = status  # called in the sender thread that made the request

    def _expired(self) -> bool:
        deadline = self._deadline
        return self._finalized or (deadline is not None and time.monotonic() >= deadline)

    def _run(self) -> None:
        while True:
            try:
                batch, stop = self._collect()
                if batch:
                    self._deliver(batch)
                if stop or (not batch and self._closing.is_set() and self._queue.empty()):
                    return
                if self._expired():
                    return  # close() writes off whatever is left
            except Exception:  # pragma: no cover - a bug here must not kill delivery
                logger.exception("Mixpanel worker error", extra={"presence_reason": "bug"})
                time.sleep(0.1)

    def _collect(self) -> tuple[list[str], bool]:
        """Up to ``batch_size`` messages, waiting at most ``flush_interval`` after the
        first (not at all once closing); and whether close()'s wake-up came (each
        sender takes one and then stops, so none is left waiting on an empty queue)."""
        try:
            if self._closing.is_set():
                first = self._queue.get_nowait()
            else:
                first = self._queue.get(timeout=_IDLE_POLL)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        batch = [first]
        window_end = time.monotonic() + self._flush_interval
        while len(batch) < self._batch_size:
            try:
                if self._closing.is_set():
                    item = self._queue.get_nowait()
                else:
                    remaining = window_end - time.monotonic()
                    if remaining <= 0:
                        break
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _deliver(self, batch: list[str]) -> None:
        """Send one batch, retrying transient failures with the same bytes."""
        attempt = 0
        while True:
            if self._expired():
                return  # close() counts the batch as dropped
            self._status.last = None
            try:
                self._delivery.send(batch)
            except Exception as exc:
                status: int | None = self._status.last
                retryable, reason = _classify(exc, status)
                extra = {
                    "presence_reason": reason,
                    "presence_events": len(batch),
                    "presence_attempt": attempt + 1,
                    "presence_status": status,
                    "presence_error": type(exc).__name__,
                }
                logger.debug("Mixpanel send failed: %s", self._scrub(str(exc)), extra=extra)
                if not retryable:
                    self._give_up(batch, f"rejected ({reason})", exc)
                    return
                if attempt >= self._max_retries:
                    self._give_up(batch, f"retries exhausted ({reason})", exc)
                    return
                delay = min(self._max_backoff, self._backoff * (2**attempt))
                attempt += 1
                if not self._sleep(delay):
                    return
                self._count(retried=1)
                continue
            self._count(sent=len(batch))
            return

    def _give_up(self, batch: list[str], reason: str, exc: BaseException) -> None:
        if self._count(dropped=len(batch)):
            self._warn_drop(reason, len(batch), exc)

    def _count(self, *, sent: int = 0, retried: int = 0, dropped: int = 0) -> bool:
        """Add to the worker's counters; ``False`` (and no change) once close() has
        written off the rest and made the counters final."""
        with self._lock:
            if self._finalized:
                return False
            self._sent += sent
            self._retried += retried
            self._dropped_queued += dropped
            return True

    def _sleep(self, seconds: float) -> bool:
        """Back off for ``seconds``; ``False`` if close()'s deadline cut it short."""
        end = time.monotonic() + seconds
        if not self._closing.wait(seconds):
            return True
        deadline = self._deadline  # set before _closing, never changed afterwards
        stop = end if deadline is None else min(end, deadline)
        time.sleep(max(0.0, stop - time.monotonic()))
        return deadline is None or end <= deadline


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(name, f"must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidInputError(name, f"must be {bound}, got {value!r}")


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(name, f"must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise InvalidInputError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
