"""Where a kit's metrics come from, without importing OpenTelemetry.

The instruments themselves are in :mod:`presence_kit.otel` (the optional extra
``otel``): this module only decides whether a kit gets them, so that
``import presence_kit`` never imports ``opentelemetry`` and a kit built without it
changes nothing. :class:`Recorder` is what the facades call on their hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ._roles import ClientRole

if TYPE_CHECKING:
    from ._core import KitCore

__all__ = ["OTEL_EXTRA_HINT", "Recorder", "recorder_for", "role_attribute"]

OTEL_EXTRA_HINT = "pip install 'presence-kit[otel]' (opentelemetry-api)"
"""How to get what ``meter_provider=`` needs."""

_BUILT_IN_ROLES = frozenset(role.value for role in ClientRole)


def role_attribute(role: str) -> str:
    """A role as a metric attribute: a built-in role's name, else ``"custom"`` (an
    attribute's values must come from a closed set)."""
    return role if role in _BUILT_IN_ROLES else "custom"


class Recorder(Protocol):
    """What a kit records as it goes (the rest is read when metrics are collected)."""

    def handler(self, handler: str, role: str, seconds: float) -> None:
        """One handler call of ``handler`` (``connect``, ``update``, ``disconnect``)
        for a connection of ``role``, which took ``seconds``."""

    def sweep(self, seconds: float) -> None:
        """One dead node incarnation swept, in ``seconds``."""


def recorder_for(
    meter_provider: object | None, core: KitCore, analytics: object
) -> Recorder | None:
    """The kit's metrics: on ``meter_provider``, or on OpenTelemetry's global provider
    when it is ``None`` and ``opentelemetry-api`` is installed; ``None`` when it is not
    (and none was asked for). ``meter_provider`` given without it installed is an
    :class:`ImportError` that names the extra."""
    try:
        from .otel import KitMetrics
    except ImportError as exc:
        if meter_provider is None:
            return None
        raise ImportError(f"meter_provider= needs OpenTelemetry: {OTEL_EXTRA_HINT}") from exc
    return KitMetrics(meter_provider, core, analytics)
