"""
NacosRegistry's v3 dialect and its API detection, against the in-memory Nacos of
tests/nacos_fake.py (``apis={"v3"}``: a Nacos 3.x with its v1 client API off) on a Clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.trial import unittest

from msrpc.errors import RegistryAuthError, RegistryError
from msrpc.registry import nacos
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.nacos import NacosRegistry
from msrpc.registry.nacos_api import V1, V3, dialect_from_probe
from tests.nacos_fake import FakeNacos, Network

A, B = "10.0.0.1:8848", "10.0.0.2:8848"


def svc(port: int = 9001, **kw: Any) -> ServiceInstance:
    return ServiceInstance(service="arith", host="127.0.0.1", port=port, **kw)


class V3TestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeNacos(apis={"v3"})
        self.net = Network({A: self.fake})

    def registry(self, servers: str = f"http://{A}", **kw: Any) -> NacosRegistry:
        kw.setdefault("ttl", 0)
        return NacosRegistry(MemoryReactor(), servers, clock=self.clock, http=self.net, **kw)

    def register(self, registry: NacosRegistry, instance: ServiceInstance) -> Any:
        return self.successResultOf(registry.register(instance))

    def seen(self, method: str, path: str = "/v3/client/ns/instance") -> list:
        return self.fake.seen(path, method)


class DetectionTests(V3TestCase):
    def test_auto_probes_once_and_speaks_v3_to_a_nacos_3(self) -> None:
        registry = self.registry()
        self.successResultOf(registry.lookup("arith"))
        self.successResultOf(registry.lookup("arith"))
        paths = [r.path for r in self.fake.requests]
        self.assertEqual(paths, ["/v3/client/ns/instance/list"] * 3)  # the probe, two lookups
        self.assertEqual(self.fake.requests[0].args["serviceName"], "msrpc-api-probe")
        self.assertIs(registry._dialects[f"http://{A}/nacos"], V3)

    def test_auto_speaks_v1_to_a_nacos_2(self) -> None:
        self.fake.apis = {"v1"}
        registry = self.registry()
        self.successResultOf(registry.lookup("arith"))
        self.assertEqual([r.path for r in self.fake.requests],
                         ["/v3/client/ns/instance/list", "/v1/ns/instance/list"])

    def test_each_server_is_probed_for_itself(self) -> None:
        old = FakeNacos(apis={"v1"})
        self.net = Network({A: self.fake, B: old})
        registry = self.registry(f"http://{A},http://{B}")
        self.successResultOf(registry.lookup("arith"))
        self.net.down.add(A)
        self.successResultOf(registry.lookup("arith"))
        self.assertEqual([r.path for r in old.requests],
                         ["/v3/client/ns/instance/list", "/v1/ns/instance/list"])

    def test_a_server_that_drops_v1_is_probed_again_and_answered_in_v3(self) -> None:
        self.fake.apis = {"v1"}
        registry = self.registry()
        self.successResultOf(registry.lookup("arith"))
        self.fake.apis = {"v3"}  # upgraded in place (its v1 paths now answer 410)
        self.register(registry, svc(9001))
        self.assertEqual([i.port for i in self.successResultOf(registry.lookup("arith"))],
                         [9001])
        self.assertEqual(len(self.fake.seen("/v1/ns/instance", "POST")), 1)  # the 410
        self.assertEqual(len(self.seen("POST")), 1)

    def test_a_probe_with_auth_on_sees_v3_from_its_403(self) -> None:
        self.fake.users = {"nacos": "pw"}
        registry = self.registry(username="nacos", password="pw")
        self.successResultOf(registry.lookup("arith"))
        self.assertIs(registry._dialects[f"http://{A}/nacos"], V3)
        self.assertEqual([r.path for r in self.fake.requests][:2],
                         ["/v3/client/ns/instance/list", "/v3/auth/user/login"])

    def test_an_answer_that_names_no_api_is_an_error_and_not_remembered(self) -> None:
        self.fake.fail_next("/v3/client/ns/instance/list", 500, "boom")
        registry = self.registry()
        failure = self.failureResultOf(registry.lookup("arith"), RegistryError)
        self.assertIn("cannot tell which HTTP API", str(failure.value))
        self.successResultOf(registry.lookup("arith"))

    def test_forced_v1_on_a_nacos_without_it_is_a_clear_error(self) -> None:
        failure = self.failureResultOf(self.registry(api="v1").lookup("arith"), RegistryError)
        self.assertEqual(failure.value.status, 410)
        self.assertIn("does not serve this in its v1 HTTP API", str(failure.value))
        self.assertIn("Current API will be deprecated", str(failure.value))
        self.assertNotIn('"code"', str(failure.value))
        self.assertIn("--nacos-api auto", str(failure.value))

    def test_forced_v3_never_probes(self) -> None:
        self.successResultOf(self.registry(api="v3").lookup("arith"))
        self.assertEqual(len(self.fake.requests), 1)

    def test_probe_answers(self) -> None:
        envelope = json.dumps({"code": 0, "message": "success", "data": []}).encode()
        self.assertIs(dialect_from_probe(200, envelope), V3)
        self.assertIs(dialect_from_probe(403, b"{}"), V3)
        self.assertIs(dialect_from_probe(404, b""), V1)
        self.assertIs(dialect_from_probe(410, b""), V1)
        self.assertIsNone(dialect_from_probe(200, b"<html>"))
        self.assertIsNone(dialect_from_probe(500, b""))

    def test_unknown_api_name_is_refused(self) -> None:
        self.assertRaises(ValueError, self.registry, api="v2")
        rows = {row[0]: row[2] for row in nacos.OPTIONS}
        self.assertRaises(usage.UsageError, nacos.from_options, MemoryReactor(),
                          {**rows, "nacos-api": "v9"})


class RegisterAndBeatTests(V3TestCase):
    def test_register_posts_service_and_group_apart(self) -> None:
        self.register(self.registry(api="v3", group="g1", cluster="c1"),
                      svc(weight=3, metadata={"zone": "z1"}))
        [seen] = self.seen("POST")
        self.assertEqual((seen.args["serviceName"], seen.args["groupName"],
                          seen.args["clusterName"], seen.args["ephemeral"]),
                         ("arith", "g1", "c1", "true"))
        self.assertEqual((float(seen.args["weight"]), json.loads(seen.args["metadata"])),
                         (3.0, {"zone": "z1"}))
        self.assertNotIn("heartBeat", seen.args)

    def test_heartbeat_is_the_post_with_heartbeat_true(self) -> None:
        self.register(self.registry(api="v3"), svc())
        self.clock.advance(5)
        beats = [r for r in self.seen("POST") if r.args.get("heartBeat") == "true"]
        self.assertEqual(len(beats), 1)
        self.assertEqual((beats[0].args["ip"], beats[0].args["port"]), ("127.0.0.1", "9001"))

    def test_beats_follow_the_ttl_since_v3_does_not_say_an_interval(self) -> None:
        self.register(self.registry(api="v3", ttl=6), svc())
        self.clock.pump([1.0] * 6)
        beats = [r for r in self.seen("POST") if r.args.get("heartBeat") == "true"]
        self.assertEqual(len(beats), 3)

    def test_code_21003_registers_again_with_full_data(self) -> None:
        self.register(self.registry(api="v3"), svc(weight=2, metadata={"k": "v"}))
        self.fake.forget()
        self.clock.advance(5)
        registers = [r for r in self.seen("POST") if "heartBeat" not in r.args]
        self.assertEqual(len(registers), 2)
        [host] = self.fake.instances.values()
        self.assertEqual((host["weight"], host["metadata"]), (2.0, {"k": "v"}))

    def test_deregister_deletes(self) -> None:
        registration = self.register(self.registry(api="v3"), svc())
        self.successResultOf(registration.deregister())
        self.assertEqual(self.fake.instances, {})
        self.assertEqual(len(self.seen("DELETE")), 1)

    def test_an_envelope_error_is_a_registry_error_with_nacos_words(self) -> None:
        self.fake.fail_next("/v3/client/ns/instance", 400, json.dumps(
            {"code": 10000, "message": "parameter missing",
             "data": "Required parameter 'ip' type String is not present"}),
            "application/json")
        failure = self.failureResultOf(self.registry(api="v3").register(svc()), RegistryError)
        self.assertEqual(failure.value.status, 400)
        self.assertIn("parameter missing: Required parameter 'ip'", str(failure.value))

    def test_a_failure_code_at_http_200_is_an_error(self) -> None:
        self.fake.fail_next("/v3/client/ns/instance", 200, json.dumps(
            {"code": 30000, "message": "server error", "data": None}), "application/json")
        failure = self.failureResultOf(self.registry(api="v3").register(svc()), RegistryError)
        self.assertIn("server error (code 30000)", str(failure.value))


class LookupTests(V3TestCase):
    def test_lookup_filters_unhealthy_and_disabled_instances(self) -> None:
        self.fake.extra_hosts = [
            {"ip": "127.0.0.1", "port": 9002, "healthy": False, "enabled": True},
            {"ip": "127.0.0.1", "port": 9003, "healthy": True, "enabled": False},
        ]
        registry = self.registry(api="v3")
        self.register(registry, svc(9001))
        self.assertEqual([i.port for i in self.successResultOf(registry.lookup("arith"))],
                         [9001])

    def test_lookup_names_the_registry_cluster_since_v3_lists_no_other(self) -> None:
        registry = self.registry(api="v3", cluster="c1")
        self.register(registry, svc(9001))
        self.register(self.registry(api="v3", cluster="c2"), svc(9002))
        self.assertEqual([i.port for i in self.successResultOf(registry.lookup("arith"))],
                         [9001])
        self.assertEqual(self.seen("GET", "/v3/client/ns/instance/list")[-1]
                         .args["clusterName"], "c1")

    def test_configured_lookup_clusters_and_explicit_ones(self) -> None:
        registry = self.registry(api="v3", clusters=["c1", "c2"])
        self.register(self.registry(api="v3", cluster="c1"), svc(9001))
        self.register(self.registry(api="v3", cluster="c2"), svc(9002))
        self.register(self.registry(api="v3", cluster="c3"), svc(9003))
        self.assertEqual(sorted(i.port for i in self.successResultOf(registry.lookup("arith"))),
                         [9001, 9002])
        self.assertEqual([i.port for i in self.successResultOf(
            registry.lookup("arith", clusters=["c3"]))], [9003])

    def test_v3_lookups_never_subscribe_to_push(self) -> None:
        self.successResultOf(self.registry(api="v3", push_host="127.0.0.1").lookup("arith"))
        self.assertNotIn("udpPort", self.seen("GET", "/v3/client/ns/instance/list")[0].args)

    def test_watch_polls_at_the_refresh_interval(self) -> None:
        registry = self.registry(api="v3", refresh=2.0)
        seen: list[list[int]] = []
        registry.watch("arith", lambda i: seen.append([x.port for x in i]))
        self.register(registry, svc(9001))
        self.clock.advance(2.0)
        self.assertEqual(seen, [[], [9001]])
        self.assertIsNone(registry.push_working)


class ServicesTests(V3TestCase):
    def test_services_come_from_the_admin_api_with_a_token(self) -> None:
        self.fake.users = {"nacos": "pw"}
        registry = self.registry(api="v3", group="g1", username="nacos", password="pw")
        self.register(registry, ServiceInstance("b", "127.0.0.1", 1))
        self.register(registry, ServiceInstance("a", "127.0.0.1", 1))
        self.register(self.registry(api="v3", group="g10", username="nacos", password="pw"),
                      ServiceInstance("other", "127.0.0.1", 1))
        self.assertEqual(self.successResultOf(registry.services()), ["a", "b"])

    def test_services_without_an_admin_say_the_registry_cannot_list(self) -> None:
        failure = self.failureResultOf(self.registry().services(), RegistryError)
        self.assertNotIsInstance(failure.value, RegistryAuthError)
        self.assertIn("cannot list services for an anonymous client", str(failure.value))
        self.assertIn("name the services", str(failure.value))


class LoginTests(V3TestCase):
    def test_login_uses_the_v3_path(self) -> None:
        self.fake.users = {"nacos": "pw"}
        self.successResultOf(self.registry(api="v3", username="nacos",
                                           password="pw").lookup("arith"))
        self.assertEqual(len(self.fake.seen("/v3/auth/user/login", "POST")), 1)
        self.assertEqual(self.fake.seen("/v1/auth/login"), [])

    def test_login_with_v1_switched_off_is_not_tried_on_v1(self) -> None:
        self.fake.users = {"nacos": "pw"}
        self.successResultOf(self.registry(username="nacos", password="pw").lookup("arith"))
        self.assertEqual(self.fake.seen("/v1/auth/login"), [])

    def test_login_falls_back_to_v1_where_v3_login_is_missing(self) -> None:
        self.fake.apis = {"v1", "v3"}  # 3.0/3.1 with the v1 switch on
        self.fake.users = {"nacos": "pw"}
        self.fake.fail_next("/v3/auth/user/login", 404, json.dumps(
            {"status": 404, "error": "Not Found"}), "application/json")
        self.successResultOf(self.registry(api="v3", username="nacos",
                                           password="pw").lookup("arith"))
        self.assertEqual(len(self.fake.seen("/v1/auth/login", "POST")), 1)

    def test_wrong_password_is_an_auth_error_though_nacos_says_500(self) -> None:
        self.fake.users = {"nacos": "pw"}
        failure = self.failureResultOf(self.registry(
            api="v3", username="nacos", password="nope").lookup("arith"), RegistryAuthError)
        self.assertEqual(failure.value.status, 500)
        self.assertIn("check the user name and password", str(failure.value))

    def test_unknown_user_is_an_auth_error(self) -> None:
        self.fake.users = {"nacos": "pw"}
        failure = self.failureResultOf(self.registry(
            api="v3", username="bob", password="x").lookup("arith"), RegistryAuthError)
        self.assertEqual(failure.value.status, 403)
