"""
Nacos UDP push, deterministically: the datagram parser and receiver, and NacosRegistry with a
fake UDP port (tests/nacos_fake.py) on a Clock.  Pushes are fed to the protocol as Nacos
2.3.2 sends them; what the real server does is tested in test_nacos_integration.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from msrpc.errors import DecodeError
from msrpc.registry import nacos
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.nacos import NacosRegistry, parse_push_port
from msrpc.registry.nacos_push import (
    MAX_INFLATED, USER_AGENT, Push, PushReceiver, local_address_towards, parse_push,
)
from tests.nacos_fake import FakeNacos, FakeUDPPort, Network, UDPReactor, push_packet

A = "10.0.0.1:8848"
NACOS_ADDR = ("10.0.0.1", 51234)


def svc(port: int, **kw: Any) -> ServiceInstance:
    return ServiceInstance(service="arith", host="127.0.0.1", port=port, **kw)


class ParseTests(unittest.TestCase):
    def test_a_dom_push_names_group_and_service(self) -> None:
        push = parse_push(push_packet("g1@@arith", stamp=692217064198))
        self.assertEqual((push.kind, push.last_ref_time, push.group_and_service),
                         ("dom", 692217064198, ("g1", "arith")))

    def test_the_ack_echoes_lastreftime_as_the_java_client_does(self) -> None:
        ack = json.loads(parse_push(push_packet("g@@s", stamp=42)).ack())
        self.assertEqual(ack, {"type": "push-ack", "lastRefTime": 42, "data": ""})

    def test_a_gzipped_push_is_inflated(self) -> None:
        hosts = [{"ip": "10.0.0.%d" % i, "port": 80, "metadata": {"k": "v" * 50}}
                 for i in range(50)]
        packet = gzip.compress(push_packet("g@@big", hosts=hosts))
        self.assertEqual(parse_push(packet).name, "g@@big")

    def test_other_packet_types_get_an_unknown_ack(self) -> None:
        push = parse_push(json.dumps({"type": "dump", "lastRefTime": "7"}).encode())
        self.assertEqual((push.kind, push.name), ("dump", ""))
        self.assertEqual(json.loads(push.ack())["type"], "unknown-ack")

    def test_garbage_is_refused(self) -> None:
        bad = [b"", b"\xff\xfe", b"not json", b"[1, 2]", b'{"lastRefTime": 1}',
               b'{"type": "dom"}', b'{"type": "dom", "lastRefTime": true}',
               b'{"type": "dom", "lastRefTime": "x"}', b'{"type": "dom", "lastRefTime": 1}',
               b'{"type": "dom", "lastRefTime": 1, "data": "{}"}',
               b'{"type": "dom", "lastRefTime": 1, "data": "[]"}',
               b"\x1f\x8b\x08\x00garbage", gzip.compress(b"x" * 100)[:-8],
               b"[" * 100_000]
        for datagram in bad:
            with self.subTest(datagram=datagram[:40]):
                self.assertRaises((ValueError, DecodeError, RecursionError), parse_push,
                                  datagram)

    def test_a_gzip_bomb_is_refused_without_inflating_it(self) -> None:
        bomb = gzip.compress(b" " * (MAX_INFLATED + 10))
        self.assertRaises(DecodeError, parse_push, bomb)


class ReceiverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pushes: list[Push] = []
        self.receiver = PushReceiver(self.pushes.append, self.clock)
        self.port = FakeUDPPort(self.receiver, "127.0.0.1", 40000)

    def test_a_push_is_acknowledged_to_its_sender_and_handed_on(self) -> None:
        self.receiver.datagramReceived(push_packet("g@@s", stamp=99), NACOS_ADDR)
        [(ack, addr)] = self.port.written
        self.assertEqual((json.loads(ack)["lastRefTime"], addr), (99, NACOS_ADDR))
        self.assertEqual([p.name for p in self.pushes], ["g@@s"])
        self.assertEqual((self.receiver.received, self.receiver.rejected), (1, 0))

    def test_garbage_is_dropped_unanswered_with_a_throttled_warning(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(100):
            self.receiver.datagramReceived(b"\x00garbage", ("203.0.113.9", 9))
        self.clock.advance(11)
        self.receiver.datagramReceived(b"more garbage", ("203.0.113.9", 9))
        self.assertEqual((self.port.written, self.pushes), ([], []))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual([w["count"] for w in warnings], [1, 100])
        self.assertEqual(self.receiver.rejected, 101)

    def test_a_failing_handler_is_logged_not_raised(self) -> None:
        def broken(_: Push) -> None:
            raise RuntimeError("handler bug")

        self.receiver.on_push = broken
        self.receiver.datagramReceived(push_packet("g@@s"), NACOS_ADDR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.port.written), 1)

    def test_drop_hook_swallows_datagrams(self) -> None:
        self.receiver.drop = lambda _: True
        self.receiver.datagramReceived(push_packet("g@@s"), NACOS_ADDR)
        self.assertEqual((self.port.written, self.pushes), ([], []))

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.binary(max_size=2048))
    def test_no_datagram_ever_raises(self, datagram: bytes) -> None:
        self.receiver.datagramReceived(datagram, ("198.51.100.1", 1))
        self.receiver.datagramReceived(b"\x1f\x8b" + datagram, ("198.51.100.1", 1))


class LocalAddressTests(unittest.TestCase):
    def test_loopback_is_reached_from_loopback(self) -> None:
        self.assertEqual(local_address_towards("127.0.0.1", 8848), "127.0.0.1")


class RegistryPushTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeNacos()
        self.net = Network({A: self.fake})
        self.reactor = UDPReactor()

    def registry(self, **kw: Any) -> NacosRegistry:
        kw.setdefault("push_host", "127.0.0.1")
        kw.setdefault("api", "v1")
        kw.setdefault("refresh", 1.0)
        kw.setdefault("push_refresh", 10.0)
        registry = NacosRegistry(self.reactor, f"http://{A}", clock=self.clock,
                                 http=self.net, **kw)
        self.addCleanup(registry.close)
        return registry

    def lists(self) -> list:
        return self.fake.seen("/v1/ns/instance/list")

    def push(self, name: str = "DEFAULT_GROUP@@arith", stamp: int = 1,
             hosts: Any = None) -> None:
        """What Nacos pushes: by default the service's instances as the fake now has them."""
        if hosts is None:
            hosts = [h for (_, _, s, _, _, _), h in self.fake.instances.items()
                     if f"DEFAULT_GROUP@@{s}" == name]
        [port] = self.reactor.ports
        port.protocol.datagramReceived(push_packet(name, stamp, hosts=hosts), NACOS_ADDR)

    def watch(self, registry: NacosRegistry, service: str = "arith") -> list[list[int]]:
        seen: list[list[int]] = []
        registry.watch(service, lambda i: seen.append(sorted(x.port for x in i)))
        return seen


