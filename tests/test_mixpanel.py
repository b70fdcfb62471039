"""MixpanelAnalytics against a real mixpanel client and a local HTTP endpoint."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import mixpanel
import pytest

from presence_kit import Analytics, InvalidInputError, Track
from presence_kit import mixpanel as pk_mixpanel
from presence_kit.mixpanel import MixpanelAnalytics, MixpanelStats
from tests.support.mixpanel_endpoint import MixpanelEndpoint, eventually, refused_url

TOKEN = "tok-secret-0123456789"
FAST: dict[str, Any] = {"backoff": 0.05, "max_backoff": 0.2, "flush_interval": 0.05, "senders": 1}
"""Quick retries and one sender, whose batches and requests a test can predict; the
tests of several senders say ``senders=`` themselves."""


def make_track(n: int = 0, *, distinct_id: str = "user-42", **props: Any) -> Track:
    return Track(
        event="Presence Offline",
        distinct_id=distinct_id,
        properties={"role": "teacher", "n": n, **props},
        time=1_700_000_000.5 + n,
        insert_id=uuid.uuid4().hex,
    )


def client_for(url: str) -> Any:
    return mixpanel.Mixpanel(TOKEN, consumer=mixpanel.Consumer(events_url=url))


@pytest.fixture
def opened() -> Iterator[list[MixpanelAnalytics]]:
    """Adapters made by a test; closed (briefly) afterwards so no worker lingers."""
    made: list[MixpanelAnalytics] = []
    yield made
    for adapter in made:
        adapter.close(timeout=0.5)


def adapter(opened: list[MixpanelAnalytics], client: Any, **kwargs: Any) -> MixpanelAnalytics:
    a = MixpanelAnalytics(client, **{**FAST, **kwargs})
    opened.append(a)
    return a


def test_events_arrive_without_close_with_fixed_ids(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=0.5)
    assert isinstance(a, Analytics)
    tracks = [make_track(i) for i in range(3)]
    start = time.monotonic()
    for t in tracks:
        a.track(t)
    events = mixpanel_endpoint.wait_for(3, timeout=2.0)
    assert time.monotonic() - start < 1.5
    for t, ev in zip(tracks, events, strict=True):
        props = ev["properties"]
        assert ev["event"] == "Presence Offline"
        assert props["distinct_id"] == "user-42"
        assert props["time"] == t.time
        assert props["$insert_id"] == t.insert_id
        assert props["token"] == TOKEN
        assert props["mp_lib"] == "python"
        assert props["$lib_version"] == mixpanel.__version__
        assert props["role"] == "teacher"
        assert props["n"] == t.properties["n"]
    eventually(lambda: a.stats == MixpanelStats(enqueued=3, sent=3, retried=0, dropped=0))
    assert [th.name for th in threading.enumerate()].count("presence-kit-mixpanel") >= 1


def test_batches_at_most_50_per_request(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=0.2)
    tracks = [make_track(i) for i in range(120)]
    for t in tracks:
        a.track(t)
    events = mixpanel_endpoint.wait_for(120, timeout=3.0)
    sizes = [len(r.events) for r in mixpanel_endpoint.requests]
    assert max(sizes) <= 50
    assert len(sizes) <= 5
    assert sorted(e["properties"]["$insert_id"] for e in events) == sorted(
        t.insert_id for t in tracks
    )


def test_slow_endpoint_does_not_block_track(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    mixpanel_endpoint.set_mode("slow", delay=2.0)
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    for i in range(20):
        start = time.perf_counter()
        a.track(make_track(i))
        assert time.perf_counter() - start < 0.05
        if i == 0:
            mixpanel_endpoint.wait_for_requests(1)  # the worker is now stuck in a request
    assert mixpanel_endpoint.events == []
    mixpanel_endpoint.wait_for(20, timeout=6.0)


def test_error500_is_retried_with_the_same_bytes(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    mixpanel_endpoint.set_mode("error500", times=2)
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=0.2)
    tracks = [make_track(i) for i in range(5)]
    for t in tracks:
        a.track(t)
    events = mixpanel_endpoint.wait_for(5, timeout=3.0)
    counts = Counter(e["properties"]["$insert_id"] for e in events)
    assert counts == Counter(t.insert_id for t in tracks)  # each exactly once
    reqs = mixpanel_endpoint.requests
    assert [r.mode for r in reqs] == ["error500", "error500", "ok"]
    assert len({r.data for r in reqs}) == 1  # the very same bytes each time
    eventually(lambda: a.stats.sent == 5)
    assert a.stats.retried == 2
    assert a.stats.dropped == 0


def test_garbage_response_is_retried(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    mixpanel_endpoint.set_mode("garbage", times=1)
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    a.track(make_track())
    mixpanel_endpoint.wait_for(1)
    eventually(lambda: a.stats.sent == 1)
    assert a.stats.retried == 1
    assert a.stats.dropped == 0


def test_reject400_is_dropped_not_retried(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    mixpanel_endpoint.set_mode("reject400")
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=0.2)
    a.track(make_track(0))
    a.track(make_track(1))
    eventually(lambda: a.stats.dropped == 2)
    time.sleep(0.2)  # a retry, if any, would have come by now
    assert len(mixpanel_endpoint.requests) == 1
    assert a.stats == MixpanelStats(enqueued=2, sent=0, retried=0, dropped=2)


def test_refused_connection_exhausts_retries_and_drops(opened: list[MixpanelAnalytics]) -> None:
    a = adapter(opened, client_for(refused_url()), max_retries=2)
    for i in range(3):
        a.track(make_track(i))  # never raises
    eventually(lambda: a.stats.dropped == 3)
    assert a.stats == MixpanelStats(enqueued=3, sent=0, retried=2, dropped=3)


def test_request_timeout_is_applied_and_retried(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    mixpanel_endpoint.set_mode("slow", delay=1.0, times=1)
    a = adapter(opened, client_for(mixpanel_endpoint.url), request_timeout=0.2)
    a.track(make_track())
    eventually(lambda: a.stats.sent == 1, timeout=3.0)
    assert a.stats.retried == 1


def test_full_queue_drops_new_events(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mixpanel_endpoint.set_mode("slow", delay=0.5)
    a = adapter(opened, client_for(mixpanel_endpoint.url), queue_size=2, flush_interval=0.01)
    first = make_track(0)
    a.track(first)
    mixpanel_endpoint.wait_for_requests(1)  # the first event is in flight, the queue empty
    kept = [make_track(1), make_track(2)]
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        for t in [*kept, *(make_track(i) for i in range(3, 10))]:
            a.track(t)
    assert a.stats.dropped == 7
    assert a.stats.enqueued == 3
    drops = [r for r in caplog.records if "queue-full" in r.getMessage()]
    assert len(drops) == 1  # rate-limited
    assert drops[0].presence_reason == "queue-full"  # type: ignore[attr-defined]
    a.close(timeout=3.0)
    assert {e["properties"]["$insert_id"] for e in mixpanel_endpoint.events} == {
        t.insert_id for t in [first, *kept]
    }
    assert a.stats == MixpanelStats(enqueued=3, sent=3, retried=0, dropped=7)


def test_close_flushes_pending_events_and_joins(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=30.0)
    for i in range(5):
        a.track(make_track(i))
    ours = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in ours] == ["presence-kit-mixpanel"]
    start = time.monotonic()
    a.close(timeout=5.0)
    assert time.monotonic() - start < 1.0
    assert len(mixpanel_endpoint.events) == 5
    assert not ours[0].is_alive()
    assert a.stats == MixpanelStats(enqueued=5, sent=5, retried=0, dropped=0)


def test_close_deadline_on_slow_endpoint_counts_undelivered(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mixpanel_endpoint.set_mode("slow", delay=3.0)
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    for i in range(3):
        a.track(make_track(i))
    mixpanel_endpoint.wait_for_requests(1)
    a.track(make_track(3))  # queued behind the in-flight batch
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        a.close(timeout=0.5)
    assert time.monotonic() - start < 0.8
    assert a.stats == MixpanelStats(enqueued=4, sent=0, retried=0, dropped=4)
    assert any(getattr(r, "presence_reason", None) == "close-deadline" for r in caplog.records)


def test_track_after_close_is_dropped_and_close_is_idempotent(
    mixpanel_endpoint: MixpanelEndpoint,
) -> None:
    with MixpanelAnalytics(client_for(mixpanel_endpoint.url), **FAST) as a:
        a.track(make_track(0))
    assert len(mixpanel_endpoint.events) == 1
    a.track(make_track(1))
    a.close()
    a.close(timeout=0)
    assert a.stats == MixpanelStats(enqueued=1, sent=1, retried=0, dropped=1)


def test_track_never_raises_on_bad_events(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    a.track(make_track(0, blob=object()))  # not JSON-serialisable
    a.track(None)  # type: ignore[arg-type]
    assert a.stats.dropped == 2
    assert a.stats.enqueued == 0


def test_buffered_consumer_client_is_delivered_without_its_flush(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    client = mixpanel.Mixpanel(
        TOKEN, consumer=mixpanel.BufferedConsumer(events_url=mixpanel_endpoint.url)
    )
    a = adapter(opened, client)
    t = make_track()
    a.track(t)
    [event] = mixpanel_endpoint.wait_for(1, timeout=2.0)
    assert event["properties"]["$insert_id"] == t.insert_id


class RecordingConsumer:
    """A duck-typed consumer: fails ``failures`` times, then records what it gets."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str]] = []

    def send(self, endpoint: str, json_message: str) -> None:
        if self.failures:
            self.failures -= 1
            raise mixpanel.MixpanelException("down") from ConnectionError("refused")
        self.calls.append((endpoint, json_message))


