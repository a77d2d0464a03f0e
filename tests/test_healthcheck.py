"""The msrpc.health service (msrpc.healthcheck) over in-memory connections on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from msrpc.client import RetryPolicy
from msrpc.healthcheck import (
    HEALTH_SERVICE, MAX_WAIT, NOT_SERVING, SERVING, UNKNOWN_SERVICE, HealthService,
    check_instances,
)
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server
from msrpc.testing import MemoryNetwork


class Arith:
    def add(self, a: int, b: int) -> int:
        return a + b


class HealthOverTheWireTests(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.up = True
        self.health = HealthService(self.net.clock, lambda: self.up, lambda: ["arith"])
        self.server = self.net.server({"arith": Arith(), HEALTH_SERVICE: self.health})
        self.client = self.net.client(timeout=60.0, retry=RetryPolicy(max_attempts=1))

    def ask(self, method: str, *args: Any) -> Any:
        d = self.client.call(HEALTH_SERVICE, method, *args)
        self.net.flush()
        return d

    def test_check_tells_serving_unknown_and_overall(self) -> None:
        self.assertEqual(self.successResultOf(self.ask("check", "arith")), SERVING)
        self.assertEqual(self.successResultOf(self.ask("check", "nope")), UNKNOWN_SERVICE)
        self.assertEqual(self.successResultOf(self.ask("check")), SERVING)
        self.up = False
        self.assertEqual(self.successResultOf(self.ask("check", "arith")), NOT_SERVING)
        self.assertEqual(self.successResultOf(self.ask("check")), NOT_SERVING)

    def test_only_check_and_watch_are_on_the_wire(self) -> None:
        self.assertEqual(sorted(m for (s, m) in self.server.dispatcher.methods
                                if s == HEALTH_SERVICE), ["check", "watch"])

    def test_watch_answers_at_once_when_the_status_is_not_the_known_one(self) -> None:
        self.assertEqual(self.successResultOf(self.ask("watch", "arith")), SERVING)
        self.assertEqual(self.successResultOf(self.ask("watch", "arith", NOT_SERVING)),
                         SERVING)

    def test_watch_waits_for_a_change(self) -> None:
        d = self.ask("watch", "arith", SERVING, 30.0)
        self.net.advance(10.0)
        self.assertNoResult(d)
        self.up = False
        self.health.changed()
        self.net.flush()
        self.assertEqual(self.successResultOf(d), NOT_SERVING)

    def test_watch_answers_the_unchanged_status_when_its_wait_is_over(self) -> None:
        d = self.ask("watch", "arith", SERVING, 5.0)
        self.net.advance(4.9)
        self.assertNoResult(d)
        self.net.advance(0.1)
        self.assertEqual(self.successResultOf(d), SERVING)
        self.assertEqual(self.health._watchers, [])

    def test_a_watch_never_waits_longer_than_the_maximum(self) -> None:
        client = self.net.client(timeout=MAX_WAIT + 60)
        d = client.call(HEALTH_SERVICE, "watch", "arith", SERVING, 10 * MAX_WAIT)
        self.net.advance(MAX_WAIT)
        self.assertEqual(self.successResultOf(d), SERVING)

    def test_set_status_marks_one_service_and_wakes_its_watchers(self) -> None:
        d = self.ask("watch", "arith", SERVING)
        self.health.set_status("arith", NOT_SERVING)
        self.net.flush()
        self.assertEqual(self.successResultOf(d), NOT_SERVING)
        self.health.set_status("arith", None)
        self.assertEqual(self.successResultOf(self.ask("check", "arith")), SERVING)
        self.assertRaises(ValueError, self.health.set_status, "arith", "MAYBE")

    def test_a_cancelled_watch_is_forgotten(self) -> None:
        d = self.ask("watch", "arith", SERVING)
        d.cancel()
        self.failureResultOf(d)
        self.net.flush()
        self.assertEqual(self.health._watchers, [])

    def test_stop_answers_every_waiting_watcher(self) -> None:
        watches = [self.ask("watch", "arith", SERVING), self.ask("watch", "", NOT_SERVING)]
        self.health.stop()
        self.net.flush()
        self.assertEqual([self.successResultOf(d) for d in watches], [SERVING, SERVING])

    def test_check_instances_asks_each_instance_at_its_address(self) -> None:
        other = HealthService(self.net.clock, lambda: False, lambda: ["arith"])
        self.net.server({"arith": Arith(), HEALTH_SERVICE: other}, address="10.0.0.9:7009")
        instances = self.successResultOf(self.net.registry.lookup("arith"))
        instances.append(ServiceInstance("arith", "10.0.0.99", 9))  # nobody listens there
        d = check_instances(self.net.clock, instances,
                            lambda registry: self.net.client(registry=registry), 5.0)
        self.net.advance(5.0)
        answers = self.successResultOf(d)
        self.assertEqual([a.status for a in answers], [SERVING, NOT_SERVING, None])
        self.assertEqual(type(answers[2].error).__name__, "ConnectError")
        self.assertIn("UNREACHABLE", answers[2].line())
        self.assertTrue(answers[0].line().startswith(f"arith\t{instances[0].address}\tSERVING"))


class ServerHealthTests(TestCase):
    def test_a_server_serves_health_unlisted_and_flips_when_its_stop_begins(self) -> None:
        reactor = MemoryReactorClock()
        registry = StaticRegistry()
        server = Server(reactor, "tcp:7000", registry=registry, advertise="127.0.0.1",
                        services={"arith": Arith()}, grace=5.0)
        health = server.health
        assert health is not None
        self.assertEqual(health.status("arith"), NOT_SERVING)  # not started
        server.startService()
        self.assertEqual(health.status("arith"), SERVING)
        self.assertEqual([i.service for i in self.successResultOf(registry.lookup("arith"))],
                         ["arith"])
        self.assertEqual(self.successResultOf(registry.lookup(HEALTH_SERVICE)), [])
        watching = health.watch("arith", SERVING)
        stopping = server.stopService()
        self.assertEqual(self.successResultOf(watching), NOT_SERVING)  # before the grace
        self.assertEqual(health.status(""), NOT_SERVING)
        reactor.advance(5.0)
        self.successResultOf(stopping)

    def test_health_can_be_left_out(self) -> None:
        server = Server(MemoryReactorClock(), "tcp:7000", services={"arith": Arith()},
                        health=False)
        self.assertIsNone(server.health)
        self.assertNotIn(HEALTH_SERVICE, server.dispatcher.services)
