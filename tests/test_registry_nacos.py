"""
NacosRegistry against an in-memory Nacos (tests/nacos_fake.py) through StubTreq, on a Clock.
Deterministic: no network, no sleeps; time moves only by ``clock.advance``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from msrpc.errors import RegistryAuthError, RegistryError, RegistryUnavailable
from msrpc.registry import nacos
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistration, IRegistry, IServiceCatalog, IWatch
from msrpc.registry.nacos import NacosRegistry, from_options, nacos_message, read_password
from msrpc.registry.options import BACKENDS, backend_module
from tests.nacos_fake import FakeNacos, Network
from tests.servers.tls import make_pki

A, B, C = "10.0.0.1:8848", "10.0.0.2:8848", "10.0.0.3:8848"


def svc(port: int = 9001, **kw: Any) -> ServiceInstance:
    return ServiceInstance(service="arith", host="127.0.0.1", port=port, **kw)


class NacosTestCase(unittest.TestCase):
    """One fake Nacos at ``A`` (more servers when a test needs failover)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeNacos()
        self.net = Network({A: self.fake})

    def registry(self, servers: str = f"http://{A}", **kw: Any) -> NacosRegistry:
        kw.setdefault("api", "v1")
        registry = NacosRegistry(MemoryReactor(), servers, clock=self.clock, http=self.net,
                                 **kw)
        return registry

    def register(self, registry: NacosRegistry, instance: ServiceInstance) -> Any:
        return self.successResultOf(registry.register(instance))

    def beats(self) -> list:
        return self.fake.seen("/v1/ns/instance/beat", "PUT")

    def registers(self) -> list:
        return self.fake.seen("/v1/ns/instance", "POST")


class InterfaceTests(NacosTestCase):
    def test_registry_registration_and_watch_provide_their_interfaces(self) -> None:
        registry = self.registry()
        self.assertTrue(verifyObject(IRegistry, registry))
        self.assertTrue(verifyObject(IRegistration, self.register(registry, svc())))
        self.assertTrue(verifyObject(IWatch, registry.watch("arith", lambda _: None)))

    def test_backend_is_selectable_by_name(self) -> None:
        self.assertEqual(BACKENDS["nacos"], "msrpc.registry.nacos")
        self.assertIs(backend_module("nacos"), nacos)
        names = [row[0] for row in nacos.OPTIONS]
        self.assertEqual(names, ["nacos", "nacos-namespace", "nacos-group", "nacos-cluster",
                                 "nacos-clusters", "nacos-api", "nacos-user", "nacos-password-file", "nacos-ca", "nacos-cert",
                                 "nacos-key", "nacos-timeout", "nacos-refresh",
                                 "nacos-push-port", "nacos-push-host", "nacos-push-refresh",
                                 "nacos-poll-budget", "nacos-ttl"])


class RegisterTests(NacosTestCase):
    def test_register_sends_an_ephemeral_instance_with_weight_and_metadata(self) -> None:
        self.register(self.registry(ttl=0), svc(weight=3, metadata={"zone": "z1"}))
        [seen] = self.registers()
        self.assertEqual(seen.args["serviceName"], "arith")
        self.assertEqual((seen.args["ip"], seen.args["port"]), ("127.0.0.1", "9001"))
        self.assertEqual(float(seen.args["weight"]), 3.0)
        self.assertEqual(json.loads(seen.args["metadata"]), {"zone": "z1"})
        self.assertEqual(seen.args["ephemeral"], "true")
        self.assertEqual(seen.args["enabled"], "true")

    def test_register_fills_namespace_group_cluster_from_the_registry(self) -> None:
        registration = self.register(
            self.registry(namespace="dev", group="g1", cluster="c1"), svc())
        [seen] = self.registers()
        self.assertEqual((seen.args["namespaceId"], seen.args["groupName"],
                          seen.args["clusterName"]), ("dev", "g1", "c1"))
        self.assertEqual((registration.instance.namespace, registration.instance.group,
                          registration.instance.cluster), ("dev", "g1", "c1"))

    def test_register_keeps_the_instance_own_namespace_group_cluster(self) -> None:
        self.register(self.registry(namespace="dev", group="g1", cluster="c1"),
                      svc(namespace="prod", group="g2", cluster="c2"))
        [seen] = self.registers()
        self.assertEqual((seen.args["namespaceId"], seen.args["groupName"],
                          seen.args["clusterName"]), ("prod", "g2", "c2"))

    def test_register_defaults_are_nacos_defaults(self) -> None:
        self.register(self.registry(), svc())
        [seen] = self.registers()
        self.assertEqual((seen.args["namespaceId"], seen.args["groupName"],
                          seen.args["clusterName"]), ("public", "DEFAULT_GROUP", "DEFAULT"))

    def test_register_rejected_by_nacos_fails_with_its_message(self) -> None:
        self.fake.fail_next("/v1/ns/instance", 500, "caused: instance format invalid: "
                            "The weights range from 0.0 to 10000.0;")
        failure = self.failureResultOf(self.registry().register(svc()), RegistryError)
        self.assertEqual(failure.value.status, 500)
        self.assertIn("The weights range from 0.0 to 10000.0", str(failure.value))
        self.assertNotIsInstance(failure.value, RegistryAuthError)