def test_custom_consumer_gets_the_batch_as_is(opened: list[MixpanelAnalytics]) -> None:
    consumer = RecordingConsumer(failures=1)
    a = adapter(opened, mixpanel.Mixpanel(TOKEN, consumer=consumer), flush_interval=0.2)
    tracks = [make_track(i) for i in range(3)]
    for t in tracks:
        a.track(t)
    eventually(lambda: a.stats.sent == 3)
    [(endpoint, body)] = consumer.calls
    assert endpoint == "events"
    assert [e["properties"]["$insert_id"] for e in json.loads(body)] == [
        t.insert_id for t in tracks
    ]
    assert a.stats.retried == 1


def test_logs_never_carry_token_or_user_ids_above_debug(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mixpanel_endpoint.set_mode("reject400")
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    with caplog.at_level(logging.DEBUG, logger="presence_kit.mixpanel"):
        a.track(make_track(0, distinct_id="secret-user"))
        a.track(make_track(1, distinct_id="secret-user", blob=object()))
        eventually(lambda: a.stats.dropped == 2)
        a.close(timeout=1.0)
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert TOKEN not in text
        if record.levelno > logging.DEBUG:
            assert "secret-user" not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 51},
        {"queue_size": 0},
        {"queue_size": "10"},
        {"max_retries": True},
        {"request_timeout": 0},
        {"flush_interval": "0.5"},
        {"backoff": float("nan")},
        {"max_backoff": -1.0},
        {"senders": 0},
        {"senders": 33},
        {"senders": 2.0},
    ],
)
def test_rejects_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        MixpanelAnalytics(mixpanel.Mixpanel(TOKEN), **kwargs)