class SubscriptionTests(RegistryPushTestCase):
    def test_a_lookup_subscribes_our_udp_port_and_address(self) -> None:
        self.successResultOf(self.registry().lookup("arith"))
        [seen] = self.lists()
        [port] = self.reactor.ports
        self.assertEqual((seen.args["udpPort"], seen.args["clientIP"]),
                         (str(port.port), "127.0.0.1"))
        self.assertEqual(port.host, "127.0.0.1")

    def test_requests_announce_a_client_type_nacos_pushes_to(self) -> None:
        self.successResultOf(self.registry().lookup("arith"))
        [seen] = self.lists()
        self.assertEqual(seen.headers["user-agent"], USER_AGENT)
        self.assertTrue(USER_AGENT.startswith("Nacos-Java-Client:v"))

    def test_a_lookup_of_some_clusters_does_not_subscribe(self) -> None:
        self.successResultOf(self.registry().lookup("arith", clusters=["a"]))
        self.assertNotIn("udpPort", self.lists()[0].args)

    def test_one_port_per_registry_on_the_configured_port(self) -> None:
        registry = self.registry(push_port=45678)
        self.successResultOf(registry.lookup("a"))
        self.successResultOf(registry.lookup("b"))
        self.assertEqual([p.port for p in self.reactor.ports], [45678])

    def test_push_off_means_no_port_and_no_subscription(self) -> None:
        self.successResultOf(self.registry(push_port=None).lookup("arith"))
        self.assertEqual(self.reactor.ports, [])
        self.assertNotIn("udpPort", self.lists()[0].args)

    def test_a_reactor_without_udp_polls_only(self) -> None:
        registry = NacosRegistry(MemoryReactor(), f"http://{A}", clock=self.clock,
                                 http=self.net, push_host="127.0.0.1", refresh=1.0, api="v1")
        self.successResultOf(registry.lookup("arith"))
        self.assertNotIn("udpPort", self.lists()[0].args)
        self.assertFalse(registry.push_working)

    def test_a_port_that_cannot_be_bound_means_polling_at_refresh(self) -> None:
        self.reactor.refuse = CannotListenError("127.0.0.1", 45678, OSError("in use"))
        registry = self.registry(push_port=45678)
        self.watch(registry)
        self.clock.advance(1.0)
        self.assertEqual(len(self.lists()), 2)
        self.assertNotIn("udpPort", self.lists()[0].args)
        self.assertFalse(registry.push_working)

    def test_close_stops_listening(self) -> None:
        registry = self.registry()
        self.successResultOf(registry.lookup("arith"))
        self.successResultOf(registry.close())
        self.assertFalse(self.reactor.ports[0].listening)


