"""
A closed-loop load generator for ``msrpc bench``: ``concurrency`` calls in flight, each
completion starting the next, for a duration or a number of calls.  It measures a live
service as its callers see it (registry resolution, balancing and retries included), which
is what an operator sizing a deployment wants; ``bench/`` compares RPC systems instead.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure


def nearest_rank(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p`` percentile (0 < p <= 100) of a non-empty ascending sequence."""
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


@dataclass
class LoadResult:
    """What a run did: latencies of the successful calls, failures by error class."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the successful calls' latencies, in seconds."""
        return nearest_rank(sorted(self.latencies), p) if self.latencies else 0.0

    def report(self) -> str:
        rate = self.calls / self.elapsed if self.elapsed > 0 else 0.0
        lines = [f"calls {self.calls}  ok {len(self.latencies)}  failed "
                 f"{sum(self.errors.values())}  in {self.elapsed:.2f}s  {rate:,.0f} calls/s",
                 "latency ms  " + "  ".join(
                     f"p{p:g} {self.percentile(p) * 1000:.3f}" for p in (50, 90, 99, 100))]
        lines += [f"  {name}: {count}" for name, count in sorted(self.errors.items())]
        return "\n".join(lines)


def closed_loop(clock: IReactorTime, call: Callable[[], "Deferred[Any]"], concurrency: int,
                duration: float, max_calls: Optional[int] = None) -> "Deferred[LoadResult]":
    """Keep ``concurrency`` calls of ``call()`` in flight until ``duration`` seconds have
    passed or ``max_calls`` were started; fires once every started call has finished."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    result = LoadResult()
    done: Deferred[LoadResult] = Deferred()
    started_at = clock.seconds()
    stop_at = started_at + duration
    state = {"started": 0, "running": 0}

    def start_one() -> None:
        if clock.seconds() >= stop_at or (max_calls is not None
                                           and state["started"] >= max_calls):
            if state["running"] == 0 and not done.called:
                result.elapsed = clock.seconds() - started_at
                done.callback(result)
            return
        state["started"] += 1
        state["running"] += 1
        began = clock.seconds()

        def succeeded(_: Any) -> None:
            result.latencies.append(clock.seconds() - began)

        def failed(failure: Failure) -> None:
            result.errors[type(failure.value).__name__] += 1

        def finished(_: Any) -> None:
            state["running"] -= 1
            start_one()

        call().addCallbacks(succeeded, failed).addBoth(finished)

    for _ in range(concurrency):
        start_one()
    return done
