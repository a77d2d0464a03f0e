"""The closed-loop load generator behind ``msrpc bench``, on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from msrpc.errors import Unavailable
from msrpc.loadgen import LoadResult, closed_loop


class ClosedLoopTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pending: list[Deferred[Any]] = []

    def call(self) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, error: Exception | None = None) -> None:
        d = self.pending.pop(0)
        d.errback(error) if error else d.callback("ok")

    def test_keeps_concurrency_calls_in_flight(self) -> None:
        closed_loop(self.clock, self.call, 3, duration=10)
        self.assertEqual(len(self.pending), 3)
        self.answer()
        self.assertEqual(len(self.pending), 3)  # the completion started the next call

    def test_stops_after_max_calls_and_waits_for_the_last(self) -> None:
        d = closed_loop(self.clock, self.call, 2, duration=10, max_calls=3)
        self.answer()
        self.answer()
        self.assertNoResult(d)
        self.assertEqual(len(self.pending), 1)
        self.clock.advance(0.25)
        self.answer()
        result = self.successResultOf(d)
        self.assertEqual((result.calls, result.elapsed), (3, 0.25))

    def test_stops_starting_calls_when_the_duration_is_over(self) -> None:
        d = closed_loop(self.clock, self.call, 1, duration=1.0)
        self.clock.advance(0.25)
        self.answer()
        self.clock.advance(0.875)
        self.answer()
        result = self.successResultOf(d)
        self.assertEqual(result.latencies, [0.25, 0.875])
        self.assertEqual(self.pending, [])

    def test_failures_are_counted_by_class(self) -> None:
        d = closed_loop(self.clock, self.call, 1, duration=10, max_calls=3)
        self.answer(Unavailable("draining"))
        self.answer()
        self.answer(Unavailable("draining"))
        result = self.successResultOf(d)
        self.assertEqual((result.errors, len(result.latencies)), ({"Unavailable": 2}, 1))
        self.assertIn("Unavailable: 2", result.report())

    def test_percentiles_are_nearest_rank(self) -> None:
        result = LoadResult(elapsed=1.0, latencies=[i / 1000 for i in range(1, 101)])
        self.assertEqual([result.percentile(p) for p in (50, 99, 100)], [0.05, 0.099, 0.1])
        self.assertIn("100 calls/s", result.report())

    def test_concurrency_below_one_is_refused(self) -> None:
        self.assertRaises(ValueError, closed_loop, self.clock, self.call, 0, 1.0)
