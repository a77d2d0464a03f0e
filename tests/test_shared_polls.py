"""
SharedPolls on a Clock with a scripted lookup: one poll per service, a budget for all of them,
pushes that poll at once, and failures that never reach the watchers.
"""

from __future__ import annotations

import random
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from msrpc.errors import RegistryUnavailable
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IWatch
from msrpc.registry.shared_polls import Reservations, SharedPolls


def inst(port: int, service: str = "svc") -> ServiceInstance:
    return ServiceInstance(service, "127.0.0.1", port)


class Registry:
    """What the lookups answer: a port list per service; ``hold`` keeps answers pending."""

    def __init__(self) -> None:
        self.ports: dict[str, list[int]] = {}
        self.asked: list[tuple[float, str]] = []
        self.down = False
        self.hold = False
        self.held: list[tuple[Deferred, str]] = []
        self.clock: Optional[Clock] = None

    def lookup(self, service: str) -> "Deferred[list[ServiceInstance]]":
        assert self.clock is not None
        self.asked.append((self.clock.seconds(), service))
        if self.down:
            return fail(RegistryUnavailable("down", backend="test"))
        if self.hold:
            d: Deferred[list[ServiceInstance]] = Deferred()
            self.held.append((d, service))
            return d
        return succeed(self.answer(service))

    def answer(self, service: str) -> list[ServiceInstance]:
        return [inst(p, service) for p in self.ports.get(service, [])]

    def release(self) -> None:
        held, self.held = self.held, []
        for d, service in held:
            d.callback(self.answer(service))

    def count(self, service: Optional[str] = None) -> int:
        return sum(1 for _, s in self.asked if service is None or s == service)


class SharedPollsTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry()
        self.registry.clock = self.clock
        self.changes: list[tuple[str, bool]] = []

    def polls(self, interval: float = 1.0, budget: float = 100.0, **kw: Any) -> SharedPolls:
        kw.setdefault("jitter", 0.0)
        polls = SharedPolls(self.clock, self.registry.lookup, interval=interval, budget=budget,
                            on_change=lambda s, p: self.changes.append((s, p)), **kw)
        self.addCleanup(polls.stop)
        return polls

    def watch(self, polls: SharedPolls, service: str = "svc") -> list[list[int]]:
        seen: list[list[int]] = []
        polls.watch(service, lambda instances: seen.append([i.port for i in instances]))
        return seen


class ReservationTests(unittest.TestCase):
    def test_slots_are_spread_at_the_rate_after_the_burst(self) -> None:
        bucket = Reservations(rate=2, burst=2)
        self.assertEqual([bucket.reserve(0.0) for _ in range(5)], [0.0, 0.0, 0.5, 1.0, 1.5])

    def test_unused_time_refills_up_to_the_burst(self) -> None:
        bucket = Reservations(rate=1, burst=2)
        bucket.reserve(0.0)
        bucket.reserve(0.0)
        self.assertEqual([bucket.reserve(10.0) for _ in range(3)], [10.0, 10.0, 11.0])

    def test_rate_and_burst_are_checked(self) -> None:
        self.assertRaises(ValueError, Reservations, 0)
        self.assertRaises(ValueError, Reservations, 1, 0.5)


