"""The observer contract (msrpc.observe): what servers and clients tell observers, and when."""

from __future__ import annotations

import contextvars
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from msrpc.client import ObservedCall, RetryPolicy, TalliedCall
from msrpc.errors import RegistryUnavailable
from msrpc.health import EjectionPolicy
from msrpc.observe import (
    CANCELLED, CLIENT, OTHER, SERVER, ICallContext, ICallObserver,
    ICallTallies, IClientObserver, IRegistryObserver, ObservedProtocol, Observers,
    RegistryEvents, Tally, TimedProtocol, combine,
)
from msrpc.protocol import RpcProtocol
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server
from msrpc.service import expose
from msrpc.testing import MemoryNetwork


#: What the observers below set for the handler to see (``Service.current``).
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("current", default=None)


@implementer(ICallObserver, IClientObserver, IRegistryObserver)
class Recorder:
    """Writes down everything it is told."""

    contextual = False

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.events: list[tuple[Any, ...]] = []

    def call_started(self, call: Any) -> None:
        self.started.append((call.side, call.service, call.method))

    def call_finished(self, call: Any) -> None:
        self.finished.append(call)

    def call_retried(self, service: str, method: str, error: BaseException) -> None:
        self.events.append(("retried", service, method, type(error).__name__))

    def instance_ejected(self, service: str, address: str, seconds: float) -> None:
        self.events.append(("ejected", service, address, seconds))

    def registry_error(self, backend: str, operation: str, error: BaseException) -> None:
        self.events.append(("registry_error", backend, operation))

    def watch_reconnected(self, backend: str, service: str) -> None:
        self.events.append(("reconnected", backend, service))


class Counting(Tally):
    """A tally that keeps every outcome it is given."""

    limit = 2

    def __init__(self) -> None:
        super().__init__()
        self.folded: list[float] = []
        self.outcomes: list[tuple[Any, ...]] = []

    def record(self, code: Any, duration: float, received: int = 0, sent: int = 0,
               refused: str = "") -> None:
        self.outcomes.append((code, duration, received, sent, refused))

    def fold(self) -> None:
        self.folded += self.durations
        del self.durations[:]


@implementer(ICallTallies)
class Tallies:
    def __init__(self) -> None:
        self.tallies: dict[tuple[str, str, str], Counting] = {}

    def tally(self, side: str, service: str, method: str) -> Counting:
        return self.tallies.setdefault((side, service, method), Counting())


@implementer(ICallContext)
class Carrier:
    """Carries a ``hop`` count in the meta: what a trace context does, smaller."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def outgoing(self, meta: dict[str, Any]) -> None:
        meta.setdefault("hop", 0)

    def incoming(self, meta: Any) -> None:
        self.seen.append(meta.get("hop"))
        CURRENT.set(("hop", meta.get("hop")))


class Contextual(Recorder):
    """A call observer that sets a context variable for the handler."""

    contextual = True

    def call_started(self, call: Any) -> None:
        super().call_started(call)
        if call.side == SERVER:
            CURRENT.set(call.method)


class Service:
    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net

    def add(self, a: int, b: int) -> int:
        return a + b

    def slow(self) -> "defer.Deferred[str]":
        return deferLater(self.net.clock, 2.0, lambda: "late")

    def unsendable(self) -> object:
        return object()  # no codec encodes it: the server answers 500

    def current(self) -> Any:
        return CURRENT.get()

    def tick(self) -> str:
        self.net.clock.advance(1.0)  # a sync handler that takes a second
        return "ticked"

    def fail(self) -> None:
        raise ValueError("broken")


class ThreadedService(Service):
    """``Service`` and a method for the server's handler threads."""

    @expose(blocking=True)
    def blocking_add(self, a: int, b: int) -> int:
        return a + b