class PushedWatchTests(RegistryPushTestCase):
    def test_a_push_is_acknowledged(self) -> None:
        registry = self.registry()
        self.watch(registry)
        self.push(stamp=777)
        [(ack, addr)] = self.reactor.ports[0].written
        self.assertEqual((json.loads(ack)["lastRefTime"], addr), (777, NACOS_ADDR))

    def test_a_push_makes_the_watch_see_the_change_at_once(self) -> None:
        registry = self.registry()
        seen = self.watch(registry)
        self.successResultOf(registry.register(svc(9001)))
        self.push()
        self.assertEqual(seen, [[], [9001]])
        self.assertEqual(len(self.lists()), 2)  # the watch's first list, and the pushed one

    def test_while_pushes_arrive_polls_are_a_slow_safety_net(self) -> None:
        registry = self.registry(refresh=1.0, push_refresh=10.0)
        self.watch(registry)
        self.clock.pump([1.0] * 9)
        self.assertEqual(len(self.lists()), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.lists()), 2)
        self.assertTrue(registry.push_working)

    def test_a_push_of_the_list_we_have_lists_nothing(self) -> None:
        registry = self.registry()
        self.successResultOf(registry.register(svc(9001)))
        seen = self.watch(registry)
        self.push()  # as Nacos does for a new subscriber
        self.assertEqual((seen, len(self.lists())), ([[9001]], 1))
        self.assertEqual(len(self.reactor.ports[0].written), 1)  # acknowledged

    def test_a_push_of_another_group_or_an_unwatched_service_lists_nothing(self) -> None:
        registry = self.registry()
        self.watch(registry)
        self.push("OTHER_GROUP@@arith")
        self.push("DEFAULT_GROUP@@elsewhere")
        self.assertEqual(len(self.lists()), 1)
        self.assertEqual(len(self.reactor.ports[0].written), 2)  # acknowledged all the same

    def test_a_forged_push_cannot_inject_instances(self) -> None:
        registry = self.registry()
        seen = self.watch(registry)
        port = self.reactor.ports[0]
        forged = push_packet("DEFAULT_GROUP@@arith",
                             hosts=[{"ip": "203.0.113.66", "port": 6666, "healthy": True}])
        port.protocol.datagramReceived(forged, ("203.0.113.66", 53))
        self.assertEqual(seen, [[]])  # listed again over HTTP: still nobody there

    def test_garbage_on_the_push_port_leaves_the_watch_working(self) -> None:
        registry = self.registry()
        seen = self.watch(registry)
        port = self.reactor.ports[0]
        for junk in (b"\x00" * 10, b"{", b'{"type":"dom","lastRefTime":1,"data":"{}"}'):
            port.protocol.datagramReceived(junk, ("203.0.113.9", 9))
        self.successResultOf(registry.register(svc(9001)))
        self.push()
        self.assertEqual(seen, [[], [9001]])
        self.assertEqual(port.protocol.rejected, 3)


