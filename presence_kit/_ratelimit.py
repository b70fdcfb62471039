"""A rate limit for log lines: an outage must not flood the logs.

Used by the facades (store failures, one warning per 5 s) and by the delivery engine
behind the Mixpanel adapter (drops, one warning per reason per 10 s).
"""

from __future__ import annotations

import threading
import time

__all__ = ["RateLimit"]


class RateLimit:
    """Allows one log line per key per ``interval`` seconds and counts the ones it held
    back. Thread-safe."""

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
