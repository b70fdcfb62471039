"""Sweep of one dead node: how long until its N connections' Redis state is right and
every leave is announced (``python -m bench.tools.sweep 10000``).

Half the connections are teachers (each announced with ``teacher_disconnect``), half
participants. Node A records them and stops heartbeating; node B sweeps it through
the real ``PresenceKit.sweep_dead_nodes`` on a fresh redis-server (a standalone one:
one pipelined round trip per ``sweep_batch`` connections). Emits go to the in-process
recording sockets, so the time is Redis and presence_kit.
"""

from __future__ import annotations

import argparse
import time

from presence_kit import PresenceKit, Settings
from presence_kit.redis import RedisStore
from presence_kit.testing import RecordingSockets
from tests.support.redis_servers import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("connections", type=int, nargs="?", default=10_000)
    n = parser.parse_args().connections
    settings = Settings(node_timeout=0.3, heartbeat_interval=0.1)
    with RedisServer() as server:
        lost = PresenceKit(
            store=RedisStore(server.client()), sockets=RecordingSockets(), settings=settings
        )
        lost.heartbeat()
        for i in range(n):
            role = "TeacherAPP" if i % 2 == 0 else "ParticipantWeb"
            session = {
                "role": role,
                "org_id": i % 100,
                "user_id": i,
                "lesson_id": i % 500,
                "room_id": 1,
            }
            lost.handle_connect(f"sid{i:07d}", session)
        sockets = RecordingSockets()
        sweeper = PresenceKit(
            store=RedisStore(server.client()), sockets=sockets, settings=settings
        )
        time.sleep(0.4)  # node A is now dead
        started = time.perf_counter()
        recovered = sweeper.sweep_dead_nodes()
        elapsed = time.perf_counter() - started
        announced = sum(
            1 for event, _data, _to in sockets.emitted if event == "teacher_disconnect"
        )
        pipe = server.client().pipeline(transaction=False)
        for i in range(0, n, 2):
            pipe.hget(f"alive:org_{i % 100}_user_{i}", "state")
        offline = sum(1 for state in pipe.execute() if state == b"disconnect")
    print(
        f"swept {recovered:,} connections in {elapsed:.2f} s ({recovered / elapsed:,.0f}/s): "
        f"{announced:,} teacher_disconnect announced, {offline:,} alive keys offline"
    )


if __name__ == "__main__":
    main()