class ServerSideTests(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.recorder = Recorder()
        self.server = self.net.server({"svc": Service(self.net)}, observers=[self.recorder])
        self.client = self.net.client(retry=RetryPolicy(max_attempts=1))

    def test_an_unobserved_server_builds_plain_connections(self) -> None:
        net = MemoryNetwork()
        server = net.server({"svc": Service(net)})
        self.assertIs(type(server.factory.buildProtocol(None)), RpcProtocol)
        self.assertFalse(server.dispatcher.observing)

    def test_an_observed_call_is_started_then_finished_with_its_outcome(self) -> None:
        self.net.clock.advance(100.0)
        d = self.client.call("svc", "slow")
        self.net.advance(2.0)
        self.assertEqual(self.successResultOf(d), "late")
        self.assertEqual(self.recorder.started, [(SERVER, "svc", "slow")])
        [call] = self.recorder.finished
        self.assertEqual((call.side, call.service, call.method, call.code, call.refused),
                         (SERVER, "svc", "slow", 200, ""))
        self.assertEqual((call.started, call.duration), (100.0, 2.0))
        self.assertEqual(call.peer, "127.0.0.1:40000")
        self.assertEqual(call.meta["deadline"], 10_000)
        self.assertGreater(call.bytes_in, 17)
        self.assertGreater(call.bytes_out, 17)

    def test_a_refused_call_finishes_without_starting(self) -> None:
        self.server.dispatcher.draining = True
        self.client.call("svc", "add", 1, 2).addErrback(lambda f: None)
        self.net.flush()
        self.assertEqual(self.recorder.started, [])
        [call] = self.recorder.finished
        self.assertEqual((call.service, call.method, call.code, call.refused),
                         (OTHER, OTHER, 503, "draining"))

    def test_a_call_refused_after_naming_its_method_keeps_its_labels(self) -> None:
        self.client.call("svc", "add", "one", 2).addErrback(lambda f: None)
        self.net.flush()
        [call] = self.recorder.finished
        self.assertEqual((call.service, call.method, call.code, call.refused),
                         ("svc", "add", 400, "bad_request"))

    def test_cancelled_and_abandoned_calls_finish_as_cancelled(self) -> None:
        d = self.client.call("svc", "slow")
        self.net.flush()
        d.cancel()
        self.failureResultOf(d)
        self.net.flush()
        self.client.call("svc", "slow").addErrback(lambda f: None)
        self.net.flush()
        for protocol in list(self.server.factory.connections):
            protocol.transport.loseConnection()
        self.net.flush()
        self.assertEqual([c.code for c in self.recorder.finished], [CANCELLED, CANCELLED])

    def test_contextual_observers_set_context_for_that_request_only(self) -> None:
        net = MemoryNetwork()
        server = net.server({"svc": Service(net)}, observers=[Contextual()])
        self.assertIs(type(server.factory.buildProtocol(None)), ObservedProtocol)
        d = net.client().call("svc", "current")
        net.flush()
        self.assertEqual(self.successResultOf(d), "current")
        self.assertIsNone(CURRENT.get())  # the request's own copy of the context is gone
        self.assertIs(type(self.server.factory.buildProtocol(None)), ObservedProtocol)


class ClientSideTests(TestCase):
    def test_client_calls_are_observed_from_start_to_outcome(self) -> None:
        net = MemoryNetwork()
        net.server({"svc": Service(net)})
        recorder = Recorder()
        client = net.client(observers=[recorder], timeout=5.0)
        d = client.call("svc", "slow")
        self.assertIsInstance(d, ObservedCall)
        self.assertEqual(recorder.started, [(CLIENT, "svc", "slow")])
        net.advance(2.0)
        self.successResultOf(d)
        [call] = recorder.finished
        self.assertEqual((call.code, call.duration, call.peer), (200, 2.0, "127.0.0.1:7001"))

    def test_an_unobserved_client_makes_plain_calls(self) -> None:
        net = MemoryNetwork()
        d = net.client().call("svc", "x")
        self.assertNotIsInstance(d, ObservedCall)
        d.addErrback(lambda f: None)

    def test_retries_and_ejections_are_reported(self) -> None:
        net = MemoryNetwork()
        down = net.server({"svc": Service(net)})
        net.server({"svc": Service(net)})
        recorder = Recorder()
        client = net.client(observers=[recorder], balancer="round_robin",
                            ejection=EjectionPolicy(consecutive_failures=1, base_ejection=5.0))
        client.call("svc", "add", 1, 1)
        net.flush()
        down.crash()
        for _ in range(3):
            client.call("svc", "add", 1, 1)
            net.advance(0.1)
        self.assertIn(("retried", "svc", "add", "ConnectError"), recorder.events)
        self.assertIn(("ejected", "svc", down.address, 5.0), recorder.events)


class TallyTests(TestCase):
    """``ICallTallies``: outcomes are recorded in tallies, without per-call objects."""

    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.tallies = Tallies()
        self.server = self.net.server({"svc": ThreadedService(self.net)}, observers=[self.tallies])
        self.client = self.net.client(observers=[self.tallies],
                                      retry=RetryPolicy(max_attempts=1))

    def test_successes_are_durations_and_frame_sizes(self) -> None:
        self.net.clock.advance(10.0)
        calls = [self.client.call("svc", "slow") for _ in range(3)]
        self.assertIsInstance(calls[0], TalliedCall)
        self.net.advance(2.0)
        server = self.tallies.tallies[(SERVER, "svc", "slow")]
        client = self.tallies.tallies[(CLIENT, "svc", "slow")]
        for tally in (server, client):
            self.assertEqual(tally.folded + tally.durations, [2.0] * 3)
            self.assertEqual(tally.folded, [2.0] * 2)  # folded once two were waiting
            self.assertEqual(tally.outcomes, [])
        self.assertEqual(server.received % 3, 0)
        self.assertGreater(server.received, 3 * 17)
        self.assertGreater(server.sent, 3 * 17)
        self.assertEqual((client.received, client.sent), (0, 0))

    def test_other_outcomes_are_recorded_with_code_and_reason(self) -> None:
        self.client.call("svc", "add", "one", 2).addErrback(lambda f: None)
        self.client.call("svc", "nope").addErrback(lambda f: None)
        self.net.flush()
        [(code, _, received, sent, refused)] = \
            self.tallies.tallies[(SERVER, "svc", "add")].outcomes
        self.assertEqual((code, refused), (400, "bad_request"))
        self.assertGreater(received, 17)
        self.assertGreater(sent, 17)
        [(code, _, received, _, refused)] = \
            self.tallies.tallies[(SERVER, OTHER, OTHER)].outcomes
        self.assertEqual((code, received, refused), (404, 0, "not_found"))
        self.assertEqual([o[0] for o in self.tallies.tallies[(CLIENT, "svc", "add")].outcomes],
                         [400])

    def test_a_quick_success_is_a_duration_and_frame_sizes_too(self) -> None:
        d = self.client.call("svc", "add", 1, 2)
        self.net.flush()
        self.assertEqual(self.successResultOf(d), 3)
        for side in (SERVER, CLIENT):
            tally = self.tallies.tallies[(side, "svc", "add")]
            self.assertEqual((tally.durations, tally.outcomes), ([0.0], []))
        server = self.tallies.tallies[(SERVER, "svc", "add")]
        self.assertGreater(server.received, 17)
        self.assertGreater(server.sent, 17)

    def test_a_result_that_cannot_be_sent_is_counted_as_the_500_it_becomes(self) -> None:
        d = self.client.call("svc", "unsendable")
        self.net.flush()
        self.failureResultOf(d)
        for side in (SERVER, CLIENT):
            tally = self.tallies.tallies[(side, "svc", "unsendable")]
            self.assertEqual(tally.durations, [])
            self.assertEqual([o[0] for o in tally.outcomes], [500])

    def test_calls_not_answered_at_once_are_counted_under_their_method(self) -> None:
        # Each leaves the dispatcher's quick path at a different point (a refusal after
        # the lookup, a handler error, a handler thread); each keeps its method's labels.
        self.server.dispatcher.limit_method("svc", "add", rate=1, burst=1)
        added = self.client.call("svc", "add", 1, 2)  # the one the bucket lets through
        calls = {
            "limited": self.client.call("svc", "add", 3, 4),
            "deadline": self.client.invoke("svc", "tick", meta={"deadline": 0}),
            "fail": self.client.call("svc", "fail"),
            "blocking_add": self.client.call("svc", "blocking_add", 2, 3),
        }
        self.net.flush()
        self.assertEqual(self.successResultOf(added), 3)
        for name in ("limited", "deadline", "fail"):
            self.failureResultOf(calls[name])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.successResultOf(calls["blocking_add"]), 5)
        outcomes = {method: [(o[0], o[4]) for o in self.tallies.tallies[
            (SERVER, "svc", method)].outcomes] for method in ("add", "tick", "fail")}
        self.assertEqual(outcomes, {"add": [(700, "rate_limited")],
                                    "tick": [(408, "deadline_exceeded")],
                                    "fail": [(500, "")]})
        self.assertEqual(len(self.tallies.tallies[(SERVER, "svc", "add")].durations), 1)
        # A handler thread's success (noted, then counted when its reply is written).
        threaded = self.tallies.tallies[(SERVER, "svc", "blocking_add")]
        self.assertEqual((len(threaded.durations), threaded.outcomes), (1, []))
        self.assertGreater(threaded.received, 17)
        self.assertGreater(threaded.sent, 17)
        self.assertNotIn((SERVER, OTHER, OTHER), self.tallies.tallies)

    def test_cancelled_calls_are_recorded_on_both_sides(self) -> None:
        d = self.client.call("svc", "slow")
        self.net.flush()
        d.cancel()
        self.failureResultOf(d)
        self.net.flush()
        for side in (SERVER, CLIENT):
            [outcome] = self.tallies.tallies[(side, "svc", "slow")].outcomes
            self.assertEqual(outcome[0], CANCELLED)

    def test_tallies_and_per_call_observers_see_the_same_calls(self) -> None:
        net, tallies, recorder = MemoryNetwork(), Tallies(), Recorder()
        net.server({"svc": Service(net)}, observers=[tallies, recorder])
        client = net.client(observers=[recorder, tallies])
        d = client.call("svc", "add", 1, 2)
        self.assertIsInstance(d, ObservedCall)
        net.flush()
        self.assertEqual([(c.side, c.code) for c in recorder.finished],
                         [(SERVER, 200), (CLIENT, 200)])
        server, client_side = (tallies.tallies[(side, "svc", "add")] for side in (SERVER, CLIENT))
        [(code, *_)] = server.outcomes  # a per-call observer's server call: recorded
        self.assertEqual((code, server.durations), (200, []))
        # The client counts every success in ``Call.succeeded``, observed or not.
        self.assertEqual((client_side.outcomes, client_side.durations), ([], [0.0]))

    def test_a_second_source_of_tallies_counts_too(self) -> None:
        net, first, second = MemoryNetwork(), Tallies(), Tallies()
        net.server({"svc": Service(net)}, observers=[first, second])
        net.client(observers=[first, second]).call("svc", "add", 1, 2)
        net.flush()
        for side in (SERVER, CLIENT):
            for tallies in (first, second):
                tally = tallies.tallies[(side, "svc", "add")]
                self.assertEqual(tally.folded + tally.durations +
                                 [o[1] for o in tally.outcomes if o[0] == 200], [0.0])