class LivenessTests(NacosTestCase):
    def test_instances_carry_a_6_s_heartbeat_timeout_by_default(self) -> None:
        self.register(self.registry(), svc(metadata={"zone": "z1"}))
        [seen] = self.registers()
        self.assertEqual(json.loads(seen.args["metadata"]), {
            "zone": "z1", "preserved.heart.beat.interval": "2000",
            "preserved.heart.beat.timeout": "6000", "preserved.ip.delete.timeout": "12000"})

    def test_ttl_sets_beat_interval_timeout_and_delete_timeout(self) -> None:
        self.register(self.registry(ttl=4.5), svc())
        [seen] = self.registers()
        self.assertEqual(json.loads(seen.args["metadata"]), {
            "preserved.heart.beat.interval": "1500", "preserved.heart.beat.timeout": "4500",
            "preserved.ip.delete.timeout": "9000"})

    def test_explicit_preserved_metadata_wins_over_the_ttl(self) -> None:
        self.register(self.registry(ttl=6), svc(metadata={
            "preserved.heart.beat.timeout": "20000"}))
        [seen] = self.registers()
        self.assertEqual(json.loads(seen.args["metadata"])["preserved.heart.beat.timeout"],
                         "20000")

    def test_ttl_zero_leaves_nacos_defaults(self) -> None:
        self.register(self.registry(ttl=0), svc(metadata={"zone": "z1"}))
        [seen] = self.registers()
        self.assertEqual(json.loads(seen.args["metadata"]), {"zone": "z1"})

    def test_first_beat_comes_after_a_third_of_the_ttl(self) -> None:
        self.register(self.registry(ttl=6), svc())
        self.clock.advance(1.9)
        self.assertEqual(self.beats(), [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.beats()), 1)
        self.clock.advance(2.0)  # the fake answers with the instance's interval, as Nacos does
        self.assertEqual(len(self.beats()), 2)

    def test_ttl_below_one_second_is_refused(self) -> None:
        self.assertRaises(ValueError, self.registry, ttl=0.5)


