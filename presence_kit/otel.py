"""OpenTelemetry metrics of a kit: the optional extra ``otel`` (``opentelemetry-api``).

A kit built with ``meter_provider=`` (or, without it, with ``opentelemetry-api``
installed: OpenTelemetry's global provider, the way instrumentations do) gets the
instruments of :data:`INSTRUMENTS` on a meter named ``presence_kit`` with the
package's version. Only the handlers' durations and sweeps are recorded as they
happen; everything else is observed: read from the kit's own counters when the
metrics are collected (no cost per call), so it cannot drift from
:attr:`~presence_kit.PresenceKit.stats`. Every attribute comes from a closed set:
never a user, org, lesson or sid id.

This is the one module that imports ``opentelemetry``; ``import presence_kit`` never
does. The docs page "Metrics" lists every instrument, its Prometheus name, and alerts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from . import __version__
from ._core import KitCore
from ._metrics import role_attribute
from ._roles import ClientRole

__all__ = ["HANDLER_BUCKETS", "INSTRUMENTS", "Instrument", "KitMetrics"]

HANDLER = "presence_kit.handler"
"""Attribute: which handler (``connect``, ``update``, ``disconnect``)."""
ROLE = "presence_kit.role"
"""Attribute: the connection's role (a built-in role's name, else ``custom``)."""
TRANSITION = "presence_kit.transition"
"""Attribute: ``online`` or ``offline``."""
OPERATION = "presence_kit.operation"
"""Attribute: the store operation that failed (``connect``, ``disconnect``, ``update``,
or a background step: ``replay``, ``heartbeat``, ``due_leaves``, ``sweep``,
``reconcile``)."""

HANDLER_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
"""Histogram boundaries (seconds) given as advice: a handler call takes from a tenth of
a millisecond to a second (the SDK's default buckets start at 5, meant for ms)."""

SWEEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
"""Histogram boundaries (seconds) of a dead node's sweep."""


class Instrument(NamedTuple):
    """One instrument: its name, kind, unit, attributes and meaning (the docs' table)."""

    name: str
    kind: str
    unit: str
    attributes: tuple[str, ...]
    description: str

    @property
    def prometheus(self) -> str:
        """The metric family's name in a Prometheus scrape (through the OpenTelemetry
        Prometheus exporter: dots become underscores, seconds are named, counters end
        in ``_total``)."""
        name = self.name.replace(".", "_") + ("_seconds" if self.unit == "s" else "")
        return f"{name}_total" if self.kind.startswith("counter") else name

    def row(self) -> str:
        """The instrument's line in the docs' table."""
        attributes = ", ".join(f"`{a}`" for a in self.attributes) or "—"
        return (
            f"| `{self.name}` | {self.kind} | `{self.unit}` | {attributes} | "
            f"`{self.prometheus}` | {self.description} |"
        )


INSTRUMENTS = (
    Instrument(
        "presence_kit.handler.duration", "histogram", "s", (HANDLER, ROLE),
        "Duration of each handler call (connect, update, disconnect), store call and "
        "effects included; one measurement per call.",
    ),
    Instrument(
        "presence_kit.connections", "up-down counter (observable)", "{connection}", (ROLE,),
        "This node's live connections, from the kit's own sessions.",
    ),
    Instrument(
        "presence_kit.transitions", "counter (observable)", "{transition}", (TRANSITION, ROLE),
        "Announced presence changes: a user came online or went offline.",
    ),
    Instrument(
        "presence_kit.store.errors", "counter (observable)", "{error}", (OPERATION,),
        "Failed store calls (a handler's, then queued for replay; or a background step's).",
    ),
    Instrument(
        "presence_kit.outbox.size", "gauge (observable)", "{operation}", (),
        "Store operations waiting for replay (non-zero while Redis fails or catches up).",
    ),
    Instrument(
        "presence_kit.outbox.dropped", "counter (observable)", "{operation}", (),
        "Queued operations forced out by the outbox's bound (left to reconcile and sweeps).",
    ),
    Instrument(
        "presence_kit.recovered", "counter (observable)", "{connection}", (),
        "Connections of dead nodes (or stale records) whose leave this node's sweeps and "
        "reconciles ran.",
    ),
    Instrument(
        "presence_kit.sweep.duration", "histogram", "s", (),
        "Duration of one dead node incarnation's sweep.",
    ),
    Instrument(
        "presence_kit.fenced", "counter (observable)", "{event}", (),
        "Times this node learnt it had been presumed dead (it stalled, or lost Redis for "
        "longer than node_timeout) and registered its sockets again.",
    ),
    Instrument(
        "presence_kit.sockets.errors", "counter (observable)", "{error}", (),
        "Failed effects on the Socket.IO server (a room change, an emit).",
    ),
    Instrument(
        "presence_kit.analytics.dropped", "counter (observable)", "{event}", (),
        "Analytics events dropped (queue full, rejected, retries exhausted), from an "
        "analytics adapter that counts them (MixpanelAnalytics).",
    ),
)  # fmt: skip
"""Every instrument a kit creates."""

_ROLES = tuple(role.value for role in ClientRole)


def _counts(read: Callable[[], Iterable[tuple[Mapping[str, str], int]]]) -> Any:
    """An observable instrument's callback: ``read()``'s values as observations."""

    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attributes)) for attributes, value in read()]

    return callback


