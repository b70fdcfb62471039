"""OpenTelemetry metrics (presence_kit.otel): every instrument read back with the SDK's
InMemoryMetricReader after real traffic, a real Redis outage and a real dead-node
sweep; a Prometheus scrape over HTTP; and nothing of OpenTelemetry without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from presence_kit import AsyncPresenceKit, PresenceKit, Settings
from presence_kit.otel import INSTRUMENTS
from presence_kit.redis import AsyncRedisStore, RedisStore
from presence_kit.socketio import AsyncSocketIORooms
from presence_kit.testing import RecordingAnalytics, RecordingSockets
from tests.support.redis_servers import RedisServer, aclose_client, free_port
from tests.support.sio_harness import AsyncServerHandle, eventually, running_async_server

HUB = {"role": "TeacherHub", "org_id": 1, "user_id": 100, "lesson_id": 5}
TEACHER = {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5}
PARTICIPANT = {
    "role": "ParticipantWeb",
    "org_id": 1,
    "user_id": 42,
    "lesson_id": 5,
    "room_id": "r-9",
}
QUIET = Settings(
    heartbeat_interval=30, node_timeout=60, leave_poll_interval=30, reconcile_interval=30
)
CLOSED = {
    "presence_kit.handler": {"connect", "update", "disconnect"},
    "presence_kit.role": {"TeacherAPP", "TeacherHub", "ParticipantWeb", "custom"},
    "presence_kit.transition": {"online", "offline"},
    "presence_kit.operation": {
        "connect", "update", "disconnect", "replay", "heartbeat", "due_leaves", "sweep",
        "reconcile",
    },
}  # fmt: skip


class Metrics:
    """What the reader collected: ``points(name)`` -> ``[(attributes, point)]``."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self._reader = reader
        self.by_name: dict[str, Any] = {}

    def collect(self) -> Metrics:
        self.by_name = {}
        data = self._reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "presence_kit"
                for metric in scope.metrics:
                    self.by_name[metric.name] = metric
        return self

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        metric = self.by_name.get(name)
        if metric is None:
            return []
        return [(dict(p.attributes or {}), p) for p in metric.data.data_points]

    def value(self, name: str, **attributes: str) -> int:
        """The sum of the points whose attributes include ``attributes``."""
        wanted = {f"presence_kit.{k}": v for k, v in attributes.items()}
        return sum(p.value for attrs, p in self.points(name) if wanted.items() <= attrs.items())

    def count(self, name: str, **attributes: str) -> int:
        """A histogram's count over the points whose attributes include ``attributes``."""
        wanted = {f"presence_kit.{k}": v for k, v in attributes.items()}
        return sum(p.count for attrs, p in self.points(name) if wanted.items() <= attrs.items())