class BeatTests(NacosTestCase):
    def test_first_beat_comes_after_the_default_interval(self) -> None:
        self.register(self.registry(ttl=0), svc())
        self.clock.advance(4.9)
        self.assertEqual(self.beats(), [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.beats()), 1)

    def test_beats_follow_the_interval_nacos_returns(self) -> None:
        self.fake.beat_interval_ms = 1000
        self.register(self.registry(ttl=0), svc())
        self.clock.advance(5)
        self.clock.pump([1.0] * 3)
        self.assertEqual(len(self.beats()), 4)

    def test_first_beat_follows_the_instance_preserved_beat_interval(self) -> None:
        self.register(self.registry(), svc(metadata={"preserved.heart.beat.interval": "1000"}))
        self.clock.advance(0.9)
        self.assertEqual(self.beats(), [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.beats()), 1)

    def test_unusable_preserved_beat_interval_means_the_default(self) -> None:
        self.register(self.registry(), svc(metadata={"preserved.heart.beat.interval": "soon"}))
        self.clock.advance(4.9)
        self.assertEqual(self.beats(), [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.beats()), 1)

    def test_beats_are_light_and_name_the_instance(self) -> None:
        self.register(self.registry(group="g1", cluster="c1"), svc())
        self.clock.advance(5)
        [beat] = self.beats()
        self.assertNotIn("beat", beat.args)
        self.assertEqual((beat.args["serviceName"], beat.args["groupName"],
                          beat.args["clusterName"], beat.args["ip"], beat.args["port"]),
                         ("arith", "g1", "c1", "127.0.0.1", "9001"))

    def test_instance_nacos_forgot_is_registered_again(self) -> None:
        self.register(self.registry(ttl=0), svc(weight=2, metadata={"k": "v"}))
        self.fake.forget()
        self.clock.advance(5)
        self.assertEqual(len(self.registers()), 2)
        [(key, host)] = self.fake.instances.items()
        self.assertEqual((host["weight"], host["metadata"]), (2.0, {"k": "v"}))

    def test_known_instance_is_not_registered_again(self) -> None:
        self.register(self.registry(), svc())
        self.clock.pump([5.0] * 3)
        self.assertEqual(len(self.registers()), 1)

    def test_beats_keep_trying_while_nacos_is_unreachable(self) -> None:
        self.register(self.registry(), svc())
        self.net.down.add(A)
        self.clock.pump([5.0] * 3)
        self.assertEqual(self.net.tried.count(A), 4)  # the registration and three beats
        self.net.down.clear()
        self.fake.forget()  # it restarted meanwhile
        self.clock.advance(5)
        self.assertEqual(len(self.registers()), 2)
        self.assertEqual(len(self.fake.instances), 1)

    def test_deregister_stops_beats_and_deletes_the_instance(self) -> None:
        registration = self.register(self.registry(), svc())
        self.successResultOf(registration.deregister())
        self.assertEqual(self.fake.instances, {})
        [delete] = self.fake.seen("/v1/ns/instance", "DELETE")
        self.assertEqual((delete.args["ip"], delete.args["port"]), ("127.0.0.1", "9001"))
        self.clock.pump([5.0] * 3)
        self.assertEqual(self.beats(), [])

    def test_deregister_twice_deletes_once(self) -> None:
        registration = self.register(self.registry(), svc())
        self.successResultOf(registration.deregister())
        self.successResultOf(registration.deregister())
        self.assertEqual(len(self.fake.seen("/v1/ns/instance", "DELETE")), 1)

    def test_beat_answered_after_deregistration_does_not_register_again(self) -> None:
        registration = self.register(self.registry(), svc())
        self.fake.hold_beats = True
        self.clock.advance(5)  # a beat is now in flight
        self.successResultOf(registration.deregister())
        self.fake.release_beats()  # ... and answers "unknown instance"
        self.net.flush()
        self.assertEqual(len(self.registers()), 1)
        self.assertEqual(self.fake.instances, {})


class LookupTests(NacosTestCase):
    def test_lookup_maps_nacos_hosts_to_service_instances(self) -> None:
        registry = self.registry(namespace="dev", group="g1", ttl=0)
        self.register(registry, svc(weight=2.5, metadata={"zone": "z1"}, cluster="c1"))
        [found] = self.successResultOf(registry.lookup("arith"))
        self.assertEqual(found, ServiceInstance(
            service="arith", host="127.0.0.1", port=9001, weight=2.5,
            metadata={"zone": "z1"}, instance_id="127.0.0.1#9001#c1#g1@@arith",
            namespace="dev", group="g1", cluster="c1", enabled=True, healthy=True))

    def test_lookup_asks_nacos_for_healthy_instances_of_the_registry_group(self) -> None:
        self.successResultOf(self.registry(namespace="dev", group="g1").lookup("arith"))
        [seen] = self.fake.seen("/v1/ns/instance/list")
        self.assertEqual((seen.args["serviceName"], seen.args["groupName"],
                          seen.args["namespaceId"], seen.args["healthyOnly"]),
                         ("arith", "g1", "dev", "true"))
        self.assertNotIn("clusters", seen.args)

    def test_lookup_can_ask_for_some_clusters_only(self) -> None:
        registry = self.registry()
        self.register(registry, svc(9001, cluster="a"))
        self.register(registry, svc(9002, cluster="b"))
        self.register(registry, svc(9003, cluster="c"))
        found = self.successResultOf(registry.lookup("arith", clusters=["a", "b"]))
        self.assertEqual(sorted(i.port for i in found), [9001, 9002])
        self.assertEqual(self.fake.seen("/v1/ns/instance/list")[-1].args["clusters"], "a,b")

    def test_lookup_never_returns_unhealthy_or_disabled_instances(self) -> None:
        self.fake.extra_hosts = [
            {"ip": "127.0.0.1", "port": 9002, "weight": 1.0, "healthy": False,
             "enabled": True, "clusterName": "DEFAULT", "metadata": {}},
            {"ip": "127.0.0.1", "port": 9003, "weight": 1.0, "healthy": True,
             "enabled": False, "clusterName": "DEFAULT", "metadata": {}},
        ]
        registry = self.registry()
        self.register(registry, svc(9001))
        found = self.successResultOf(registry.lookup("arith"))
        self.assertEqual([i.port for i in found], [9001])

    def test_weight_zero_instance_is_listed_but_not_selectable(self) -> None:
        registry = self.registry()
        self.register(registry, svc(9001, weight=0))
        [found] = self.successResultOf(registry.lookup("arith"))
        self.assertEqual(found.weight, 0.0)
        self.assertFalse(found.selectable)

    def test_lookup_skips_a_malformed_host(self) -> None:
        self.fake.extra_hosts = [{"ip": "127.0.0.1", "port": "not-a-port"}]
        registry = self.registry()
        self.register(registry, svc(9001))
        self.assertEqual([i.port for i in self.successResultOf(registry.lookup("arith"))],
                         [9001])

    def test_metadata_values_become_strings(self) -> None:
        self.fake.extra_hosts = [{"ip": "127.0.0.1", "port": 9002, "metadata": {"n": 1}}]
        [found] = self.successResultOf(self.registry().lookup("arith"))
        self.assertEqual(found.metadata, {"n": "1"})

    def test_lookup_of_unknown_service_is_empty(self) -> None:
        self.assertEqual(self.successResultOf(self.registry().lookup("nobody")), [])


