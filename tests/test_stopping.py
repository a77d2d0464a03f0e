"""Stopping a ``twistd msrpc`` process: in order, and at once when asked again."""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from msrpc import compress
from msrpc.codec import make_codecs
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server
from msrpc.stopping import SecondSignal, SequentialMultiService
from msrpc.wire import REQUEST, Serializer, encode_frame


class Step(Service):
    """A child whose stop finishes when the test says so."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.setName(name)
        self.log = log
        self.stopping: defer.Deferred[None] = defer.Deferred()

    def stopService(self) -> "defer.Deferred[None]":
        Service.stopService(self)
        self.log.append(self.name)
        return self.stopping


class SequentialStopTests(TestCase):
    def test_children_stop_one_after_the_other_last_added_first(self) -> None:
        log: list[str] = []
        top = SequentialMultiService()
        steps = [Step(name, log) for name in ("registry", "client", "server")]
        for step in steps:
            step.setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        self.assertEqual(log, ["server"])  # the client waits for the server's drain
        steps[2].stopping.callback(None)
        self.assertEqual(log, ["server", "client"])
        steps[1].stopping.callback(None)
        steps[0].stopping.callback(None)
        self.assertEqual(log, ["server", "client", "registry"])
        self.successResultOf(stopped)

    def test_a_failing_child_does_not_keep_the_others_running(self) -> None:
        log: list[str] = []
        top = SequentialMultiService()
        first, second = Step("first", log), Step("second", log)
        first.setServiceParent(top)
        second.setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        second.stopping.errback(RuntimeError("stuck"))
        first.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(log, ["second", "first"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FakeSignals:
    """A reactor with Twisted's signal handlers installed, and the signal module's calls."""

    def __init__(self) -> None:
        self.triggers: list[Callable[[], None]] = []
        self.handlers: dict[int, Any] = {signal.SIGTERM: self.sigTerm,
                                         signal.SIGINT: self.sigInt,
                                         signal.SIGHUP: signal.SIG_DFL}
        self.exits: list[int] = []

    def sigTerm(self, signum: int, frame: Any = None) -> None:
        self.handlers["reactor"] = signum

    sigInt = sigTerm

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], None]) -> int:
        self.triggers.append(f)
        return len(self.triggers)

    def removeSystemEventTrigger(self, trigger: int) -> None:
        self.triggers[trigger - 1] = lambda: None

    def callFromThread(self, f: Callable[..., None], *args: Any) -> None:
        f(*args)

    def shutdown(self) -> None:
        for trigger in self.triggers:
            trigger()

    def install(self, signum: int, handler: Any) -> None:
        self.handlers[signum] = handler

    def deliver(self, signum: int) -> None:
        self.handlers[signum](signum, None)


class SecondSignalTests(TestCase):
    def setUp(self) -> None:
        self.reactor = FakeSignals()
        self.hurried = 0
        self.service = SecondSignal(self.reactor, self.hurry,
                                    signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
                                    install=self.reactor.install,
                                    current=self.reactor.handlers.get,
                                    exit=self.reactor.exits.append)
        self.service.startService()

    def hurry(self) -> None:
        self.hurried += 1

    def test_nothing_changes_before_the_shutdown(self) -> None:
        self.assertEqual(self.reactor.handlers[signal.SIGTERM], self.reactor.sigTerm)

    def test_second_signal_hurries_and_third_exits(self) -> None:
        self.reactor.shutdown()  # the first SIGTERM began it
        self.reactor.deliver(signal.SIGINT)
        self.assertEqual((self.hurried, self.reactor.exits), (1, []))
        self.reactor.deliver(signal.SIGTERM)
        self.assertEqual((self.hurried, self.reactor.exits), (1, [128 + signal.SIGTERM]))
        self.assertNotIn("reactor", self.reactor.handlers)  # never stops the reactor again

    def test_only_the_reactors_own_handlers_are_taken_over(self) -> None:
        self.reactor.shutdown()
        self.assertEqual(self.reactor.handlers[signal.SIGHUP], signal.SIG_DFL)

    def test_stopping_without_a_shutdown_leaves_signals_alone(self) -> None:
        self.service.stopService()
        self.reactor.shutdown()
        self.assertEqual(self.reactor.handlers[signal.SIGTERM], self.reactor.sigTerm)


class Forever:
    def __init__(self) -> None:
        self.cancelled = 0

    def wait(self) -> "defer.Deferred[None]":
        def cancelled(d: Any) -> None:
            self.cancelled += 1

        return defer.Deferred(cancelled)


class HurryTests(TestCase):
    def start(self, grace: float) -> tuple[Server, Forever, StaticRegistry]:
        self.reactor = MemoryReactorClock()
        registry = StaticRegistry()
        forever = Forever()
        server = Server(self.reactor, "tcp:7000", registry=registry,
                        services={"forever": forever}, advertise="127.0.0.1", grace=grace,
                        drain_timeout=60.0)
        server.startService()
        self.successResultOf(server.ready)
        return server, forever, registry

    def test_hurry_skips_the_rest_of_the_grace_period(self) -> None:
        server, _, registry = self.start(grace=30.0)
        stopped = server.stopService()
        self.assertNoResult(stopped)
        server.hurry()
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(registry.lookup("forever")), [])

    def test_hurry_cuts_the_drain_short_and_cancels_running_calls(self) -> None:
        server, forever, _ = self.start(grace=0.0)
        protocol = server.factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        body = make_codecs()[Serializer.MSGPACK].encode(
            {"service": "forever", "method": "wait", "args": []})
        protocol.dataReceived(encode_frame(REQUEST, compress.NONE, int(Serializer.MSGPACK), 1, body))
        self.assertEqual(server.dispatcher.in_flight, 1)
        stopped = server.stopService()
        self.reactor.advance(1.0)
        self.assertNoResult(stopped)  # draining: up to 60 s
        server.hurry()
        self.assertTrue(protocol.transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual((forever.cancelled, server.dispatcher.in_flight), (1, 0))

    def test_hurry_before_a_stop_does_nothing(self) -> None:
        server, _, _ = self.start(grace=0.0)
        server.hurry()
        self.assertFalse(server.hurried)
