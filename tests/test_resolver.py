"""The resolver's watches: started before callers wake, stopped when the client closes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from msrpc.client import Client
from msrpc.errors import NoInstances, RegistryError
from msrpc.registry.registration import CallbackWatch
from msrpc.registry.static import StaticRegistry


class StrictRegistry(StaticRegistry):
    """
    Answers lookups when told (as a real registry answers later), refuses watches once
    closed (as the local registry does), and counts the live ones.
    """

    def __init__(self, deliver_at_once: bool) -> None:
        super().__init__()
        self.deliver_at_once = deliver_at_once
        self.closed = False
        self.live_watches = 0
        self.refused_watches = 0
        self.lookups: list[defer.Deferred[list[Any]]] = []

    def lookup(self, service: str) -> "defer.Deferred[list[Any]]":
        d: defer.Deferred[list[Any]] = defer.Deferred()
        self.lookups.append(d)
        return d

    def answer_lookups(self) -> None:
        for d in self.lookups:
            d.callback([])

    def watch(self, service: str, callback: Any) -> CallbackWatch:
        if self.closed:
            self.refused_watches += 1
            raise RegistryError("the registry is closed")
        self.live_watches += 1
        if self.deliver_at_once:
            callback([])

        def stopped() -> None:
            self.live_watches -= 1

        return CallbackWatch(stopped)

    def close(self) -> "defer.Deferred[None]":
        self.closed = True
        return super().close()


class WatchLifetimeTests(TestCase):
    def assert_closing_on_no_instances_leaves_no_watch(self, deliver_at_once: bool) -> None:
        registry = StrictRegistry(deliver_at_once)
        client = Client(MemoryReactorClock(), registry)

        def close_everything(failure: Any) -> Any:
            # What ``msrpc call`` does: the call failed, close the client and the registry.
            client.close()
            registry.close()
            return failure

        d = client.call("nope", "x").addErrback(close_everything)
        registry.answer_lookups()
        self.failureResultOf(d, NoInstances)
        self.assertEqual((registry.live_watches, registry.refused_watches), (0, 0))

    def test_a_caller_closing_on_no_instances_leaves_no_watch_behind(self) -> None:
        self.assert_closing_on_no_instances_leaves_no_watch(deliver_at_once=False)

    def test_a_watch_that_delivers_at_once_is_stopped_too(self) -> None:
        self.assert_closing_on_no_instances_leaves_no_watch(deliver_at_once=True)

    def test_a_registry_refusing_the_watch_still_answers_from_the_lookup(self) -> None:
        registry = StrictRegistry(deliver_at_once=False)
        registry.closed = True  # refuses watches; the lookup still works
        client = Client(MemoryReactorClock(), registry)
        d = client.call("nope", "x")
        registry.answer_lookups()
        self.failureResultOf(d, NoInstances)
        self.assertEqual(registry.refused_watches, 1)