class CatalogTests(NacosTestCase):
    def test_services_lists_every_page_of_our_group(self) -> None:
        registry = self.registry(group="g1")
        for i in range(3):
            self.register(registry, ServiceInstance(f"svc{i}", "127.0.0.1", 9001))
        self.register(self.registry(group="other"),
                      ServiceInstance("elsewhere", "127.0.0.1", 9001))
        self.assertEqual(self.successResultOf(registry.services()), ["svc0", "svc1", "svc2"])
        self.assertTrue(verifyObject(IServiceCatalog, registry))


class WatchTests(NacosTestCase):
    def watch(self, registry: NacosRegistry) -> list[list[int]]:
        seen: list[list[int]] = []
        registry.watch("arith", lambda instances: seen.append(sorted(i.port for i in instances)))
        return seen

    def test_watch_reports_the_current_list_at_once(self) -> None:
        registry = self.registry()
        self.register(registry, svc(9001))
        self.assertEqual(self.watch(registry), [[9001]])

    def test_watch_sees_an_added_and_a_removed_instance_within_one_refresh(self) -> None:
        registry = self.registry(refresh=1.5)
        seen = self.watch(registry)
        second = self.register(registry, svc(9002))
        self.clock.advance(1.5)
        self.successResultOf(second.deregister())
        self.clock.advance(1.5)
        self.assertEqual(seen, [[], [9002], []])

    def test_watch_is_quiet_when_nothing_changed(self) -> None:
        registry = self.registry(refresh=1)
        self.register(registry, svc(9001))
        seen = self.watch(registry)
        self.clock.pump([1.0] * 5)  # lastRefTime differs on every answer
        self.assertEqual(seen, [[9001]])

    def test_watch_keeps_the_last_list_while_nacos_is_unreachable(self) -> None:
        registry = self.registry(refresh=1)
        self.register(registry, svc(9001))
        seen = self.watch(registry)
        self.net.down.add(A)
        self.clock.pump([1.0] * 3)
        self.assertEqual(seen, [[9001]])

    def test_a_watch_right_after_a_lookup_starts_from_its_list(self) -> None:
        registry = self.registry(refresh=1)
        self.register(registry, svc(9001))
        self.successResultOf(registry.lookup("arith"))
        lists = len(self.fake.seen("/v1/ns/instance/list"))
        self.assertEqual(self.watch(registry), [[9001]])
        self.assertEqual(len(self.fake.seen("/v1/ns/instance/list")), lists)

    def test_stopped_watch_polls_no_more(self) -> None:
        registry = self.registry(refresh=1)
        watch = registry.watch("arith", lambda _: None)
        watch.stop()
        before = len(self.fake.requests)
        self.clock.pump([1.0] * 3)
        self.assertEqual(len(self.fake.requests), before)