class ReadTimingTests(TestCase):
    """A server that only counts calls times a success with the read its request came in:
    the responses of a read are written together once it is handled."""

    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.tallies = Tallies()
        self.server = self.net.server({"svc": Service(self.net)}, observers=[self.tallies])
        self.client = self.net.client(observers=[self.tallies])

    def test_the_successes_of_one_read_share_its_duration(self) -> None:
        calls = [self.client.call("svc", "tick") for _ in range(2)]  # one read
        self.net.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], ["ticked"] * 2)
        for side in (SERVER, CLIENT):
            tally = self.tallies.tallies[(side, "svc", "tick")]
            # Both responses left when the read was handled, two seconds after it began;
            # the client timed both replies by the read that brought them.
            self.assertEqual(tally.folded + tally.durations, [2.0, 2.0])
            self.assertEqual(tally.outcomes, [])
        server = self.tallies.tallies[(SERVER, "svc", "tick")]
        self.assertEqual(server.received % 2, 0)
        self.assertGreater(server.received, 2 * 17)
        self.assertEqual(server.sent % 2, 0)
        self.assertGreater(server.sent, 2 * 17)

    def test_a_read_with_several_methods_counts_each_in_its_own(self) -> None:
        tick = self.client.call("svc", "tick")
        add = self.client.call("svc", "add", 1, 2)
        self.net.flush()
        self.assertEqual((self.successResultOf(tick), self.successResultOf(add)),
                         ("ticked", 3))
        for method in ("tick", "add"):
            tally = self.tallies.tallies[(SERVER, "svc", method)]
            self.assertEqual((tally.durations, tally.outcomes), ([1.0], []))
            self.assertGreater(tally.received, 17)
            self.assertGreater(tally.sent, 17)

    def test_a_call_answered_in_a_later_read_is_timed_from_its_arrival(self) -> None:
        slow = self.client.call("svc", "slow")
        self.net.flush()
        self.net.clock.advance(0.5)
        add = self.client.call("svc", "add", 1, 2)  # noted after the slow one, answered
        self.net.flush()
        self.assertEqual(self.successResultOf(add), 3)
        self.net.advance(1.5)
        self.assertEqual(self.successResultOf(slow), "late")
        server = self.tallies.tallies[(SERVER, "svc", "slow")]
        self.assertEqual(server.folded + server.durations, [2.0])
        self.assertEqual(self.tallies.tallies[(SERVER, "svc", "add")].durations, [0.0])

    def test_connections_made_before_counting_began_are_not_counted(self) -> None:
        net, tallies = MemoryNetwork(), Tallies()
        server = net.server({"svc": Service(net)})
        client = net.client()
        client.call("svc", "add", 1, 2)
        net.flush()
        server.factory.observe(combine([tallies]))
        self.assertTrue(server.dispatcher.counting)
        d = client.call("svc", "add", 2, 3)  # on the plain connection made before
        net.flush()
        self.assertEqual(self.successResultOf(d), 5)
        self.assertEqual(tallies.tallies[(SERVER, "svc", "add")].durations, [])

    def test_a_client_that_counts_times_its_reads(self) -> None:
        self.client.call("svc", "add", 1, 2)
        self.net.clock.advance(7.0)
        self.net.flush()
        [endpoint] = self.client._pool.endpoints.values()
        self.assertIsInstance(endpoint.protocol, TimedProtocol)
        self.assertEqual(endpoint.protocol.read_at, 7.0)