def test_rejects_unusable_clients() -> None:
    with pytest.raises(InvalidInputError):
        MixpanelAnalytics(object())
    with pytest.raises(InvalidInputError):
        MixpanelAnalytics(mixpanel.Mixpanel(TOKEN, consumer=object()))  # no send()
    buffered = mixpanel.BufferedConsumer()
    buffered._consumer = None  # nothing that could post its batches
    with pytest.raises(InvalidInputError):
        MixpanelAnalytics(mixpanel.Mixpanel(TOKEN, consumer=buffered))


# --- the rest of the classification and fallback paths --------------------------------


def workers_since(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t not in before and t.name == "presence-kit-mixpanel"
    ]


def reasons(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[Any]:
    return [getattr(r, "presence_reason", None) for r in caplog.records if r.levelno == level]


def test_client_without_an_encoder_serializer_falls_back_to_datetime_serializer(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    client = mixpanel.Mixpanel(
        TOKEN, consumer=mixpanel.Consumer(events_url=mixpanel_endpoint.url), serializer=None
    )
    a = adapter(opened, client)
    a.track(make_track(at=datetime.datetime(2024, 1, 2, 3, 4, 5)))
    [event] = mixpanel_endpoint.wait_for(1)
    assert event["properties"]["at"] == "2024-01-02T03:04:05"
    assert a.stats.dropped == 0


@pytest.mark.parametrize(
    ("mode", "status", "reason", "error"),
    [
        ("timeout408", 408, "http-408", "MixpanelException"),
        ("throttle429", 429, "http-429", "MixpanelException"),
        # Consumer indexes response.json()["status"] unguarded: a KeyError, retried.
        ("nostatus", 200, "unparseable-response", "KeyError"),
    ],
)
def test_transient_answers_are_retried_with_the_same_bytes(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    status: int,
    reason: str,
    error: str,
) -> None:
    mixpanel_endpoint.set_mode(mode, times=1)
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    with caplog.at_level(logging.DEBUG, logger="presence_kit.mixpanel"):
        a.track(make_track())
        mixpanel_endpoint.wait_for(1)
        eventually(lambda: a.stats.sent == 1)
    assert a.stats == MixpanelStats(enqueued=1, sent=1, retried=1, dropped=0)
    reqs = mixpanel_endpoint.requests
    assert [r.mode for r in reqs] == [mode, "ok"]
    assert reqs[0].data == reqs[1].data
    [failure] = [r for r in caplog.records if r.getMessage().startswith("Mixpanel send failed")]
    assert failure.presence_reason == reason  # type: ignore[attr-defined]
    assert failure.presence_error == error  # type: ignore[attr-defined]
    assert failure.presence_status == status  # type: ignore[attr-defined]
    assert reasons(caplog) == []  # nothing dropped, nothing to warn about


def test_invalid_url_is_rejected_without_retry(
    opened: list[MixpanelAnalytics], caplog: pytest.LogCaptureFixture
) -> None:
    a = adapter(opened, client_for("not-a-url"))  # requests: MissingSchema, a ValueError
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        a.track(make_track())
        eventually(lambda: a.stats.dropped == 1 and bool(reasons(caplog)))
    assert a.stats == MixpanelStats(enqueued=1, sent=0, retried=0, dropped=1)
    assert reasons(caplog) == ["rejected (invalid-url)"]


class FailingConsumer:
    """A duck-typed consumer whose every send raises ``make_error()``."""

    def __init__(self, make_error: Callable[[], Exception]) -> None:
        self.make_error = make_error
        self.calls = 0

    def send(self, endpoint: str, json_message: str) -> None:
        self.calls += 1
        raise self.make_error()


@pytest.mark.parametrize(
    ("make_error", "reason"),
    [
        (lambda: mixpanel.MixpanelException("quota exceeded"), "rejected (mixpanel-exception)"),
        (lambda: mixpanel.MixpanelException("Mixpanel error: bad"), "rejected (mixpanel-error)"),
        (lambda: RuntimeError("boom"), "rejected (unexpected-RuntimeError)"),
    ],
)
def test_custom_consumer_errors_are_rejected_without_retry(
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
    make_error: Callable[[], Exception],
    reason: str,
) -> None:
    consumer = FailingConsumer(make_error)
    a = adapter(opened, mixpanel.Mixpanel(TOKEN, consumer=consumer))
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        a.track(make_track())
        eventually(lambda: a.stats.dropped == 1 and bool(reasons(caplog)))
    assert consumer.calls == 1
    assert a.stats == MixpanelStats(enqueued=1, sent=0, retried=0, dropped=1)
    assert reasons(caplog) == [reason]


def test_buffered_consumer_without_copyable_internals_posts_via_its_inner_consumer(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffered = mixpanel.BufferedConsumer(events_url=mixpanel_endpoint.url)
    inner = buffered._consumer
    inner._endpoints = types.MappingProxyType(inner._endpoints)  # not a dict: not copied
    a = adapter(opened, mixpanel.Mixpanel(TOKEN, consumer=buffered))
    first, second, third = make_track(0), make_track(1), make_track(2)

    mixpanel_endpoint.set_mode("reject400", times=1)
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        a.track(first)
        eventually(lambda: a.stats.dropped == 1 and bool(reasons(caplog)))
    # No HTTP status is seen on this path; the message text classifies the rejection.
    assert reasons(caplog) == ["rejected (mixpanel-error)"]
    a.track(second)
    eventually(lambda: a.stats.sent == 1)
    mixpanel_endpoint.set_mode("error500", times=2)
    a.track(third)
    eventually(lambda: a.stats.sent == 2)

    # The rejected event is not re-posted with the next batch, and each retry posts the
    # batch once (the BufferedConsumer's own buffer, which keeps failed batches, is unused).
    posted = [
        (r.mode, [e["properties"]["$insert_id"] for e in r.events])
        for r in mixpanel_endpoint.requests
    ]
    assert posted == [
        ("reject400", [first.insert_id]),
        ("ok", [second.insert_id]),
        ("error500", [third.insert_id]),
        ("error500", [third.insert_id]),
        ("ok", [third.insert_id]),
    ]
    assert a.stats == MixpanelStats(enqueued=3, sent=2, retried=2, dropped=1)


class HooklessConsumer(mixpanel.Consumer):  # type: ignore[misc]
    """A Consumer whose HTTP session offers no response-hook list to record statuses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session.hooks = {}


def test_own_consumer_without_status_hook_classifies_by_message(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mixpanel, "Consumer", HooklessConsumer)
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    mixpanel_endpoint.set_mode("reject400", times=1)
    with caplog.at_level(logging.DEBUG, logger="presence_kit.mixpanel"):
        a.track(make_track(0))
        eventually(lambda: a.stats.dropped == 1 and bool(reasons(caplog)))
        mixpanel_endpoint.set_mode("error500", times=1)
        a.track(make_track(1))
        mixpanel_endpoint.wait_for(1)
        eventually(lambda: a.stats.sent == 1)
    failures = [r for r in caplog.records if r.getMessage().startswith("Mixpanel send failed")]
    assert [(r.presence_status, r.presence_reason) for r in failures] == [  # type: ignore[attr-defined]
        (None, "mixpanel-error"),
        (None, "unparseable-response"),
    ]
    assert reasons(caplog) == ["rejected (mixpanel-error)"]
    assert [r.mode for r in mixpanel_endpoint.requests] == ["reject400", "error500", "ok"]
    assert a.stats == MixpanelStats(enqueued=2, sent=1, retried=1, dropped=1)


# --- worker lifecycle and close deadlines -----------------------------------------------


def test_flush_interval_zero_posts_each_event_alone(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=0)
    for i in range(4):
        a.track(make_track(i))
    mixpanel_endpoint.wait_for(4)
    assert [len(r.events) for r in mixpanel_endpoint.requests] == [1, 1, 1, 1]


def test_idle_worker_keeps_polling_and_delivers_later_events(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pk_mixpanel, "_IDLE_POLL", 0.02)
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    a.track(make_track(0))
    mixpanel_endpoint.wait_for(1)
    [worker] = workers_since(before)
    time.sleep(0.15)  # several empty idle polls
    assert worker.is_alive()
    a.track(make_track(1))
    mixpanel_endpoint.wait_for(2)
    eventually(lambda: a.stats == MixpanelStats(enqueued=2, sent=2, retried=0, dropped=0))
    assert workers_since(before) == [worker]


def test_worker_thread_start_failure_is_retried_on_the_next_event(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = [RuntimeError("can't start new thread")]

    class FlakyThread(threading.Thread):
        def start(self) -> None:
            if self.name == "presence-kit-mixpanel" and failures:
                raise failures.pop()
            super().start()

    monkeypatch.setattr(threading, "Thread", FlakyThread)
    a = adapter(opened, client_for(mixpanel_endpoint.url))
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        a.track(make_track(0))  # queued, but no worker yet
    assert reasons(caplog) == ["no-worker-thread"]
    assert a.stats == MixpanelStats(enqueued=1, sent=0, retried=0, dropped=0)
    time.sleep(0.1)
    assert mixpanel_endpoint.requests == []
    a.track(make_track(1))  # starts the worker, which delivers both
    mixpanel_endpoint.wait_for(2)
    eventually(lambda: a.stats.sent == 2)


def test_close_without_timeout_waits_out_the_backoff_and_delivers(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    mixpanel_endpoint.set_mode("error500", times=1)
    a = adapter(opened, client_for(mixpanel_endpoint.url), backoff=0.3, max_backoff=0.3)
    a.track(make_track())
    mixpanel_endpoint.wait_for_requests(1)
    start = time.monotonic()
    a.close(timeout=None)
    assert time.monotonic() - start < 2.0
    assert [r.mode for r in mixpanel_endpoint.requests] == ["error500", "ok"]
    assert a.stats == MixpanelStats(enqueued=1, sent=1, retried=1, dropped=0)


def test_close_deadline_cuts_the_backoff_short(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mixpanel_endpoint.set_mode("error500")
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url), backoff=5.0, max_backoff=5.0)
    a.track(make_track())
    mixpanel_endpoint.wait_for_requests(1)
    [worker] = workers_since(before)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="presence_kit.mixpanel"):
        a.close(timeout=0.3)
    worker.join(1.0)  # the 5 s backoff ends at close's deadline
    assert not worker.is_alive()
    assert time.monotonic() - start < 1.0
    assert len(mixpanel_endpoint.requests) == 1  # no retry after the deadline
    assert a.stats == MixpanelStats(enqueued=1, sent=0, retried=0, dropped=1)
    assert reasons(caplog) == ["close-deadline"]


def test_close_with_zero_timeout_sends_nothing_more(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url), flush_interval=5.0)
    a.track(make_track(0))
    a.track(make_track(1))
    [worker] = workers_since(before)  # collecting a batch for up to 5 s
    a.close(timeout=0)
    assert a.stats == MixpanelStats(enqueued=2, sent=0, retried=0, dropped=2)
    worker.join(1.0)
    assert not worker.is_alive()
    assert mixpanel_endpoint.requests == []


def test_failure_after_close_deadline_leaves_the_counters_final(
    mixpanel_endpoint: MixpanelEndpoint,
    opened: list[MixpanelAnalytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mixpanel_endpoint.set_mode("slow", delay=3.0)
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url), request_timeout=0.5, max_retries=0)
    a.track(make_track())
    mixpanel_endpoint.wait_for_requests(1)
    [worker] = workers_since(before)
    with caplog.at_level(logging.DEBUG, logger="presence_kit.mixpanel"):
        a.close(timeout=0.05)  # the request is still in flight
        final = a.stats
        assert final == MixpanelStats(enqueued=1, sent=0, retried=0, dropped=1)
        assert "Mixpanel worker still finishing a request" in caplog.text
        worker.join(2.0)  # the request times out; retries are exhausted at once
    assert not worker.is_alive()
    failures = [r for r in caplog.records if r.getMessage().startswith("Mixpanel send failed")]
    assert [r.presence_reason for r in failures] == ["ReadTimeout"]  # type: ignore[attr-defined]
    assert a.stats == final  # not counted twice
    assert reasons(caplog) == ["close-deadline"]  # no "retries exhausted" warning


# --- several senders -------------------------------------------------------------------


def test_several_senders_post_to_a_slow_endpoint_at_once(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    """One sender against a slow endpoint would post one batch per answer; four post
    four batches at once, each over its own HTTP session."""
    mixpanel_endpoint.set_mode("slow", delay=2.0)
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url), senders=4, batch_size=10)
    tracks = [make_track(i) for i in range(40)]
    for t in tracks:
        a.track(t)
    assert len(workers_since(before)) == 4
    # Four requests arrive while the first is still being answered (2 s).
    assert len(mixpanel_endpoint.wait_for_requests(4, timeout=1.8)) >= 4
    mixpanel_endpoint.wait_for(40)
    a.close(timeout=3.0)
    ids = [e["properties"]["$insert_id"] for e in mixpanel_endpoint.events]
    assert sorted(ids) == sorted(t.insert_id for t in tracks)  # each once
    assert a.stats == MixpanelStats(enqueued=40, sent=40, retried=0, dropped=0)
    assert not any(t.is_alive() for t in workers_since(before))


def test_close_joins_every_sender_and_delivers_the_rest(
    mixpanel_endpoint: MixpanelEndpoint, opened: list[MixpanelAnalytics]
) -> None:
    before = set(threading.enumerate())
    a = adapter(opened, client_for(mixpanel_endpoint.url), senders=3, flush_interval=30.0)
    for i in range(120):
        a.track(make_track(i))
    workers = workers_since(before)
    assert len(workers) == 3
    a.close(timeout=5.0)
    assert len(mixpanel_endpoint.events) == 120
    assert a.stats == MixpanelStats(enqueued=120, sent=120, retried=0, dropped=0)
    assert not any(w.is_alive() for w in workers)


def test_a_custom_consumer_is_called_by_one_sender_at_a_time(
    opened: list[MixpanelAnalytics],
) -> None:
    """Its thread safety is unknown: the senders take turns."""
    lock = threading.Lock()
    inside, most, posted = [0], [0], []

    class SlowConsumer:
        def send(self, endpoint: str, json_message: str) -> None:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1
                posted.extend(json.loads(json_message))

    a = adapter(opened, mixpanel.Mixpanel(TOKEN, consumer=SlowConsumer()), senders=4, batch_size=5)
    for i in range(40):
        a.track(make_track(i))
    a.close(timeout=5.0)
    assert len(posted) == 40
    assert most[0] == 1
