"""The background delivery engine: a bounded queue, sender threads, batches, retries.

:class:`BatchDelivery` knows nothing of the backend it delivers to. The adapter gives it
a callable that sends one batch of already-serialised messages (raising on failure),
a function that recognises the backend's own errors, a way to scrub secrets from log
text, and the logger to report through. ``presence_kit.mixpanel`` is its one user.

Design
    *Threads.* :meth:`BatchDelivery.put` only queues a message; ``senders`` daemon
    threads, started with the first message, own all I/O: each batches up to
    ``batch_size`` messages (waiting at most ``flush_interval`` after the first), sends
    the batch and retries transient failures after ``backoff * 2**n`` seconds (at most
    ``max_backoff``), up to ``max_retries`` times, with the very same messages. Several
    senders keep a slow endpoint from capping delivery (one sender against a 500 ms
    endpoint posts at most 100 events/s; four, 400).

    *Drops.* A full queue (``queue_size``) drops the *new* message and keeps the older
    ones; a rejected batch, exhausted retries, a message after
    :meth:`~BatchDelivery.close` and what is undelivered at its deadline are dropped
    too. Each is counted and reported by a rate-limited warning (one per reason per
    10 s, with the count held back). Once ``close`` returns the counters are final:
    ``enqueued == sent + (dropped after enqueueing)``.

    *Failures* (see :func:`classify`): the HTTP status first, then the ``OSError``
    links of the cause chain, then the backend's own errors, as the adapter's
    ``interpret`` tells them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._ratelimit import RateLimit

__all__ = ["BatchDelivery", "Counts", "Interpret", "Send", "Verdict", "causes", "classify"]

Send = Callable[[Sequence[str]], None]  # send one batch; raise on any failure
Verdict = tuple[bool, str]  # whether to retry a failed send, and a reason for the logs
# The backend's own errors: a verdict on (exc, its cause chain), or None.
Interpret = Callable[[BaseException, Sequence[BaseException]], "Verdict | None"]

_DROP_LOG_INTERVAL = 10.0  # at most one warning per reason per this many seconds.
_MAX_CAUSE_DEPTH = 5


class Counts(NamedTuple):
    """The engine's counters (see :class:`~presence_kit.mixpanel.MixpanelStats`)."""

    enqueued: int
    sent: int
    retried: int
    dropped: int


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__`` chain (a wrapping consumer adds links)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < _MAX_CAUSE_DEPTH:
        chain.append(current)
        current = current.__cause__
    return chain


def classify(exc: BaseException, status: int | None, interpret: Interpret) -> Verdict:
    """Whether a failed send is worth retrying, and a short reason for the logs.

    Looks at the HTTP status (when the sender saw a response), then the cause chain,
    then asks ``interpret`` about the backend's own errors.
    """
    if status is not None and status >= 400:
        if status >= 500 or status in (408, 429):
            return True, f"http-{status}"
        return False, f"http-{status}"
    chain = causes(exc)
    for link in chain:
        # requests' exceptions are OSErrors; the ValueError ones (InvalidURL,
        # MissingSchema, ...) are configuration errors that a retry will not fix.
        # RetryError (urllib3's status retry of a 5xx over https) is retried here.
        if isinstance(link, OSError):
            if isinstance(link, ValueError):
                return False, "invalid-url"
            return True, type(link).__name__
    verdict = interpret(exc, chain)
    if verdict is not None:
        return verdict
    if status is not None:
        # A response arrived but was not an answer the sender could read (for
        # mixpanel's Consumer: not JSON, or JSON without "status").
        return True, "unparseable-response"
    return False, f"unexpected-{type(exc).__name__}"