class ConcurrencyTests(NacosTestCase):
    def test_at_most_sixteen_requests_are_on_the_wire(self) -> None:
        registry = self.registry(timeout=2.0)
        self.net.hung.add(A)
        lookups = [registry.lookup(f"s{i}") for i in range(40)]
        self.assertEqual(len(self.net.tried), 16)
        self.clock.advance(2.0)  # the first sixteen time out; the next sixteen go out
        self.assertEqual(len(self.net.tried), 32)
        for d in lookups:
            d.addErrback(lambda f: None)


class CloseTests(NacosTestCase):
    def test_close_deregisters_everything_and_stops_beats_and_watches(self) -> None:
        registry = self.registry(refresh=1)
        first = self.register(registry, svc(9001))
        self.register(registry, svc(9002))
        registry.watch("arith", lambda _: None)
        self.successResultOf(registry.close())
        self.assertEqual(self.fake.instances, {})
        self.assertFalse(first.active)
        before = len(self.fake.requests)
        self.clock.pump([5.0] * 3)
        self.assertEqual(len(self.fake.requests), before)

    def test_close_cancels_a_request_still_in_flight(self) -> None:
        registry = self.registry()
        self.register(registry, svc(9001))
        self.fake.hold_beats = True
        self.clock.advance(5)  # a beat is now in flight, and stays so
        self.successResultOf(registry.close())
        self.assertEqual(registry._in_flight, set())
        self.assertEqual(self.fake.instances, {})

    def test_close_succeeds_when_nacos_is_unreachable(self) -> None:
        registry = self.registry()
        self.register(registry, svc(9001))
        self.net.down.add(A)
        self.assertIsNone(self.successResultOf(registry.close()))