class ContextTests(TestCase):
    """``ICallContext``: told the meta only, on the way out and on the way in."""

    def test_the_meta_a_client_adds_is_what_the_server_reads(self) -> None:
        net, carrier = MemoryNetwork(), Carrier()
        server = net.server({"svc": Service(net)}, observers=[carrier])
        # Carrying context needs no call followed: plain connections, plain calls.
        self.assertIs(type(server.factory.buildProtocol(None)), RpcProtocol)
        self.assertFalse(server.dispatcher.identifying)
        client = net.client(observers=[carrier])
        d = client.call("svc", "add", 1, 2)
        self.assertNotIsInstance(d, (ObservedCall, TalliedCall))
        net.flush()
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(carrier.seen, [0])
        d = client.call("svc", "current")
        net.flush()
        self.assertEqual(self.successResultOf(d), ("hop", 0))  # set in the request's context
        self.assertIsNone(CURRENT.get())  # and only there

    def test_context_is_carried_next_to_call_observers(self) -> None:
        net, carrier, recorder = MemoryNetwork(), Carrier(), Recorder()
        server = net.server({"svc": Service(net)}, observers=[carrier, recorder])
        self.assertIs(type(server.factory.buildProtocol(None)), ObservedProtocol)
        d = net.client(observers=[carrier]).call("svc", "current")
        net.flush()
        self.assertEqual(self.successResultOf(d), ("hop", 0))
        self.assertEqual(recorder.started, [(SERVER, "svc", "current")])
        self.assertEqual([c.code for c in recorder.finished], [200])
        self.assertIsNone(CURRENT.get())

    def test_a_server_observed_no_more_dispatches_plainly(self) -> None:
        net, carrier = MemoryNetwork(), Carrier()
        server = net.server({"svc": Service(net)}, observers=[carrier])
        server.factory.observe(None)
        self.assertFalse(server.dispatcher.observing)
        self.assertNotIn("request_received", vars(server.dispatcher))
        d = net.client(observers=[carrier]).call("svc", "current")
        net.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(carrier.seen, [])