_PROVIDERS: dict[int, MeterProvider] = {}


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An SDK reader, with its provider (:func:`provider_of`)."""
    reader = InMemoryMetricReader()
    provider = _PROVIDERS[id(reader)] = MeterProvider(metric_readers=[reader])
    try:
        yield reader
    finally:
        provider.shutdown()
        del _PROVIDERS[id(reader)]


def provider_of(reader: InMemoryMetricReader) -> MeterProvider:
    return _PROVIDERS[id(reader)]


@asynccontextmanager
async def metered_server(
    server: RedisServer, provider: MeterProvider, analytics: Any
) -> AsyncIterator[tuple[AsyncServerHandle, AsyncPresenceKit]]:
    client = server.async_client()
    holder: dict[str, Any] = {}

    def setup(sio: Any) -> None:
        kit = holder["kit"] = AsyncPresenceKit(
            store=AsyncRedisStore(client, timeout=0.1),
            sockets=AsyncSocketIORooms(sio),
            analytics=analytics,
            settings=QUIET,
            meter_provider=provider,
        )

        async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
            await sio.save_session(sid, auth)
            await kit.handle_connect(sid, auth)

        async def move(sid: str, changes: dict[str, Any]) -> None:
            session = {**await sio.get_session(sid), **changes}
            await kit.handle_update(sid, session)
            await sio.save_session(sid, session)

        async def disconnect(sid: str, reason: str) -> None:
            await kit.handle_disconnect(sid, await sio.get_session(sid), reason=reason)

        sio.on("connect", connect)
        sio.on("move", move)
        sio.on("disconnect", disconnect)

    try:
        async with running_async_server(setup) as srv:
            try:
                yield srv, holder["kit"]
            finally:
                await holder["kit"].aclose()
    finally:
        await aclose_client(client)


async def test_every_instrument_reads_back_what_happened(
    fresh_redis_server: RedisServer, reader: InMemoryMetricReader
) -> None:
    analytics = RecordingAnalytics()
    metrics = Metrics(reader)
    provider = provider_of(reader)
    async with metered_server(fresh_redis_server, provider, analytics) as (srv, kit):
        hub = await srv.connect_client(HUB)
        teacher = await srv.connect_client(TEACHER)
        pupil = await srv.connect_client(PARTICIPANT)
        await hub.wait_for("teacher_connect")
        await teacher.client.emit("move", {"lesson_id": 6})
        await hub.wait_for("teacher_update")
        m = metrics.collect()
        # the connections gauge is the live sockets, by role
        assert m.value("presence_kit.connections", role="TeacherAPP") == 1
        assert m.value("presence_kit.connections", role="TeacherHub") == 1
        assert m.value("presence_kit.connections", role="ParticipantWeb") == 1
        assert m.value("presence_kit.connections") == len(srv.sio.manager.rooms["/"][None])
        assert m.count("presence_kit.handler.duration", handler="connect") == 3
        assert m.count("presence_kit.handler.duration", handler="update", role="TeacherAPP") == 1
        assert m.value("presence_kit.transitions", transition="online", role="TeacherAPP") == 1

        # a Redis outage: the disconnects fail, are counted and queued
        fresh_redis_server.pause()
        try:
            await teacher.disconnect()
            await pupil.disconnect()
            await eventually(lambda: kit.pending == 2, timeout=5)
            m = metrics.collect()
            # the first fails; the second fails too, or queues behind it unsent
            failed = m.value("presence_kit.store.errors", operation="disconnect")
            assert failed == kit.stats.store_failures >= 1
            assert m.value("presence_kit.outbox.size") == 2
            assert m.value("presence_kit.connections") == 1  # the hub's
        finally:
            fresh_redis_server.resume()
        assert await kit.replay_outbox() == 2
        m = metrics.collect()
        assert m.value("presence_kit.outbox.size") == 0
        assert m.value("presence_kit.transitions", transition="offline", role="TeacherAPP") == 1
        assert m.count("presence_kit.handler.duration", handler="disconnect") == 2

        # a dead node: its connection is swept by this kit
        dead = PresenceKit(
            store=RedisStore(fresh_redis_server.client()),
            sockets=RecordingSockets(),
            # handed over at close as dead for longer than this kit's node_timeout
            settings=Settings(heartbeat_interval=1, node_timeout=100, shutdown_grace=0),
        )
        dead.heartbeat()
        dead.handle_connect("dead-1", {**TEACHER, "user_id": 8})
        dead.close()
        assert await kit.sweep_dead_nodes() == 1
        m = metrics.collect()
        assert m.value("presence_kit.recovered") == 1
        assert m.count("presence_kit.sweep.duration") == 1
        assert m.value("presence_kit.outbox.dropped") == 0
        assert m.value("presence_kit.fenced") == 0
        assert m.value("presence_kit.sockets.errors") == 0

        stats = kit.stats
        assert m.value("presence_kit.transitions", transition="online") == stats.announced_online
        assert m.value("presence_kit.transitions", transition="offline") == (
            stats.announced_offline
        )
        # every instrument is there, and no attribute carries an id
        assert set(m.by_name) == {i.name for i in INSTRUMENTS} - {"presence_kit.analytics.dropped"}
        for name in m.by_name:
            instrument = next(i for i in INSTRUMENTS if i.name == name)
            assert m.by_name[name].unit == instrument.unit
            for attributes, _point in m.points(name):
                assert set(attributes) <= set(instrument.attributes)
                for key, value in attributes.items():
                    assert value in CLOSED[key], (name, key, value)


def test_analytics_drops_are_read_from_the_adapter(reader: InMemoryMetricReader) -> None:
    class Dropping(RecordingAnalytics):
        @property
        def stats(self) -> Any:
            return type("Stats", (), {"dropped": 3})()

    kit = PresenceKit(
        sockets=RecordingSockets(), analytics=Dropping(), meter_provider=provider_of(reader)
    )
    try:
        assert Metrics(reader).collect().value("presence_kit.analytics.dropped") == 3
    finally:
        kit.close()


def test_a_custom_role_is_reported_as_custom(reader: InMemoryMetricReader) -> None:
    from presence_kit import TeacherHubPolicy

    kit = PresenceKit(
        sockets=RecordingSockets(),
        policies={"Observer-17": TeacherHubPolicy()},
        meter_provider=provider_of(reader),
    )
    try:
        kit.handle_connect("o1", {**HUB, "role": "Observer-17"})
        m = Metrics(reader).collect()
        assert m.count("presence_kit.handler.duration", role="custom") == 1
        assert m.value("presence_kit.connections", role="custom") == 1
    finally:
        kit.close()


def test_the_histograms_advise_sub_millisecond_buckets(reader: InMemoryMetricReader) -> None:
    kit = PresenceKit(sockets=RecordingSockets(), meter_provider=provider_of(reader))
    try:
        kit.handle_connect("t1", TEACHER)
        [(_attrs, point)] = Metrics(reader).collect().points("presence_kit.handler.duration")
        assert point.explicit_bounds[0] == 0.0001 and point.explicit_bounds[-1] == 1.0
    finally:
        kit.close()


def test_a_meter_provider_must_be_one(reader: InMemoryMetricReader) -> None:
    with pytest.raises(TypeError, match="MeterProvider"):
        PresenceKit(sockets=RecordingSockets(), meter_provider=object())


def test_the_global_provider_is_used_by_default() -> None:
    """Without ``meter_provider`` the kit uses OpenTelemetry's global provider, as
    instrumentations do (in a fresh process: the global provider is set once)."""
    program = textwrap.dedent(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from presence_kit import PresenceKit
        from presence_kit.testing import RecordingSockets

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        kit = PresenceKit(sockets=RecordingSockets())
        kit.handle_connect("t1", {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5})
        names = {m.name for r in reader.get_metrics_data().resource_metrics
                 for s in r.scope_metrics for m in s.metrics}
        assert "presence_kit.handler.duration" in names, names
        kit.close()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


_WITHOUT_OTEL = textwrap.dedent(
    """
    import sys

    class NoOpenTelemetry:  # as if opentelemetry-api were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoOpenTelemetry())
    import presence_kit
    from presence_kit import PresenceKit
    from presence_kit.testing import RecordingSockets

    assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    kit = PresenceKit(sockets=RecordingSockets())  # nothing changes
    kit.handle_connect("t1", {"role": "TeacherAPP", "org_id": 1, "user_id": 7, "lesson_id": 5})
    kit.close()
    try:
        PresenceKit(sockets=RecordingSockets(), meter_provider=object())
    except ImportError as exc:
        assert "presence-kit[otel]" in str(exc), exc
    else:
        raise AssertionError("meter_provider= without OpenTelemetry was accepted")
    assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    """
)


def test_without_opentelemetry_nothing_of_it_is_imported() -> None:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_OTEL], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    plain = "import sys, presence_kit; assert not [m for m in sys.modules if 'opentelemetry' in m]"
    done = subprocess.run([sys.executable, "-c", plain], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def test_a_prometheus_scrape_finds_the_metrics() -> None:
    """The OpenTelemetry Prometheus exporter, served over HTTP, scraped with a real
    request: the instruments under their Prometheus names."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    prometheus = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[prometheus])

    class CountingAnalytics(RecordingAnalytics):
        stats = type("Stats", (), {"dropped": 0})()

    kit = PresenceKit(
        sockets=RecordingSockets(), analytics=CountingAnalytics(), meter_provider=provider
    )
    try:
        kit.handle_connect("t1", TEACHER)
        kit.handle_update("t1", {**TEACHER, "lesson_id": 6})
        kit.handle_disconnect("t1", TEACHER)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        ]

        def scraped(name: str, **labels: str) -> float:
            wanted = {f"presence_kit_{k}": v for k, v in labels.items()}
            found = [v for n, got, v in samples if n == name and wanted.items() <= got.items()]
            assert found, (name, labels)
            return sum(found)

        handler = "presence_kit_handler_duration_seconds_count"
        assert scraped(handler, handler="connect", role="TeacherAPP") == 1
        assert scraped(handler, handler="update", role="TeacherAPP") == 1
        assert scraped("presence_kit_transitions_total", transition="offline") == 1
        assert scraped("presence_kit_connections", role="TeacherAPP") == 0
        assert scraped("presence_kit_outbox_size") == 0
        # every instrument under the name the docs give (the sweep's once one ran)
        names = {name for name, _labels, _value in samples}
        for instrument in INSTRUMENTS:
            if instrument.name != "presence_kit.sweep.duration":
                family = instrument.prometheus
                assert family in names or f"{family}_count" in names, family
    finally:
        kit.close()
        server.shutdown()
        thread.join(5)
        provider.shutdown()  # (the reader leaves the default registry)
