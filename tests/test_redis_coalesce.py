"""The blocking store's coalescer: a call is reported unsent only if it never was."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from presence_kit._synchronization import Coalescer


class _SlowRedis:
    """Stands in for the two send functions: each round trip takes ``delay`` seconds
    and records which calls it carried."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sent: list[list[Any]] = []

    def one(self, call: Any) -> Any:
        time.sleep(self.delay)
        self.sent.append([call])
        return f"reply-{call}"

    def batch(self, calls: list[Any]) -> list[Any]:
        time.sleep(self.delay)
        self.sent.append(list(calls))
        return [f"reply-{call}" for call in calls]


def test_a_call_taken_into_a_slow_batch_gets_its_reply_not_a_timeout() -> None:
    """t1 sends alone; t2 and t3 queue. t2 gets the turn and sends itself and t3 in one
    batch whose reply is slower than t3's turn timeout. t3 was sent: it must get its
    reply (a "never sent" TimeoutError would make its caller treat a call that ran as
    one that did not)."""
    redis = _SlowRedis(delay=0.4)
    coalescer = Coalescer(redis.one, redis.batch, lambda calls: 0.6, batch_size=50)
    replies: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            replies[name] = coalescer.call(name)
        except Exception as exc:
            replies[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in ("t1", "t2", "t3")]
    threads[0].start()
    while not coalescer.sending:
        time.sleep(0.001)
    for thread in threads[1:]:
        thread.start()
    while coalescer.queued < 2:
        time.sleep(0.001)
    for thread in threads:
        thread.join(5)
    assert redis.sent == [["t1"], ["t2", "t3"]]
    assert replies == {"t1": "reply-t1", "t2": "reply-t2", "t3": "reply-t3"}


def test_a_call_that_never_got_a_turn_times_out_unsent() -> None:
    """A queued call whose turn does not come within its timeout is withdrawn: it is
    never sent, and its caller gets a TimeoutError."""
    redis = _SlowRedis(delay=0.5)
    coalescer = Coalescer(redis.one, redis.batch, lambda calls: 0.1, batch_size=50)
    first = threading.Thread(target=coalescer.call, args=("t1",))
    first.start()
    while not coalescer.sending:
        time.sleep(0.001)
    with pytest.raises(TimeoutError, match="no turn"):
        coalescer.call("t2")
    first.join(5)
    assert redis.sent == [["t1"]]
    assert coalescer.queued == 0
