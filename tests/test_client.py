"""The client end to end over in-memory connections (msrpc.testing.MemoryNetwork)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from msrpc.client import RetryPolicy
from msrpc.errors import (
    BadRequest, CallTimeout, ConnectError, ConnectionLost, DeadlineExceeded, NoInstances,
    NotFound, RateLimited, RegistryUnavailable, RemoteError, Unavailable,
)
from msrpc.health import EjectionPolicy
from msrpc.pool import tcp_connector
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.static import StaticRegistry
from msrpc.server import ServerLimits
from msrpc.service import expose
from msrpc.testing import MemoryNetwork


class Counting:
    """A service that counts its calls and can be slow or fail on demand."""

    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.network = network
        self.name = name
        self.calls = 0
        self.fail_with: Exception | None = None

    def who(self) -> str:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return self.name

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b

    def slow(self, delay: float) -> "defer.Deferred[str]":
        self.calls += 1
        return deferLater(self.network.clock, delay, lambda: self.name)

    @expose(idempotent=True)
    def read(self, delay: float) -> "defer.Deferred[str]":
        """Like ``slow``, but declared safe to run twice by the server."""
        return self.slow(delay)

    def boom(self) -> None:
        raise ZeroDivisionError("divided")


class ClientBasics(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.service = Counting(self.net, "a")
        self.server = self.net.server({"count": self.service})
        self.client = self.net.client(timeout=5.0)

    def result(self, d: "defer.Deferred[Any]") -> Any:
        self.net.flush()
        return self.successResultOf(d)

    def failure(self, d: "defer.Deferred[Any]", *types: type) -> Any:
        self.net.flush()
        return self.failureResultOf(d, *types).value

    def test_call_resolves_through_the_registry_and_returns_the_result(self) -> None:
        self.assertEqual(self.result(self.client.call("count", "add", 1, 2)), 3)

    def test_proxy_attributes_are_remote_methods(self) -> None:
        arith = self.client.proxy("count")
        self.assertEqual(self.result(arith.add(a=4, b=5)), 9)

    def test_one_connection_is_reused_by_all_calls(self) -> None:
        results = [self.client.call("count", "add", i, i) for i in range(20)]
        self.net.flush()
        self.assertEqual([self.successResultOf(d) for d in results], [2 * i for i in range(20)])
        self.assertEqual(len(self.server.factory.connections), 1)

    def test_many_calls_in_flight_complete_out_of_order(self) -> None:
        slow = self.client.call("count", "slow", 2.0)
        fast = self.client.call("count", "slow", 1.0)
        self.net.advance(1.0)
        self.assertEqual(self.successResultOf(fast), "a")
        self.assertNoResult(slow)
        self.net.advance(1.0)
        self.assertEqual(self.successResultOf(slow), "a")

    def test_remote_errors_arrive_as_their_classes(self) -> None:
        self.assertIsInstance(self.failure(self.client.call("count", "nope"), NotFound),
                              NotFound)
        self.assertIsInstance(self.failure(self.client.call("count", "add", "x", 1)),
                              BadRequest)
        error = self.failure(self.client.call("count", "boom"), RemoteError)
        self.assertEqual((error.remote_type, error.message), ("ZeroDivisionError", "divided"))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_unknown_service_is_no_instances(self) -> None:
        error = self.failure(self.client.call("missing", "x"), NoInstances)
        self.assertIn("'missing'", str(error))

    def test_timeout_fails_on_time_even_if_the_server_never_answers(self) -> None:
        d = self.client.invoke("count", "slow", [60.0], timeout=0.5)
        self.net.advance(0.499)
        self.assertNoResult(d)
        self.net.advance(0.001)
        error = self.failureResultOf(d, CallTimeout).value
        self.assertIsInstance(error, DeadlineExceeded)
        self.assertIn("0.5s", str(error))

    def test_timeout_is_sent_to_the_server_as_a_deadline(self) -> None:
        d = self.client.invoke("count", "slow", [60.0], timeout=0.25)
        self.net.flush()
        [running] = next(iter(self.server.factory.connections)).server_calls.values()
        self.assertIn(running, self.server.dispatcher._deadlines)
        self.net.advance(0.25)
        self.failureResultOf(d, CallTimeout)
        self.assertEqual(self.server.dispatcher.in_flight, 0)

    def test_cancelling_the_deferred_cancels_the_call_on_the_server(self) -> None:
        d = self.client.call("count", "slow", 60.0)
        self.net.flush()
        self.assertEqual(self.server.dispatcher.in_flight, 1)
        d.cancel()
        self.net.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.server.dispatcher.in_flight, 0)

    def test_no_timer_is_left_behind_after_calls_finish(self) -> None:
        for _ in range(10):
            self.result(self.client.call("count", "add", 1, 1))
        self.assertEqual(len(self.client._deadlines), 0)
        # One shared timer at most (armed for the first deadline), never one per call.
        self.assertLessEqual(len(self.net.clock.getDelayedCalls()), 3)

    def test_closing_the_client_fails_new_calls(self) -> None:
        self.result(self.client.call("count", "add", 1, 1))
        closed = self.client.close()
        self.net.flush()
        self.successResultOf(closed)
        self.assertEqual(len(self.server.factory.connections), 0)
        self.failure(self.client.call("count", "add", 1, 1), ConnectionLost)


class ResolutionTests(TestCase):
    def test_weighted_random_sends_in_proportion_to_weight(self) -> None:
        net = MemoryNetwork()
        light, heavy = Counting(net, "light"), Counting(net, "heavy")
        net.server({"svc": light}, weight=1)
        net.server({"svc": heavy}, weight=9)
        client = net.client()
        results = [client.call("svc", "who") for _ in range(2000)]
        net.flush()
        counts = Counter(self.successResultOf(d) for d in results)
        self.assertGreater(counts["heavy"] / counts["light"], 6)
        self.assertLess(counts["heavy"] / counts["light"], 13)

    def test_weight_zero_and_disabled_instances_get_nothing(self) -> None:
        net = MemoryNetwork()
        live = Counting(net, "live")
        net.server({"svc": live})
        zero = net.server({"svc": Counting(net, "zero")}, register=False)
        off = net.server({"svc": Counting(net, "off")}, register=False)
        net.registry.register(ServiceInstance("svc", zero.host, zero.port, weight=0))
        net.registry.register(ServiceInstance("svc", off.host, off.port, enabled=False))
        client = net.client()
        results = [client.call("svc", "who") for _ in range(50)]
        net.flush()
        self.assertEqual({self.successResultOf(d) for d in results}, {"live"})

    def test_only_callable_instances_listed_is_no_instances(self) -> None:
        net = MemoryNetwork()
        net.registry.register(ServiceInstance("svc", "127.0.0.1", 1, weight=0))
        d = net.client().call("svc", "who")
        net.flush()
        self.assertIn("none callable", str(self.failureResultOf(d, NoInstances).value))

    def test_new_instances_are_picked_up_from_the_watch(self) -> None:
        net = MemoryNetwork()
        net.server({"svc": Counting(net, "first")})
        client = net.client()
        d = client.call("svc", "who")
        net.flush()
        self.assertEqual(self.successResultOf(d), "first")
        net.server({"svc": Counting(net, "second")})  # the static registry notifies watchers
        calls = [client.call("svc", "who") for _ in range(40)]
        net.flush()
        self.assertEqual({self.successResultOf(d) for d in calls}, {"first", "second"})

    def test_removed_instance_connection_closes_after_its_calls_finish(self) -> None:
        net = MemoryNetwork()
        service = Counting(net, "old")
        server = net.server({"svc": service})
        client = net.client()
        registration = self.successResultOf(net.registry.register(
            ServiceInstance("svc", server.host, server.port, weight=5)))
        net.registry._instances["svc"].pop(0)  # only the weight-5 registration remains
        d = client.call("svc", "slow", 1.0)
        net.flush()
        self.successResultOf(registration.deregister())  # the watch removes the instance
        net.flush()
        self.assertEqual(len(server.factory.connections), 1)  # still busy
        net.advance(1.0)
        self.assertEqual(self.successResultOf(d), "old")
        net.flush()
        self.assertEqual(len(server.factory.connections), 0)

    def test_registry_failure_on_first_lookup_fails_the_call_with_its_error(self) -> None:
        net = MemoryNetwork()
        registry = StaticRegistry()
        registry.lookup = lambda service: defer.fail(RegistryUnavailable("down"))  # type: ignore
        d = net.client(registry=registry).call("svc", "who")
        net.flush()
        self.failureResultOf(d, RegistryUnavailable)

    def test_cached_instances_keep_serving_while_the_registry_is_down(self) -> None:
        net = MemoryNetwork()
        net.server({"svc": Counting(net, "a")})
        client = net.client()
        d = client.call("svc", "who")
        net.flush()
        self.successResultOf(d)
        net.registry.lookup = lambda service: defer.fail(RegistryUnavailable("down"))  # type: ignore
        results = [client.call("svc", "who") for _ in range(5)]
        net.flush()
        self.assertEqual([self.successResultOf(r) for r in results], ["a"] * 5)


class RetryTests(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.a = Counting(self.net, "a")
        self.b = Counting(self.net, "b")
        self.server_a = self.net.server({"svc": self.a})
        self.server_b = self.net.server({"svc": self.b})
        self.client = self.net.client(timeout=5.0, balancer="round_robin",
                                      ejection=EjectionPolicy(enabled=False))

    def run_calls(self, n: int) -> list[Any]:
        """Results (or exceptions) of ``n`` calls of ``svc.who``."""
        outcomes: list[Any] = []
        for _ in range(n):
            d = self.client.call("svc", "who")
            d.addErrback(lambda f: f.value)
            d.addCallback(outcomes.append)
        self.net.advance(1.0)
        self.assertEqual(len(outcomes), n)
        return outcomes

    def test_connect_refused_is_retried_on_another_instance(self) -> None:
        self.server_a.crash()
        self.assertEqual(self.run_calls(6), ["b"] * 6)
        self.assertGreater(self.client.stats["retries"], 0)

    def test_503_is_retried_elsewhere(self) -> None:
        self.server_a.dispatcher.draining = True
        self.assertEqual(self.run_calls(6), ["b"] * 6)
        self.assertEqual(self.a.calls, 0)

    def test_700_is_retried_elsewhere(self) -> None:
        self.a.fail_with = RateLimited("slow down")
        results = self.run_calls(6)
        self.assertEqual(results, ["b"] * 6)

    def test_500_is_never_retried(self) -> None:
        self.a.fail_with = KeyError("x")
        results = self.run_calls(4)
        self.assertEqual(sum(isinstance(r, RemoteError) for r in results), 2)
        self.assertEqual(self.client.stats["retries"], 0)
        self.flushLoggedErrors(KeyError)

    def test_400_is_never_retried(self) -> None:
        self.a.fail_with = BadRequest("no")
        results = self.run_calls(4)
        self.assertEqual(sum(isinstance(r, BadRequest) for r in results), 2)
        self.assertEqual(self.client.stats["retries"], 0)

    def test_connection_lost_is_retried_only_for_idempotent_calls(self) -> None:
        # Round robin puts both first attempts on a, which then dies mid-call.
        plain = self.client.invoke("svc", "slow", [1.0])
        self.client.invoke("svc", "who")  # moves round robin back to a
        safe = self.client.invoke("svc", "slow", [1.0], idempotent=True)
        self.net.flush()
        self.assertEqual(self.a.calls, 2)
        self.server_a.crash()
        self.net.advance(2.0)
        self.assertEqual(self.successResultOf(safe), "b")
        self.failureResultOf(plain, ConnectionLost)

    def crash_a_during(self, *calls: "defer.Deferred[Any]") -> None:
        self.net.flush()
        self.server_a.crash()
        self.net.advance(2.0)

    def test_methods_the_server_declares_idempotent_are_retried(self) -> None:
        declared = self.client.invoke("svc", "read", [1.0])  # round robin: on a
        self.crash_a_during(declared)
        self.assertEqual(self.successResultOf(declared), "b")

    def test_caller_saying_not_idempotent_overrides_the_server(self) -> None:
        refused = self.client.invoke("svc", "read", [1.0], idempotent=False)
        self.crash_a_during(refused)
        self.failureResultOf(refused, ConnectionLost)

    def test_servers_publish_their_idempotent_methods(self) -> None:
        [instance, _] = self.successResultOf(self.net.registry.lookup("svc"))
        self.assertEqual(instance.metadata, {"idempotent": "read"})
        self.assertTrue(instance.declares_idempotent("read"))
        self.assertFalse(instance.declares_idempotent("slow"))

    def test_retries_are_bounded_by_max_attempts(self) -> None:
        client = self.net.client(retry=RetryPolicy(max_attempts=2),
                                 ejection=EjectionPolicy(enabled=False))
        self.server_a.dispatcher.draining = True
        self.server_b.dispatcher.draining = True
        d = client.call("svc", "who")
        self.net.advance(1.0)
        self.failureResultOf(d, Unavailable)
        self.assertEqual(client.stats["retries"], 1)

    def test_retries_never_run_past_the_deadline(self) -> None:
        client = self.net.client(timeout=0.002, retry=RetryPolicy(
            max_attempts=10, backoff_initial=0.01), ejection=EjectionPolicy(enabled=False))
        self.server_a.dispatcher.draining = True
        self.server_b.dispatcher.draining = True
        d = client.call("svc", "who")
        self.net.advance(1.0)
        self.failureResultOf(d, Unavailable)
        self.assertEqual(client.stats["retries"], 0)

    def test_all_instances_down_is_a_connect_error(self) -> None:
        self.server_a.crash()
        self.server_b.crash()
        d = self.client.call("svc", "who")
        self.net.advance(1.0)
        self.failureResultOf(d, ConnectError)


class EjectionTests(TestCase):
    def test_failing_instance_is_ejected_then_probed_back(self) -> None:
        net = MemoryNetwork()
        a, b = Counting(net, "a"), Counting(net, "b")
        server_a = net.server({"svc": a})
        net.server({"svc": b})
        client = net.client(balancer="round_robin", ejection=EjectionPolicy(
            consecutive_failures=2, base_ejection=10.0))
        for _ in range(4):
            net.flush()
            client.call("svc", "who")
        net.flush()
        server_a.crash()
        for _ in range(6):  # connect failures: retried on b, and strike a
            client.call("svc", "who")
            net.advance(0.1)
        endpoint_a = [e for e in client._pool.endpoints.values() if e.port == server_a.port][0]
        self.assertGreater(endpoint_a.ejected_until, net.clock.seconds())
        before = client.stats["retries"]
        for _ in range(10):
            client.call("svc", "who")
        net.flush()
        self.assertEqual(client.stats["retries"], before)  # a is out of rotation
        net.listen(server_a.host, server_a.port, server_a.factory)  # a comes back
        net.advance(10.0)
        self.assertTrue(endpoint_a.probation)
        results = [client.call("svc", "who") for _ in range(10)]
        net.advance(1.0)
        self.assertIn("a", {self.successResultOf(d) for d in results})

    def test_the_last_instance_is_never_ejected(self) -> None:
        net = MemoryNetwork()
        server = net.server({"svc": Counting(net, "only")})
        client = net.client(ejection=EjectionPolicy(consecutive_failures=1))
        d = client.call("svc", "who")
        net.flush()
        self.successResultOf(d)
        server.crash()
        for _ in range(3):
            client.call("svc", "who").addErrback(lambda f: None)
            net.advance(1.0)
        [endpoint] = client._pool.endpoints.values()
        self.assertEqual(endpoint.ejected_until, 0.0)


class RateAndOverloadTests(TestCase):
    def test_overloaded_server_answers_503_and_client_fails_over(self) -> None:
        net = MemoryNetwork()
        busy = net.server({"svc": Counting(net, "busy")},
                          limits=ServerLimits(max_in_flight=1))
        net.server({"svc": Counting(net, "free")})
        client = net.client(balancer="round_robin")
        results = [client.call("svc", "slow", 1.0) for _ in range(6)]
        net.advance(1.0)
        net.advance(1.0)
        values = Counter(self.successResultOf(d) for d in results)
        self.assertEqual(sum(values.values()), 6)
        self.assertEqual(values["busy"], 1)
        del busy


class TcpConnectorTests(TestCase):
    """``msrpc.pool.tcp_connector`` on a ``MemoryReactorClock``: no sockets, no waiting."""

    def connect(self, host: str) -> tuple[MemoryReactorClock, "defer.Deferred[Any]"]:
        reactor = MemoryReactorClock()
        protocol = RpcProtocol(ProtocolSettings())
        return reactor, tcp_connector(reactor, timeout=5.0)(host, 9112, protocol)

    def refuse(self, reactor: MemoryReactorClock) -> None:
        host, port, factory, timeout, bind = reactor.tcpClients[0]
        factory.clientConnectionFailed(reactor.connectors[0],
                                       Failure(ConnectionRefusedError()))

    def test_refused_ipv4_connect_fails_at_once(self) -> None:
        reactor, d = self.connect("127.0.0.1")
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 9112))
        self.refuse(reactor)
        self.failureResultOf(d, ConnectionRefusedError)  # no clock advance needed

    def test_refused_ipv6_connect_fails_at_once(self) -> None:
        reactor, d = self.connect("::1")
        self.assertEqual(reactor.tcpClients[0][:2], ("::1", 9112))
        self.refuse(reactor)
        self.failureResultOf(d, ConnectionRefusedError)
