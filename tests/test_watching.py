"""``msrpc watch``'s change lines (msrpc.watching) and the ``watch``/``health`` commands."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from msrpc import cli
from msrpc.watching import ADDED, CHANGED, REMOVED, describe, diff, timestamp, watch_services
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.static import StaticRegistry

A = ServiceInstance("svc", "10.0.0.1", 7001, weight=10, metadata={"zone": "a"})
B = ServiceInstance("svc", "10.0.0.2", 7002)


class DiffTests(TestCase):
    def test_added_removed_and_changed_by_instance_id(self) -> None:
        heavier = A.with_changes(weight=20, metadata={"zone": "b"})
        self.assertEqual(diff([A], [A, B]), [(ADDED, B, None)])
        self.assertEqual(diff([A, B], [B]), [(REMOVED, A, None)])
        self.assertEqual(diff([A, B], [heavier, B]), [(CHANGED, heavier, A)])
        self.assertEqual(diff([A, B], [B, A]), [])

    def test_descriptions_show_what_changed(self) -> None:
        self.assertEqual(describe(A), "weight=10 id=10.0.0.1:7001 zone=a")
        changed = A.with_changes(weight=5, metadata={"rack": "r1"}, enabled=False)
        self.assertEqual(describe(changed, A),
                         "weight=10->5 id=10.0.0.1:7001 enabled=True->False rack=(none)->r1 "
                         "zone=a->(none)")

    def test_timestamps_are_utc_with_milliseconds(self) -> None:
        self.assertEqual(timestamp(0.25), "1970-01-01T00:00:00.250Z")


class WatchServicesTests(TestCase):
    def test_lines_for_the_first_list_then_every_change_until_stopped(self) -> None:
        clock, out, registry = Clock(), io.StringIO(), StaticRegistry({"svc": [A]})
        until: defer.Deferred[None] = defer.Deferred()
        done = defer.Deferred.fromCoroutine(
            watch_services(clock, registry, ["svc"], out, until))
        clock.advance(1.0)
        registration = self.successResultOf(registry.register(B))
        clock.advance(1.0)
        registration.deregister()
        until.callback(None)
        self.successResultOf(done)
        registry.register(A.with_changes(port=7009))  # after the stop: not shown
        self.assertEqual(out.getvalue().splitlines(), [
            "1970-01-01T00:00:00.000Z\tsvc\tadded\t10.0.0.1:7001\tweight=10 id=10.0.0.1:7001 "
            "zone=a",
            "1970-01-01T00:00:01.000Z\tsvc\tadded\t10.0.0.2:7002\tweight=10 id=10.0.0.2:7002",
            "1970-01-01T00:00:02.000Z\tsvc\tremoved\t10.0.0.2:7002\tweight=10 "
            "id=10.0.0.2:7002",
        ])


class CommandTests(TestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        from twisted.internet import reactor

        out, err = io.StringIO(), io.StringIO()
        d = defer.Deferred.fromCoroutine(cli.run(reactor, list(argv), out, err))
        return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))

    @defer.inlineCallbacks
    def test_watch_needs_services(self) -> Any:
        code, _, err = yield self.run_cli("watch", "--registry", "static")
        self.assertEqual(code, 2)
        self.assertIn("name the services to watch", err)

    @defer.inlineCallbacks
    def test_watch_for_a_while_prints_the_instances(self) -> Any:
        code, out, _ = yield self.run_cli("watch", "svc", "--registry", "static", "--static",
                                          "svc=127.0.0.1:7001", "--duration", "0.01")
        self.assertEqual(code, 0)
        self.assertEqual(out.split("\t")[1:4], ["svc", "added", "127.0.0.1:7001"])

    @defer.inlineCallbacks
    def test_health_of_a_service_without_instances_fails(self) -> Any:
        code, out, _ = yield self.run_cli("health", "svc", "--registry", "static")
        self.assertEqual((code, out), (1, "svc\t(no live instances)\n"))

    @defer.inlineCallbacks
    def test_health_of_an_unreachable_instance_fails(self) -> Any:
        from tests.servers import free_port

        port = free_port()
        code, out, _ = yield self.run_cli("health", "svc", "--registry", "static", "--static",
                                          f"svc=127.0.0.1:{port}", "--timeout", "2")
        self.assertEqual(code, 1)
        self.assertRegex(out, rf"^svc\t127\.0\.0\.1:{port}\tUNREACHABLE  ConnectError: ")