class AuthTests(NacosTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.users = {"nacos": "s3cret"}
        self.fake.token_ttl = 100

    def logins(self) -> list:
        return self.fake.seen("/v1/auth/login", "POST")

    def test_login_token_travels_as_bearer_header_on_every_request(self) -> None:
        registry = self.registry(username="nacos", password="s3cret")
        self.register(registry, svc())
        self.successResultOf(registry.lookup("arith"))
        self.clock.advance(5)
        [token] = self.fake.tokens
        others = [r for r in self.fake.requests if r.path != "/v1/auth/login"]
        self.assertEqual(len(others), 3)
        self.assertEqual({r.headers.get("authorization") for r in others}, {f"Bearer {token}"})
        self.assertEqual(len(self.logins()), 1)

    def test_password_is_sent_in_the_form_body_not_the_url(self) -> None:
        self.successResultOf(self.registry(username="nacos", password="s3cret").lookup("x"))
        [login] = self.logins()
        self.assertEqual(login.args["password"], "s3cret")
        self.assertEqual([r for r in self.fake.requests if "s3cret" in r.uri], [])

    def test_token_is_renewed_before_its_ttl_ends(self) -> None:
        registry = self.registry(username="nacos", password="s3cret")
        self.successResultOf(registry.lookup("arith"))
        self.clock.advance(89)
        self.successResultOf(registry.lookup("arith"))
        self.assertEqual(len(self.logins()), 1)
        self.clock.advance(2)  # 91 s: within the last tenth of the 100 s lifetime
        self.successResultOf(registry.lookup("arith"))
        self.assertEqual(len(self.logins()), 2)

    def test_token_is_renewed_after_a_403(self) -> None:
        registry = self.registry(username="nacos", password="s3cret")
        self.successResultOf(registry.lookup("arith"))
        self.fake.revoke_tokens()  # e.g. the server restarted with another secret
        self.assertEqual(self.successResultOf(registry.lookup("arith")), [])
        self.assertEqual(len(self.logins()), 2)

    def test_a_second_403_is_an_auth_error(self) -> None:
        registry = self.registry(username="nacos", password="s3cret")
        self.fake.fail_next("/v1/ns/instance/list", 403, "access denied")
        self.fake.fail_next("/v1/ns/instance/list", 403, "access denied")
        failure = self.failureResultOf(registry.lookup("arith"), RegistryAuthError)
        self.assertEqual(failure.value.status, 403)
        self.assertIn("access denied", str(failure.value))

    def test_wrong_password_is_an_auth_error_with_nacos_message(self) -> None:
        registry = self.registry(username="nacos", password="wrong")
        failure = self.failureResultOf(registry.register(svc()), RegistryAuthError)
        self.assertEqual(failure.value.status, 403)
        self.assertEqual(failure.value.details, "user not found!")
        self.assertEqual(self.registers(), [])

    def test_unknown_user_is_an_auth_error(self) -> None:
        failure = self.failureResultOf(
            self.registry(username="bob", password="x").lookup("arith"), RegistryAuthError)
        self.assertEqual(failure.value.status, 500)
        self.assertIn("User bob not found", str(failure.value))

    def test_missing_credentials_against_an_auth_server_is_an_auth_error(self) -> None:
        failure = self.failureResultOf(self.registry().lookup("arith"), RegistryAuthError)
        self.assertIn("user not found!", str(failure.value))

    def test_neither_password_nor_token_is_ever_logged(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        registry = self.registry(username="nacos", password="s3cret")
        self.register(registry, svc())
        self.fake.revoke_tokens()
        self.clock.advance(5)
        self.failureResultOf(self.registry(username="nacos", password="wrong-s3cret")
                             .lookup("arith"), RegistryAuthError)
        text = "\n".join(formatEvent(e) + repr(e) for e in events) + repr(registry)
        self.assertTrue(events)
        self.assertNotIn("s3cret", text)
        for token in self.fake.tokens:
            self.assertNotIn(token, text)

    def test_username_without_password_is_refused(self) -> None:
        self.assertRaises(ValueError, self.registry, username="nacos")


class FailoverTests(NacosTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake_b, self.fake_c = FakeNacos(), FakeNacos()
        self.net = Network({A: self.fake, B: self.fake_b, C: self.fake_c})

    def three(self, **kw: Any) -> NacosRegistry:
        return self.registry(f"http://{A},http://{B},http://{C}", **kw)

    def test_servers_are_tried_in_order_until_one_answers(self) -> None:
        self.net.down.update({A, B})
        self.successResultOf(self.three().lookup("arith"))
        self.assertEqual(self.net.tried, [A, B, C])

    def test_the_server_that_answered_is_asked_first_next_time(self) -> None:
        registry = self.three()
        self.net.down.add(A)
        self.successResultOf(registry.lookup("arith"))
        self.net.down.clear()
        self.net.tried.clear()
        self.successResultOf(registry.lookup("arith"))
        self.assertEqual(self.net.tried, [B])

    def test_no_server_answering_is_registry_unavailable(self) -> None:
        self.net.down.update({A, B, C})
        failure = self.failureResultOf(self.three().lookup("arith"), RegistryUnavailable)
        for server in (A, B, C):
            self.assertIn(server, str(failure.value))

    def test_a_503_answer_moves_on_to_the_next_server(self) -> None:
        self.fake.fail_next("/v1/ns/instance/list", 503,
                            "server is STARTING now, please try again later!")
        self.successResultOf(self.three().lookup("arith"))
        self.assertEqual(self.net.tried, [A, B])

    def test_a_hung_server_times_out_and_the_next_one_answers(self) -> None:
        self.net.hung.add(A)
        d = self.three(timeout=2.0).lookup("arith")
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.net.tried, [A, B])

    def test_an_http_error_answer_does_not_fail_over(self) -> None:
        self.fake.fail_next("/v1/ns/instance/list", 400, "caused: Param 'x' is required.;")
        self.failureResultOf(self.three().lookup("arith"), RegistryError)
        self.assertEqual(self.net.tried, [A])

    def test_login_fails_over_too(self) -> None:
        self.fake_b.users = {"nacos": "pw"}
        self.net.down.add(A)
        self.successResultOf(self.three(username="nacos", password="pw").lookup("arith"))
        self.assertEqual(len(self.fake_b.seen("/v1/auth/login")), 1)


class ErrorBodyTests(unittest.TestCase):
    def test_plain_text_body_is_the_message(self) -> None:
        self.assertEqual(nacos_message(b"caused: Param 'ip' is required.;\n"),
                         "caused: Param 'ip' is required.;")

    def test_spring_json_error_gives_its_message(self) -> None:
        body = json.dumps({"status": 403, "error": "Forbidden", "message": "token invalid!",
                           "path": "/nacos/v1/ns/instance/list"}).encode()
        self.assertEqual(nacos_message(body), "token invalid!")

    def test_v2_envelope_gives_message_and_data(self) -> None:
        body = json.dumps({"code": 10000, "message": "parameter missing",
                           "data": "Required parameter 'ip' type String is not present"})
        self.assertEqual(nacos_message(body.encode()), "parameter missing: Required "
                         "parameter 'ip' type String is not present")

    def test_error_for_a_403_is_an_auth_error_and_a_400_is_not(self) -> None:
        self.assertIsInstance(nacos.error_for(403, b"x", "w"), RegistryAuthError)
        error = nacos.error_for(400, b"bad", "w")
        self.assertNotIsInstance(error, RegistryAuthError)
        self.assertEqual((error.status, error.backend, error.details), (400, "nacos", "bad"))


class AddressTests(NacosTestCase):
    def test_bare_server_gets_http_and_the_nacos_context(self) -> None:
        self.assertEqual(self.registry(A).endpoints.urls, [f"http://{A}/nacos"])

    def test_server_with_a_path_keeps_it(self) -> None:
        self.assertEqual(self.registry(f"http://{A}/custom/").endpoints.urls,
                         [f"http://{A}/custom"])

    def test_requests_go_to_the_context_path(self) -> None:
        self.successResultOf(self.registry(f"http://{A}").lookup("arith"))
        self.assertEqual([r.path for r in self.fake.requests], ["/v1/ns/instance/list"])


def _write(tmp: str, name: str, data: bytes) -> str:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


class OptionsTests(unittest.TestCase):
    def options(self, **values: Any) -> dict[str, Any]:
        rows = {row[0]: row[2] for row in nacos.OPTIONS}
        rows.update({k.replace("_", "-"): v for k, v in values.items()})
        return rows

    def test_defaults_point_at_a_local_nacos(self) -> None:
        registry = from_options(MemoryReactor(), self.options())
        self.assertEqual(registry.endpoints.urls, ["http://127.0.0.1:8848/nacos"])
        self.assertEqual((registry.namespace, registry.group, registry.cluster),
                         ("public", "DEFAULT_GROUP", "DEFAULT"))
        self.assertEqual((registry.timeout, registry.refresh), (5.0, 2.0))
        self.assertIsNone(registry.username)

    def test_options_configure_servers_namespace_group_cluster_and_timing(self) -> None:
        registry = from_options(MemoryReactor(), self.options(
            nacos="h1:8848, http://h2:8848", nacos_namespace="dev", nacos_group="g",
            nacos_cluster="c", nacos_timeout="1.5", nacos_refresh="1"))
        self.assertEqual(registry.endpoints.urls, ["http://h1:8848/nacos",
                                                   "http://h2:8848/nacos"])
        self.assertEqual((registry.namespace, registry.group, registry.cluster,
                          registry.timeout, registry.refresh), ("dev", "g", "c", 1.5, 1.0))

    def test_password_comes_from_a_file_without_its_newline(self) -> None:
        path = _write(self.mktemp_dir(), "pw", b"s3cret\n")
        self.assertEqual(read_password(path, {}), "s3cret")

    def test_password_comes_from_the_environment_without_a_file(self) -> None:
        self.assertEqual(read_password("", {"MSRPC_NACOS_PASSWORD": "envpw"}), "envpw")

    def test_unreadable_password_file_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, read_password, "/nonexistent/pw", {})

    def test_user_without_any_password_is_a_usage_error(self) -> None:
        self.patch(os, "environ", {})
        self.assertRaises(usage.UsageError, from_options, MemoryReactor(),
                          self.options(nacos_user="nacos"))

    def test_user_and_password_file_make_an_authenticating_registry(self) -> None:
        path = _write(self.mktemp_dir(), "pw", b"s3cret\n")
        registry = from_options(MemoryReactor(), self.options(
            nacos_user="nacos", nacos_password_file=path))
        self.assertEqual(registry.username, "nacos")
        self.assertNotIn("s3cret", repr(registry))

    def test_tls_options_make_https_the_default_scheme(self) -> None:
        ca = str(make_pki(Path(self.mktemp_dir())).ca)
        registry = from_options(MemoryReactor(), self.options(nacos="h1:8848", nacos_ca=ca))
        self.assertEqual(registry.endpoints.urls, ["https://h1:8848/nacos"])

    def mktemp_dir(self) -> str:
        """A fresh directory outside the source tree (pytest runs in the repo root)."""
        path = tempfile.mkdtemp(prefix="msrpc-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path