class LostPushTests(RegistryPushTestCase):
    def test_a_change_found_only_by_polling_switches_to_the_short_poll(self) -> None:
        registry = self.registry(refresh=1.0, push_refresh=10.0)
        seen = self.watch(registry)
        self.successResultOf(registry.register(svc(9001)))  # its push is lost
        self.clock.pump([1.0] * 10)
        self.assertEqual(seen, [[], [9001]])  # found by the safety-net poll
        self.clock.advance(nacos.PUSH_GRACE)
        self.assertFalse(registry.push_working)
        lists = len(self.lists())
        self.clock.pump([1.0] * 3)
        self.assertEqual(len(self.lists()), lists + 3)

    def test_a_change_whose_push_follows_the_poll_is_not_blamed_on_push(self) -> None:
        registry = self.registry(refresh=1.0, push_refresh=10.0)
        seen = self.watch(registry)
        self.successResultOf(registry.register(svc(9001)))
        self.clock.pump([1.0] * 10)  # the poll is first this time...
        self.push()                  # ... and the push right behind it
        self.clock.advance(nacos.PUSH_GRACE)
        self.assertEqual(seen, [[], [9001]])
        self.assertTrue(registry.push_working)

    def test_a_push_after_a_fallback_restores_the_slow_poll(self) -> None:
        registry = self.registry(refresh=1.0, push_refresh=10.0)
        self.watch(registry)
        self.successResultOf(registry.register(svc(9001)))
        self.clock.pump([1.0] * 10 + [nacos.PUSH_GRACE])
        self.assertFalse(registry.push_working)
        self.push()
        self.assertTrue(registry.push_working)
        self.clock.advance(1.0)  # the poll already due at the short interval
        lists = len(self.lists())
        self.clock.pump([1.0] * 8)
        self.assertEqual(len(self.lists()), lists)


class PushOptionTests(unittest.TestCase):
    def test_push_port_values(self) -> None:
        self.assertEqual([parse_push_port(v) for v in ("0", "4567", "off", "none", "-1", None)],
                         [0, 4567, None, None, None, 0])
        self.assertRaises(usage.UsageError, parse_push_port, "udp")
        self.assertRaises(usage.UsageError, parse_push_port, "70000")

    def test_options_configure_push_ttl_and_budget(self) -> None:
        rows = {row[0]: row[2] for row in nacos.OPTIONS}
        rows.update({"nacos-push-port": "off", "nacos-push-refresh": "20",
                     "nacos-poll-budget": "5", "nacos-ttl": "9"})
        registry = nacos.from_options(UDPReactor(), rows)
        self.assertIsNone(registry.push)
        self.assertEqual((registry.push_refresh, registry._polls.budget, registry.ttl),
                         (20.0, 5.0, 9.0))

    def test_bad_ttl_or_budget_is_a_usage_error(self) -> None:
        rows = {row[0]: row[2] for row in nacos.OPTIONS}
        for key, value in (("nacos-ttl", "0.2"), ("nacos-poll-budget", "-1")):
            with self.subTest(key=key):
                self.assertRaises(usage.UsageError, nacos.from_options, UDPReactor(),
                                  {**rows, key: value})