class KitMetrics:
    """The instruments of one kit (see :data:`INSTRUMENTS`), on ``meter_provider`` (the
    global one when ``None``). Built by the facades; integrators pass the provider."""

    def __init__(self, meter_provider: object | None, core: KitCore, analytics: object) -> None:
        if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
            raise TypeError(
                f"meter_provider must be an OpenTelemetry MeterProvider, got "
                f"{type(meter_provider).__name__}"
            )
        self._core, self._analytics = core, analytics
        provider = meter_provider if isinstance(meter_provider, MeterProvider) else None
        meter = get_meter("presence_kit", __version__, provider)
        by_name = {instrument.name: instrument for instrument in INSTRUMENTS}

        def spec(name: str) -> dict[str, str]:
            return {"unit": by_name[name].unit, "description": by_name[name].description}

        self._handler = meter.create_histogram(
            "presence_kit.handler.duration",
            explicit_bucket_boundaries_advisory=HANDLER_BUCKETS,
            **spec("presence_kit.handler.duration"),
        )
        self._sweep = meter.create_histogram(
            "presence_kit.sweep.duration",
            explicit_bucket_boundaries_advisory=SWEEP_BUCKETS,
            **spec("presence_kit.sweep.duration"),
        )
        # The attribute sets of the handler histogram, built once (a record per call).
        self._handler_attributes: dict[tuple[str, str], dict[str, str]] = {}
        meter.create_observable_up_down_counter(
            "presence_kit.connections",
            [_counts(self._connections)],
            **spec("presence_kit.connections"),
        )
        observed: list[tuple[str, Callable[[], Iterable[tuple[Mapping[str, str], int]]]]] = [
            ("presence_kit.transitions", self._transitions),
            ("presence_kit.store.errors", self._store_errors),
            ("presence_kit.outbox.dropped", self._stat("outbox_dropped")),
            ("presence_kit.recovered", self._stat("recovered")),
            ("presence_kit.fenced", self._stat("fenced")),
            ("presence_kit.sockets.errors", self._stat("sockets_failures")),
            ("presence_kit.analytics.dropped", self._analytics_dropped),
        ]
        for name, read in observed:
            meter.create_observable_counter(name, [_counts(read)], **spec(name))
        meter.create_observable_gauge(
            "presence_kit.outbox.size",
            [_counts(lambda: [({}, len(core.outbox))])],
            **spec("presence_kit.outbox.size"),
        )

    # --- recorded as it happens -----------------------------------------------------

    def handler(self, handler: str, role: str, seconds: float) -> None:
        """Record one handler call."""
        key = (handler, role)
        attributes = self._handler_attributes.get(key)
        if attributes is None:
            attributes = {HANDLER: handler, ROLE: role_attribute(role)}
            if len(self._handler_attributes) < 64:  # roles are few; bound it anyway
                self._handler_attributes[key] = attributes
        self._handler.record(seconds, attributes)

    def sweep(self, seconds: float) -> None:
        """Record one dead node incarnation's sweep."""
        self._sweep.record(seconds)

    # --- read when collected --------------------------------------------------------

    def _connections(self) -> list[tuple[Mapping[str, str], int]]:
        counts = dict.fromkeys(_ROLES, 0)
        for role in self._core.local_roles():
            name = role_attribute(role)
            counts[name] = counts.get(name, 0) + 1
        return [({ROLE: role}, n) for role, n in counts.items()]

    def _transitions(self) -> list[tuple[Mapping[str, str], int]]:
        return [
            ({TRANSITION: transition, ROLE: role_attribute(role)}, n)
            for (transition, role), n in self._core.keyed_counts("transitions").items()
        ]

    def _store_errors(self) -> list[tuple[Mapping[str, str], int]]:
        # the handlers' operations from the start (a series an alert can rate at once)
        counts = dict.fromkeys(("connect", "update", "disconnect"), 0)
        for (operation, _), n in self._core.keyed_counts("store_errors").items():
            counts[operation] = n
        return [({OPERATION: operation}, n) for operation, n in counts.items()]

    def _stat(self, name: str) -> Callable[[], list[tuple[Mapping[str, str], int]]]:
        def read() -> list[tuple[Mapping[str, str], int]]:
            return [({}, int(getattr(self._core.stats(), name)))]

        return read

    def _analytics_dropped(self) -> list[tuple[Mapping[str, str], int]]:
        dropped = getattr(getattr(self._analytics, "stats", None), "dropped", None)
        return [({}, dropped)] if isinstance(dropped, int) else []
