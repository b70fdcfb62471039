"""Mixpanel analytics adapter: :class:`MixpanelAnalytics`, a non-blocking event sink.

Wrap the integrator's own client::

    analytics = MixpanelAnalytics(mixpanel.Mixpanel(token))

Design
    *Why a thread.* ``mixpanel.Consumer`` sends each call as a blocking HTTP request
    (with no timeout by default), which a Socket.IO handler or an event loop must never
    wait for. :meth:`MixpanelAnalytics.track` therefore only builds and serialises the
    event message, then hands it to a private delivery engine
    (``presence_kit._delivery``, whose docstring tells how it queues, batches, retries
    and drops): ``senders`` daemon threads (``presence-kit-mixpanel``) own all I/O and
    post each batch of up to ``batch_size`` events as one JSON array to the ``events``
    endpoint. This adapter builds the messages, sends one batch and recognises
    Mixpanel's own errors; the engine decides nothing about Mixpanel. The threads work
    the same under the blocking and the asyncio facade.

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

Retries (see ``_delivery.classify`` and ``_mixpanel_verdict``)
    Retried: connection errors, timeouts, HTTP 5xx, 408 and 429, responses that are not
    a Mixpanel answer (not JSON, or JSON without ``status``). Rejected (dropped at once):
    other HTTP 4xx, a Mixpanel answer ``{"status": 0, "error": ...}`` with a non-error
    HTTP status, an invalid URL or endpoint, and unexpected errors of a custom consumer.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import mixpanel

from ._delivery import BatchDelivery, Send, Verdict
from ._effects import Track
from ._errors import InvalidInputError

__all__ = ["MixpanelAnalytics", "MixpanelStats"]

logger = logging.getLogger("presence_kit.mixpanel")

_THREAD_NAME = "presence-kit-mixpanel"
_MAX_BATCH = 50  # Mixpanel's /track accepts at most 50 events per request.
_MAX_SENDERS = 32
_IDLE_POLL = 1.0  # the idle worker re-checks for close() this often (a backstop).


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
    send: Send
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


def _mixpanel_verdict(exc: BaseException, chain: Sequence[BaseException]) -> Verdict | None:
    """Mixpanel's own failures, for :func:`~presence_kit._delivery.classify`.

    ``mixpanel.Consumer`` raises ``MixpanelException`` for every failure, so we tell
    them apart by the message text that ``Consumer._write_request`` uses.
    """
    if not any(isinstance(link, mixpanel.MixpanelException) for link in chain):
        return None
    text = str(exc)
    if "Cannot interpret Mixpanel server response" in text:
        return True, "unparseable-response"
    if "Mixpanel error" in text:
        return False, "mixpanel-error"
    return False, "mixpanel-exception"  # e.g. "No such endpoint"


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
        self._delivery = _delivery_for(
            client, request_timeout=float(request_timeout), on_status=self._record_status
        )
        self._engine = BatchDelivery(
            self._delivery.send,
            interpret=_mixpanel_verdict,
            scrub=self._scrub,
            logger=logger,
            label="Mixpanel",
            thread_name=_THREAD_NAME,
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval=float(flush_interval),
            max_retries=max_retries,
            backoff=float(backoff),
            max_backoff=float(max_backoff),
            senders=senders,
            idle_poll=_IDLE_POLL,
        )

    # --- the Analytics port -------------------------------------------------------------

    def track(self, event: Track) -> None:
        """Serialise ``event`` now and queue it for delivery; never blocks or raises.

        When the queue is full, or after :meth:`close`, the event is dropped and counted.
        """
        try:
            message = self._message(event)
        except Exception as exc:
            self._engine.drop("unserialisable", exc)
            return
        self._engine.put(message)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop accepting events, deliver the queued ones and stop the worker thread.

        Waits at most ``timeout`` seconds overall (``None``: until the queue is
        delivered or given up on); events still undelivered then are counted as dropped
        and logged. Idempotent; after it returns, :attr:`stats` no longer changes.
        """
        self._engine.close(timeout)

    # --- extras -------------------------------------------------------------------------

    @property
    def stats(self) -> MixpanelStats:
        """A consistent snapshot of the counters (thread-safe)."""
        return MixpanelStats(**self._engine.counts()._asdict())

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

    # --- helpers ------------------------------------------------------------------------

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

    def _scrub(self, text: str) -> str:
        return text.replace(self._delivery.token, "<token>")[:500]

    def _record_status(self, status: int) -> None:
        self._engine.record_status(status)  # called in the sender thread that made the request


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
