"""One timer for many deadlines."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from msrpc.deadline import Deadlines


class DeadlinesTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadlines: Deadlines[str] = Deadlines(self.clock, self.expired.append)

    def test_entries_expire_exactly_at_their_deadline(self) -> None:
        self.deadlines.add("a", 1.0)
        self.deadlines.add("b", 2.0)
        self.clock.advance(0.999)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(1.0)
        self.assertEqual(self.expired, ["a", "b"])

    def test_discarded_entries_never_expire(self) -> None:
        self.deadlines.add("a", 1.0)
        self.deadlines.discard("a")
        self.clock.advance(5)
        self.assertEqual(self.expired, [])

    def test_a_single_timer_serves_all_entries(self) -> None:
        for i in range(1000):
            self.deadlines.add(f"call{i}", 10.0 + i / 1000)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_an_earlier_deadline_rearms_the_timer(self) -> None:
        self.deadlines.add("late", 10.0)
        self.deadlines.add("early", 1.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.expired, ["early"])

    def test_timer_fires_about_once_per_period_when_calls_finish_in_time(self) -> None:
        armed = []
        call_later = self.clock.callLater

        def counting_call_later(*args, **kwargs):  # type: ignore[no-untyped-def]
            armed.append(self.clock.seconds())
            return call_later(*args, **kwargs)

        self.clock.callLater = counting_call_later  # type: ignore[method-assign]
        for step in range(1000):  # 1000 calls/s for 1 s, each done within 1 ms
            self.deadlines.add(step, self.clock.seconds() + 1.0)
            self.clock.advance(0.001)
            self.deadlines.discard(step)
        self.clock.advance(2.0)
        self.assertLessEqual(len(armed), 3)  # not one timer per call
        self.assertEqual(self.expired, [])

    def test_an_entry_added_while_expiring_gets_its_own_turn(self) -> None:
        def on_expire(key: str) -> None:
            self.expired.append(key)
            if key == "first":
                self.deadlines.add("second", self.clock.seconds() + 1.0)

        deadlines: Deadlines[str] = Deadlines(self.clock, on_expire)
        deadlines.add("first", 1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.expired, ["first", "second"])

    def test_a_failing_handler_does_not_stop_other_expiries(self) -> None:
        def on_expire(key: str) -> None:
            if key == "bad":
                raise RuntimeError("handler bug")
            self.expired.append(key)

        deadlines: Deadlines[str] = Deadlines(self.clock, on_expire)
        deadlines.add("bad", 1.0)
        deadlines.add("good", 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.expired, ["good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_clear_cancels_the_timer(self) -> None:
        self.deadlines.add("a", 1.0)
        self.deadlines.clear()
        self.assertEqual(self.clock.getDelayedCalls(), [])
