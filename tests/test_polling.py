"""``PollingWatch``: polls on a Clock, looks again at once when told, never empties on errors."""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from msrpc.errors import RegistryUnavailable
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.polling import PollingWatch

A = ServiceInstance(service="svc", host="10.0.0.1", port=1)
B = ServiceInstance(service="svc", host="10.0.0.2", port=2)


class Backend:
    """A lookup whose answers the test controls: a list, an error, or a pending Deferred."""

    def __init__(self) -> None:
        self.instances: list[ServiceInstance] = [A]
        self.error: Optional[Exception] = None
        self.pending: Optional[Deferred[list[ServiceInstance]]] = None
        self.hold = False
        self.lookups = 0

    def __call__(self, service: str) -> "Deferred[list[ServiceInstance]]":
        self.lookups += 1
        if self.hold:
            self.pending = Deferred()
            return self.pending
        if self.error is not None:
            return fail(self.error)
        return succeed(list(self.instances))

    def release(self) -> None:
        pending, self.pending, self.hold = self.pending, None, False
        assert pending is not None
        pending.callback(list(self.instances))


class PollingWatchTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = Backend()
        self.seen: list[list[ServiceInstance]] = []

    def watch(self, interval: float = 5.0, due=None) -> PollingWatch:  # type: ignore[no-untyped-def]
        watch = PollingWatch(self.clock, self.backend, "svc", self.seen.append, interval,
                             due=due)
        self.addCleanup(watch.stop)
        return watch

    def test_polls_at_once_then_every_interval_and_reports_changes_only(self) -> None:
        self.watch()
        self.clock.pump([5.0] * 3)
        self.backend.instances = [A, B]
        self.clock.advance(5.0)
        self.assertEqual((self.backend.lookups, self.seen), (5, [[A], [A, B]]))

    def test_poll_now_looks_at_once_and_restarts_the_interval(self) -> None:
        watch = self.watch()
        self.clock.advance(4.0)
        self.backend.instances = [B]
        watch.poll_now()
        self.assertEqual(self.seen, [[A], [B]])
        self.clock.advance(4.0)
        self.assertEqual(self.backend.lookups, 2)  # next poll 5 s after the last one
        self.clock.advance(1.0)
        self.assertEqual(self.backend.lookups, 3)

    def test_poll_now_during_a_lookup_looks_once_more_right_after(self) -> None:
        self.backend.hold = True
        watch = self.watch()
        for _ in range(3):
            watch.poll_now()  # three notifications while the first lookup runs
        self.assertEqual(self.backend.lookups, 1)
        self.backend.instances = [B]
        self.backend.release()
        self.assertEqual(self.backend.lookups, 2)  # one more, not three
        self.assertEqual(self.seen, [[B]])

    def test_due_shortens_the_wait(self) -> None:
        self.watch(interval=5.0, due=lambda: self.clock.seconds() + 1.5 if
                   self.backend.lookups < 2 else None)
        self.clock.advance(1.5)
        self.assertEqual(self.backend.lookups, 2)
        self.clock.advance(4.9)
        self.assertEqual(self.backend.lookups, 2)

    def test_interval_may_be_a_function_asked_before_each_wait(self) -> None:
        intervals = iter([1.0, 10.0, 10.0])
        self.watch(interval=lambda: next(intervals))  # type: ignore[arg-type]
        self.clock.advance(1.0)
        self.clock.advance(9.0)
        self.assertEqual(self.backend.lookups, 2)
        self.clock.advance(1.0)
        self.assertEqual(self.backend.lookups, 3)

    def test_failed_polls_keep_the_last_list_and_the_watch_alive(self) -> None:
        self.watch()
        self.backend.error = RegistryUnavailable("down")
        self.clock.pump([5.0] * 3)
        self.backend.error = None
        self.backend.instances = [B]
        self.clock.advance(5.0)
        self.assertEqual(self.seen, [[A], [B]])
        self.flushLoggedErrors()

    def test_a_failing_callback_does_not_stop_the_watch(self) -> None:
        calls: list[list[ServiceInstance]] = []

        def callback(instances: list[ServiceInstance]) -> None:
            calls.append(instances)
            raise ValueError("bug in the caller")

        watch = PollingWatch(self.clock, self.backend, "svc", callback, 5.0)
        self.addCleanup(watch.stop)
        self.backend.instances = [B]
        self.clock.advance(5.0)
        self.assertEqual(calls, [[A], [B]])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    def test_stopped_watch_neither_polls_nor_calls_back(self) -> None:
        self.backend.hold = True
        watch = self.watch()
        watch.stop()
        self.backend.release()
        watch.poll_now()
        self.clock.advance(60)
        self.assertEqual((self.backend.lookups, self.seen, self.clock.getDelayedCalls()),
                         (1, [], []))
