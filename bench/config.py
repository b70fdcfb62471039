"""How big each measurement is: the full run (a few minutes) and ``--quick`` (about one)."""

from __future__ import annotations

from dataclasses import dataclass

MEASUREMENTS = ("m1", "decompose", "m6", "m2", "m3", "m4", "m5", "profile")
"""What ``--only`` accepts, in the order they run."""


@dataclass(frozen=True, kw_only=True)
class Config:
    quick: bool
    only: frozenset[str]
    # 1. per-event cost
    m1_rounds: int
    m1_sequential_events: int
    m1_concurrent_events: int
    # our code versus its Redis work (bench/tools/decompose.py)
    decompose_rounds: int
    decompose_events: int
    """Events per round and section (the issue asks for at least 10,000 in all)."""
    # 6. the TeacherAPP cycle on a real server
    cycle_rounds: int
    cycle_events: int
    """Connect + disconnect cycles per variant and round."""
    # 2. disconnect storm
    storm_sizes: tuple[int, ...]
    storm_rounds: int
    """Interleaved rounds at the smallest size; larger sizes run once."""
    storm_concurrency: int = 200
    # 3. event-loop lag
    lag_rate: int = 1000
    lag_seconds: float
    lag_rounds: int
    lag_interval: float = 0.005
    # 4. memory
    memory_teachers: int
    # 5. end to end
    e2e_clients: int
    e2e_disconnects: int
    """Teacher disconnects per variant."""
    # profile
    profile_events: int

    def m1_events(self, concurrency: int) -> int:
        return self.m1_sequential_events if concurrency == 1 else self.m1_concurrent_events

    def wants(self, measurement: str) -> bool:
        return not self.only or measurement in self.only

    @classmethod
    def full(cls, only: frozenset[str] = frozenset()) -> Config:
        return cls(
            quick=False,
            only=only,
            m1_rounds=7,
            m1_sequential_events=300,
            m1_concurrent_events=1000,
            decompose_rounds=5,
            decompose_events=2000,
            cycle_rounds=9,
            cycle_events=400,
            storm_sizes=(10_000, 100_000),
            storm_rounds=3,
            lag_seconds=2.0,
            lag_rounds=3,
            memory_teachers=10_000,
            e2e_clients=1000,
            e2e_disconnects=200,
            profile_events=3000,
        )

    @classmethod
    def quick_run(cls, only: frozenset[str] = frozenset()) -> Config:
        return cls(
            quick=True,
            only=only,
            m1_rounds=3,
            m1_sequential_events=150,
            m1_concurrent_events=400,
            decompose_rounds=3,
            decompose_events=200,
            cycle_rounds=3,
            cycle_events=150,
            storm_sizes=(10_000,),
            storm_rounds=1,
            lag_seconds=1.0,
            lag_rounds=1,
            memory_teachers=2000,
            e2e_clients=200,
            e2e_disconnects=40,
            profile_events=800,
        )
