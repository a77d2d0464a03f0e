"""``Server`` as an ``IService``: registration (with retries) and graceful stop, on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from msrpc.demo import Echo
from msrpc.errors import RegistryAuthError, RegistryUnavailable
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.static import StaticRegistry
from msrpc.server import REGISTER_RETRY_INITIAL, REGISTER_RETRY_MAX, Server


class FlakyRegistry(StaticRegistry):
    """A static registry whose next ``failures`` registrations fail with ``error``."""

    def __init__(self, failures: int, error: Exception = RegistryUnavailable("down")) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempts = 0

    def register(self, instance: ServiceInstance) -> "defer.Deferred[Any]":
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            return defer.fail(self.error)
        return super().register(instance)


class RegistrationRetryTests(TestCase):
    def start(self, registry: StaticRegistry) -> Server:
        self.reactor = MemoryReactorClock()
        server = Server(self.reactor, "tcp:7000", registry=registry,
                        services={"echo": Echo()}, advertise="127.0.0.1", grace=0)
        server.startService()
        return server

    def listed(self, registry: StaticRegistry) -> list[ServiceInstance]:
        return self.successResultOf(registry.lookup("echo"))

    def test_registry_outage_at_start_is_retried_with_backoff(self) -> None:
        registry = FlakyRegistry(failures=3)
        server = self.start(registry)
        self.assertEqual((registry.attempts, self.listed(registry)), (1, []))
        self.assertNoResult(server.ready)
        for delay in (REGISTER_RETRY_INITIAL, 2 * REGISTER_RETRY_INITIAL):
            self.reactor.advance(delay)
        self.assertEqual(registry.attempts, 3)
        self.reactor.advance(4 * REGISTER_RETRY_INITIAL)
        self.assertEqual(registry.attempts, 4)
        self.assertEqual([i.address for i in self.listed(registry)], ["127.0.0.1:7000"])
        self.successResultOf(server.ready)
        self.flushLoggedErrors()

    def test_backoff_is_capped(self) -> None:
        registry = FlakyRegistry(failures=100)
        self.start(registry)
        self.reactor.pump([REGISTER_RETRY_MAX] * 20)
        before = registry.attempts
        self.reactor.advance(REGISTER_RETRY_MAX)
        self.assertEqual(registry.attempts, before + 1)

    def test_stop_while_waiting_to_retry_stops_at_once(self) -> None:
        registry = FlakyRegistry(failures=100)
        server = self.start(registry)
        stopped = server.stopService()
        self.successResultOf(stopped)
        attempts = registry.attempts
        self.reactor.advance(REGISTER_RETRY_MAX * 2)
        self.assertEqual(registry.attempts, attempts)
        self.assertEqual(self.listed(registry), [])

    def test_rejected_credentials_fail_the_start(self) -> None:
        registry = FlakyRegistry(failures=1, error=RegistryAuthError("wrong password"))
        server = self.start(registry)
        self.failureResultOf(server.ready, RegistryAuthError)
        self.reactor.advance(REGISTER_RETRY_MAX)
        self.assertEqual(registry.attempts, 1)
        self.flushLoggedErrors(RegistryAuthError)


class GracefulStopTests(TestCase):
    def test_stop_deregisters_then_waits_the_grace_then_closes_the_port(self) -> None:
        reactor = MemoryReactorClock()
        registry = StaticRegistry()
        server = Server(reactor, "tcp:7000", registry=registry, services={"echo": Echo()},
                        advertise="127.0.0.1", grace=2.0)
        server.startService()
        self.successResultOf(server.ready)
        stopped = server.stopService()
        self.assertEqual(self.successResultOf(registry.lookup("echo")), [])
        self.assertNoResult(stopped)
        self.assertFalse(server.dispatcher.draining)  # still serving during the grace
        reactor.advance(2.0)
        self.successResultOf(stopped)
        self.assertTrue(server.dispatcher.draining)