class BatchDelivery:
    """Delivers serialised messages in batches from background threads.

    ``send`` posts one batch; a failure is classified by :func:`classify` with
    ``interpret`` and the HTTP status that ``send`` reported through
    :meth:`record_status`. Log lines go to ``logger``, start with ``label`` and pass
    exception text through ``scrub``. The arguments are trusted: the adapter has
    validated them. :meth:`put` never blocks and never raises.
    """

    def __init__(
        self,
        send: Send,
        *,
        interpret: Interpret,
        scrub: Callable[[str], str],
        logger: logging.Logger,
        label: str,
        thread_name: str,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        senders: int,
        idle_poll: float,
    ) -> None:
        self._send = send
        self._interpret = interpret
        self._scrub = scrub
        self._logger = logger
        self._label = label
        self._thread_name = thread_name
        self._batch_size = batch_size
        self._senders = senders
        self._flush_interval = flush_interval
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._idle_poll = idle_poll  # the idle worker re-checks for close() this often
        self._status = threading.local()  # each sender's last HTTP status
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
        self._rate_limit = RateLimit(_DROP_LOG_INTERVAL)

    # --- caller side --------------------------------------------------------------------

    def put(self, message: str) -> None:
        """Queue ``message``, or drop and count it (queue full, or closed)."""
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
            self.drop("unexpected", exc)

    def drop(self, reason: str, exc: BaseException) -> None:
        """Count and report a message that never reached the queue; never raises."""
        try:
            with self._lock:
                self._dropped_unqueued += 1
            self._warn_drop(reason, 1, exc)
        except Exception:  # pragma: no cover - logging itself failed; stay silent
            pass

    def close(self, timeout: float | None) -> None:
        """Stop accepting, deliver the queue within ``timeout`` s, then write off the rest.

        Idempotent; after it returns, :meth:`counts` no longer changes.
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
            self._logger.warning(
                "%s analytics closed with %d undelivered event(s); dropped them",
                self._label,
                abandoned,
                extra={"presence_reason": "close-deadline", "presence_events": abandoned},
            )
        if alive:
            self._logger.debug(
                "%s worker still finishing a request; it will exit on its own",
                self._label,
                extra={"presence_reason": "close-deadline"},
            )

    def counts(self) -> Counts:
        """A consistent snapshot of the counters (thread-safe)."""
        with self._lock:
            return Counts(
                enqueued=self._enqueued,
                sent=self._sent,
                retried=self._retried,
                dropped=self._dropped_unqueued + self._dropped_queued,
            )

    def _warn_drop(self, reason: str, count: int, exc: BaseException | None = None) -> None:
        """A rate-limited warning (no user ids, no token); details go to DEBUG."""
        held = self._rate_limit.check(reason)
        error = type(exc).__name__ if exc is not None else None
        if held is not None:
            self._logger.warning(
                "%s analytics dropped %d event(s): %s%s",
                self._label,
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
        if exc is not None and self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug(
                "%s drop detail: %s",
                self._label,
                self._scrub(str(exc)),
                extra={"presence_reason": reason, "presence_error": error},
            )

    # --- worker side --------------------------------------------------------------------

    def record_status(self, status: int) -> None:
        """Note the HTTP status of the response ``send`` is handling (in its thread)."""
        self._status.last = status

    def _start_workers(self) -> None:
        """Start the sender threads (called under the lock, on the first message)."""
        while len(self._threads) < self._senders:
            thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": try again next time
                self._logger.warning(
                    "%s worker thread could not start (%s); will retry on the next event",
                    self._label,
                    type(exc).__name__,
                    extra={"presence_reason": "no-worker-thread"},
                )
                return
            self._threads.append(thread)

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
                self._logger.exception(
                    "%s worker error", self._label, extra={"presence_reason": "bug"}
                )
                time.sleep(0.1)

    def _collect(self) -> tuple[list[str], bool]:
        """Up to ``batch_size`` messages, waiting at most ``flush_interval`` after the
        first (not at all once closing); and whether close()'s wake-up came (each
        sender takes one and then stops, so none is left waiting on an empty queue)."""
        try:
            if self._closing.is_set():
                first = self._queue.get_nowait()
            else:
                first = self._queue.get(timeout=self._idle_poll)
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
                self._send(batch)
            except Exception as exc:
                status: int | None = self._status.last
                retryable, reason = classify(exc, status, self._interpret)
                extra = {
                    "presence_reason": reason,
                    "presence_events": len(batch),
                    "presence_attempt": attempt + 1,
                    "presence_status": status,
                    "presence_error": type(exc).__name__,
                }
                self._logger.debug(
                    "%s send failed: %s", self._label, self._scrub(str(exc)), extra=extra
                )
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
