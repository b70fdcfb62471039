"""What both facades share that does no I/O: the pure core, the public state, logging.

The facades themselves are written once, as asyncio code
(:mod:`presence_kit._async.kit`), and the blocking one is made from it
(:mod:`presence_kit._sync.kit`); both build on :class:`KitBase`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TypeVar

from ._core import KitCore, KitStats
from ._effects import Effect
from ._policies import DisconnectPolicy
from ._ports import HasNamespace, ListsLocalSids
from ._ratelimit import RateLimit
from ._settings import Settings

__all__ = ["DUE_LEAVES_PER_STEP", "KitBase", "logger"]

logger = logging.getLogger("presence_kit")

T = TypeVar("T")

BUCKETS_PER_READ = 32
"""Node-index buckets read per round trip during a sweep."""

DUE_LEAVES_PER_STEP = 100
"""Held-back leaves run per grace-scheduler step (``run_due_leaves``' default limit).

Each costs a round trip, so one background step stays short however many are due;
the rest are picked up by the next step, ``leave_poll_interval`` later."""

_STORE_FAILURE_LOG_INTERVAL = 5.0
"""Seconds between the warnings (with a traceback) of store failures; the rest at DEBUG."""


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in slices of ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def local_sids(sockets: object) -> set[str] | None:
    """The sids this process serves, if the sockets port can list them."""
    if isinstance(sockets, ListsLocalSids):
        return set(sockets.local_sids())
    return None


def log_background_failure(exc: BaseException) -> None:
    """A background step failed (it is retried at the next one)."""
    logger.warning("presence background step failed; retrying later", exc_info=exc)


def log_effect_failure(effect: Effect, exc: BaseException) -> None:
    """An effect (a room change, an emit) failed; the handler carries on."""
    logger.warning(
        "presence effect %s failed",
        type(effect).__name__,
        exc_info=exc,
        extra={"presence_effect": type(effect).__name__},
    )


def _namespace(sockets: object) -> str:
    if isinstance(sockets, HasNamespace) and isinstance(sockets.namespace, str):
        return sockets.namespace
    return "/"


class KitBase:
    """The state both facades keep beside their ports: the pure core
    (:class:`~presence_kit._core.KitCore`), the lifecycle flags, the failure log's rate."""

    def __init__(
        self,
        *,
        sockets: object,
        settings: Settings | None,
        policies: Mapping[str, DisconnectPolicy] | None,
    ) -> None:
        self._core = KitCore(settings=settings, policies=policies, namespace=_namespace(sockets))
        self._closed = False
        self._stopping = False
        self._failure_logs = RateLimit(_STORE_FAILURE_LOG_INTERVAL)

    @property
    def settings(self) -> Settings:
        """The kit's settings."""
        return self._core.settings

    @property
    def node_id(self) -> str:
        """This kit's node id (from :attr:`Settings.node_id` or generated)."""
        return self._core.node_id

    @property
    def incarnation(self) -> str:
        """This kit's current incarnation of its node: new when it learns it was swept
        while alive (fenced). :meth:`nodes` lists it as ``f"{node_id}/{incarnation}"``,
        and each :class:`~presence_kit.ConnectionRecord` it writes carries it."""
        return self._core.incarnation

    @property
    def pending(self) -> int:
        """Store operations waiting in the outbox for replay (the one being replayed
        included): non-zero after a Redis failure until the replay has caught up."""
        return len(self._core.outbox)

    @property
    def stats(self) -> KitStats:
        """Counters: handled connects/disconnects, announcements, backend failures."""
        return self._core.stats()

    def register_policy(self, role: str, policy: DisconnectPolicy) -> None:
        """Handle sessions of ``role`` with ``policy`` (adds a role or replaces one)."""
        self._core.policies.register(role, policy)

    @property
    def _tick(self) -> float:
        s = self.settings
        return min(s.heartbeat_interval, s.leave_poll_interval)

    def _store_failed(self, operation: str, sid: str, exc: BaseException) -> None:
        # An outage fails every handler: one warning with the traceback per 5 s, the rest
        # at DEBUG (the counters in kit.stats keep the exact numbers).
        self._core.count("store_failures")
        self._core.count_keyed("store_errors", (operation, ""))
        extra = {"presence_operation": operation, "presence_sid": sid}
        if self._failure_logs.check("store") is not None:
            logger.warning(
                "presence store failed during %s; queued for replay (%s)",
                operation,
                type(exc).__name__,
                exc_info=exc,
                extra=extra,
            )
        else:
            logger.debug("presence store failed during %s: %s", operation, exc, extra=extra)
