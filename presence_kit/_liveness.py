"""What a node knows of its own standing in the registry: when Redis last answered
and what background work is due. Pure state, updated by the background flows."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NodeLiveness"]


@dataclass(slots=True)
class NodeLiveness:
    """What a node knows of its own standing: when Redis last answered, what is due.

    A node sweeps others only after it has itself seen Redis answer continuously for
    longer than ``node_timeout``, so a Redis outage or failover does not make every
    node look dead to every other at once.
    """

    registered: bool = False
    healthy_since: float | None = None
    last_answer: float | None = None
    next_beat: float = 0.0
    next_reconcile: float = 0.0

    def answered(self, now: float, node_timeout: float) -> None:
        """Redis answered a heartbeat. A gap longer than ``node_timeout`` since the last
        answer (this process stalled, or nothing asked) breaks the continuity too."""
        gap = self.last_answer is not None and now - self.last_answer > node_timeout
        if self.healthy_since is None or gap:
            self.healthy_since = now
        self.last_answer = now

    def failed(self) -> None:
        """A heartbeat failed: the continuity needed to sweep starts again."""
        self.healthy_since = None
        self.last_answer = None

    def may_sweep(self, now: float, node_timeout: float) -> bool:
        """Redis has answered continuously for longer than ``node_timeout``, up to now."""
        return (
            self.healthy_since is not None
            and self.last_answer is not None
            and now - self.last_answer <= node_timeout
            and now - self.healthy_since > node_timeout
        )