class SharingTests(SharedPollsTestCase):
    def test_a_watch_gets_the_list_at_once_and_is_an_iwatch(self) -> None:
        self.registry.ports["svc"] = [1]
        polls = self.polls()
        seen: list[list[int]] = []
        watch = polls.watch("svc", lambda i: seen.append([x.port for x in i]))
        self.assertTrue(verifyObject(IWatch, watch))
        self.assertEqual(seen, [[1]])

    def test_many_watches_of_one_service_share_one_poll(self) -> None:
        self.registry.ports["svc"] = [1]
        polls = self.polls(interval=1.0)
        seen = [self.watch(polls) for _ in range(5)]
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.registry.count(), 11)
        self.assertEqual(seen, [[[1]]] * 5)

    def test_a_watch_given_a_fresh_list_polls_within_one_period_not_at_once(self) -> None:
        polls = self.polls(interval=10.0, rng=random.Random(3))
        seen: list[list[int]] = []
        polls.watch("svc", lambda i: seen.append([x.port for x in i]), initial=[inst(4)])
        self.assertEqual((seen, self.registry.count()), ([[4]], 0))
        self.clock.pump([0.5] * 20)
        self.assertEqual(self.registry.count(), 1)
        self.assertEqual(seen, [[4], []])  # the poll found it gone

    def test_a_later_watch_gets_the_known_list_without_a_poll(self) -> None:
        self.registry.ports["svc"] = [1]
        polls = self.polls()
        self.watch(polls)
        seen = self.watch(polls)
        self.assertEqual((seen, self.registry.count()), ([[1]], 1))

    def test_changes_reach_every_watcher_and_unchanged_lists_none(self) -> None:
        polls = self.polls(interval=1.0)
        first, second = self.watch(polls), self.watch(polls)
        self.clock.advance(1.0)
        self.registry.ports["svc"] = [1, 2]
        self.clock.pump([1.0] * 3)
        self.assertEqual(first, [[], [1, 2]])
        self.assertEqual(second, [[], [1, 2]])
        self.assertEqual(self.changes, [("svc", False)])

    def test_stopping_the_last_watch_stops_polling(self) -> None:
        polls = self.polls(interval=1.0)
        watches = [polls.watch("svc", lambda _: None) for _ in range(2)]
        watches[0].stop()
        self.clock.advance(1.0)
        self.assertEqual(self.registry.count(), 2)
        watches[1].stop()
        self.clock.pump([1.0] * 5)
        self.assertEqual(self.registry.count(), 2)
        self.assertEqual(polls.services, [])

    def test_a_stopped_watch_is_not_called_back(self) -> None:
        polls = self.polls(interval=1.0)
        seen: list[int] = []
        watch = polls.watch("svc", lambda i: seen.append(len(i)))
        watch.stop()
        self.registry.ports["svc"] = [1]
        self.clock.pump([1.0] * 3)
        self.assertEqual(seen, [0])

    def test_a_failing_callback_does_not_stop_the_others_or_the_polls(self) -> None:
        polls = self.polls(interval=1.0)

        def broken(_: Any) -> None:
            raise RuntimeError("callback bug")

        polls.watch("svc", broken)
        seen = self.watch(polls)
        self.registry.ports["svc"] = [7]
        self.clock.advance(1.0)
        self.assertEqual(seen, [[], [7]])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_stop_cancels_the_timer(self) -> None:
        polls = self.polls()
        self.watch(polls)
        polls.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BudgetTests(SharedPollsTestCase):
    def test_the_budget_stretches_the_period_of_many_services(self) -> None:
        polls = self.polls(interval=1.0, budget=10.0)
        for i in range(100):
            polls.watch(f"s{i}", lambda _: None)
        self.assertEqual(polls.period(), 10.0)
        start = self.registry.count()
        self.clock.pump([0.05] * 2000)  # 100 s
        made = self.registry.count() - start
        self.assertLessEqual(made, 10.0 * 100 + 1)
        self.assertGreaterEqual(made, 900)  # every service still polled about every 10 s
        per_service = {self.registry.count(f"s{i}") for i in range(100)}
        self.assertLessEqual(max(per_service) - min(per_service), 2)

    def test_new_watches_are_paced_by_the_budget(self) -> None:
        polls = self.polls(interval=60.0, budget=10.0)
        for i in range(30):
            polls.watch(f"s{i}", lambda _: None)
        self.assertEqual(self.registry.count(), 1)  # the rest wait for their slots
        self.clock.pump([0.1] * 30)
        times = [t for t, _ in self.registry.asked]
        self.assertEqual(len(times), 30)
        self.assertAlmostEqual(times[-1], 2.9)

    def test_a_small_registry_polls_at_the_interval(self) -> None:
        polls = self.polls(interval=2.0, budget=50.0)
        self.watch(polls, "a")
        self.watch(polls, "b")
        self.clock.pump([0.5] * 21)  # "b" waits for its budget slot, 0.02 s after "a"
        self.assertEqual((self.registry.count("a"), self.registry.count("b")), (6, 6))

    def test_jitter_only_shortens_the_period(self) -> None:
        polls = self.polls(interval=10.0, jitter=0.5, rng=random.Random(7))
        self.watch(polls)
        self.clock.pump([0.1] * 1000)
        times = [t for t, _ in self.registry.asked]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(5.0 - 1e-9 <= g <= 10.0 + 0.1 for g in gaps), gaps)
        self.assertGreater(len(set(round(g, 1) for g in gaps)), 1)

    def test_a_shorter_interval_applies_at_once(self) -> None:
        polls = self.polls(interval=30.0)
        self.watch(polls)
        self.clock.advance(1.0)
        polls.interval = 2.0
        self.clock.advance(2.0)
        self.assertEqual(self.registry.count(), 2)


class PokeTests(SharedPollsTestCase):
    def test_poke_polls_at_once_and_reports_a_pushed_change(self) -> None:
        polls = self.polls(interval=30.0)
        seen = self.watch(polls)
        self.registry.ports["svc"] = [5]
        self.assertTrue(polls.poke("svc"))
        self.assertEqual(seen, [[], [5]])
        self.assertEqual(self.changes, [("svc", True)])

    def test_poke_of_an_unwatched_service_does_nothing(self) -> None:
        polls = self.polls()
        self.assertFalse(polls.poke("nobody"))
        self.assertEqual(self.registry.count(), 0)

    def test_poke_during_a_poll_polls_once_more_afterwards(self) -> None:
        polls = self.polls(interval=30.0)
        seen = self.watch(polls)
        self.registry.hold = True
        polls.poke("svc")
        for _ in range(5):
            polls.poke("svc")  # all while the first is in flight
        self.registry.ports["svc"] = [9]
        self.registry.release()
        self.registry.release()
        self.assertEqual(self.registry.count(), 3)  # the watch's, the poke's, one more
        self.assertEqual(seen, [[], [9]])

    def test_a_flood_of_pokes_is_bounded_by_the_poke_rate(self) -> None:
        polls = self.polls(interval=30.0, budget=10.0)
        self.watch(polls)
        for _ in range(1000):
            polls.poke("svc")
            self.clock.advance(0.001)  # 1000 pokes in one second
        self.clock.advance(0.1)
        self.assertLessEqual(self.registry.count(), 1 + 10 + 10 + 1)  # watch, burst, rate


class FailureTests(SharedPollsTestCase):
    def test_a_failed_poll_keeps_the_last_list(self) -> None:
        self.registry.ports["svc"] = [1]
        polls = self.polls()
        seen = self.watch(polls)
        self.registry.down = True
        self.clock.pump([1.0] * 3)
        self.assertEqual(seen, [[1]])
        self.assertEqual(polls.failures, 3)

    def test_an_outage_is_logged_once_for_all_services_and_its_end_once(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        polls = self.polls(interval=1.0)
        for i in range(20):
            self.watch(polls, f"s{i}")
        self.registry.down = True
        self.clock.pump([1.0] * 5)
        self.registry.down = False
        self.clock.pump([1.0] * 5)
        mine = [e for e in events if e.get("log_namespace", "").endswith("SharedPolls")]
        levels = [e["log_level"] for e in mine]
        self.assertEqual(levels, [LogLevel.warn, LogLevel.info])