class CombiningTests(TestCase):
    def test_a_lone_full_observer_is_told_directly_and_several_are_combined(self) -> None:
        one, two = Recorder(), Recorder()
        self.assertIsNone(combine([]))
        self.assertIs(combine([one]).calls, one)  # type: ignore[union-attr]
        both = combine([one, two])
        assert both is not None
        self.assertIs(both.calls, both)
        verifyObject(ICallObserver, both)
        both.call_retried("s", "m", ValueError())
        self.assertEqual(one.events, two.events)

    def test_a_failing_observer_does_not_stop_the_others(self) -> None:
        class Broken(Recorder):
            def call_finished(self, call: Any) -> None:
                raise RuntimeError("broken observer")

        good = Recorder()
        both = Observers([Broken(), good])
        both.call_finished("a call")
        self.assertEqual(good.finished, ["a call"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_contextual_when_any_observer_is(self) -> None:
        contextual = Recorder()
        contextual.contextual = True
        self.assertFalse(Observers([Recorder()]).contextual)
        self.assertTrue(Observers([Recorder(), contextual]).contextual)


class RegistryEventsTests(TestCase):
    def test_every_backend_has_events_named_for_it(self) -> None:
        self.assertEqual(StaticRegistry().events.backend, "static")

    def test_subscribers_hear_errors_and_reconnects_once_each(self) -> None:
        events = RegistryEvents("etcd")
        recorder = Recorder()
        events.subscribe(recorder)
        events.subscribe(recorder)
        events.error("watch", RegistryUnavailable("down"))
        events.watch_reconnected("svc")
        self.assertEqual(recorder.events, [("registry_error", "etcd", "watch"),
                                           ("reconnected", "etcd", "svc")])

    def test_a_server_reports_failed_registrations_of_its_registry(self) -> None:
        registry = StaticRegistry()
        recorder = Recorder()
        registry.events.subscribe(recorder)
        attempts: list[Any] = []

        def register(instance: Any) -> "defer.Deferred[Any]":
            attempts.append(instance)
            return defer.fail(RegistryUnavailable("no"))

        registry.register = register  # type: ignore[method-assign]
        reactor = MemoryReactorClock()
        server = Server(reactor, "tcp:7000", registry=registry, advertise="127.0.0.1",
                        services={"svc": Service(MemoryNetwork())}, grace=0)
        server.startService()
        reactor.advance(0.5)
        self.assertEqual(recorder.events, [("registry_error", "static", "register")] * 2)
        server.stopService()
        self.flushLoggedErrors()


class SharedPollEventsTests(TestCase):
    def test_shared_polls_report_failed_polls_and_the_recovery(self) -> None:
        from twisted.internet.task import Clock

        from msrpc.registry.shared_polls import SharedPolls

        clock, recorder, events = Clock(), Recorder(), RegistryEvents("nacos")
        events.subscribe(recorder)
        answers: list[Any] = [defer.fail(RegistryUnavailable("down")), defer.succeed([])]
        polls = SharedPolls(clock, lambda service: answers.pop(0), interval=1.0, budget=10.0,
                            jitter=0.0, events=events)
        polls.watch("svc", lambda instances: None)
        clock.advance(5.0)
        polls.stop()
        self.assertEqual(recorder.events, [("registry_error", "nacos", "watch"),
                                           ("reconnected", "nacos", "svc")])
