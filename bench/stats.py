"""
Per-run accounting shared by every load loop, so all systems are measured the
same way: a warm-up whose calls are discarded, then a fixed measurement window;
a call counts when it completes inside the window, and its latency is taken
with C{time.perf_counter()} around the call as the caller sees it.
"""

from __future__ import annotations

import math
from time import perf_counter, process_time, time
from typing import Any

from msrpc.loadgen import nearest_rank


def percentile(ordered: list[float], p: float) -> float:
    """
    Nearest-rank percentile of an ascending list (0 < p <= 100).
    """
    return nearest_rank(ordered, p) if ordered else math.nan


class Recorder:
    """
    Counters and latencies of one client run.

    A load loop calls L{start} once connected, then for each call
    L{next_call} (C{None} means: issue no more), and on completion
    L{completed} (C{False} means: this slot stops) or L{failed}.

    @ivar measure_from: start of the measurement window (after warm-up).
    @ivar stop_at: end of the window; no call is issued after it.
    """

    def __init__(self, warmup: float, duration: float, max_calls: int) -> None:
        self.warmup = warmup
        self.duration = duration
        self.max_calls = max_calls
        self.measure_from = math.inf
        self.stop_at = math.inf
        self.issued = 0
        self.latencies: list[float] = []
        self.last = 0.0
        self.errors = 0
        self.first_error: str | None = None
        self.hit_max_calls = False
        #: Every call completed since start (warm-up and window), for CPU per call.
        self.completed_total = 0
        self.cpu_started = math.nan
        self.epoch_offset = math.nan

    def start(self) -> None:
        self.cpu_started = process_time()
        now = perf_counter()
        self.measure_from = now + self.warmup
        self.stop_at = self.measure_from + self.duration
        #: perf_counter() + this = the Unix time, to line windows of processes up.
        self.epoch_offset = time() - now

    def next_call(self) -> int | None:
        """
        The id of the next call to issue, or C{None} once C{max_calls} were.
        """
        issued = self.issued
        if issued >= self.max_calls:
            self.hit_max_calls = True
            return None
        self.issued = issued + 1
        return issued

    def completed(self, t0: float, t1: float) -> bool:
        """
        Record a call that started at C{t0} and completed at C{t1}.

        @return: whether the slot should issue another call.
        """
        self.completed_total += 1
        if t1 < self.measure_from:
            return True
        if t1 < self.stop_at:
            self.latencies.append(t1 - t0)
            self.last = t1
            return True
        return False

    def failed(self, error: object) -> None:
        """
        Record a failed call; its slot issues no more calls.
        """
        self.errors += 1
        if self.first_error is None:
            self.first_error = repr(error)[:500]

    def summary(self) -> dict[str, Any]:
        calls = len(self.latencies)
        if self.hit_max_calls and calls:
            elapsed = self.last - self.measure_from
        else:
            elapsed = self.duration
        ordered = sorted(self.latencies)
        us = 1e6
        return {
            "calls": calls,
            "elapsed_s": elapsed,
            "calls_per_s": calls / elapsed if elapsed > 0 else 0.0,
            "mean_us": sum(ordered) / calls * us if calls else math.nan,
            "p50_us": percentile(ordered, 50) * us,
            "p90_us": percentile(ordered, 90) * us,
            "p99_us": percentile(ordered, 99) * us,
            "max_us": ordered[-1] * us if calls else math.nan,
            "issued": self.issued,
            "hit_max_calls": self.hit_max_calls,
            "errors": self.errors,
            "first_error": self.first_error,
            # CPU of this process since start, and the calls it completed meanwhile.
            "cpu_s": process_time() - self.cpu_started,
            "calls_total": self.completed_total,
            # The measurement window in Unix time (bench.workers lines clients up).
            "window": [self.measure_from + self.epoch_offset,
                       self.measure_from + self.epoch_offset + elapsed],
        }
