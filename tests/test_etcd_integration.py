"""
The etcd registry against real etcd 3.4 and 3.5 (``scripts/install-etcd``), each test on its
own server on loopback free ports.  Skipped locally when etcd is not installed, failed under
CI.  Leases use a 2 s TTL so expiry-based behaviour is quick to observe.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any, Sequence

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from msrpc.errors import RegistryAuthError, RegistryUnavailable
from msrpc.registry.etcd import EtcdRegistry
from msrpc.registry.http import TLSFiles
from msrpc.registry.instance import ServiceInstance
from tests.servers import REPO_ROOT, free_port, wait_for
from tests.servers.etcd import EtcdServer, client_tls, post_json, start_cluster, start_etcd
from tests.servers.tls import make_pki
from tests.servers.process import LoggedProcess

TTL = 2.0
ARITH = ServiceInstance(service="arith", host="127.0.0.1", port=9112, weight=5,
                        metadata={"zone": "a"})
KEY = "/msrpc/services/arith/127.0.0.1:9112"

# A separate process that registers and then just lives until it is killed.
REGISTRANT = """
import sys
from twisted.internet import defer, task
from msrpc.registry.etcd import EtcdRegistry
from msrpc.registry.instance import ServiceInstance

def main(reactor, url, port, ttl):
    registry = EtcdRegistry(reactor, url, ttl=float(ttl))
    d = registry.register(ServiceInstance(service="victim", host="127.0.0.1", port=int(port)))
    d.addCallback(lambda _: print("REGISTERED-" + "OK", flush=True))
    d.addErrback(lambda f: (print(f.getTraceback(), flush=True), reactor.stop()))
    return defer.Deferred()

task.react(main, sys.argv[1:])
"""


def run(test: Any) -> Any:
    """Let an ``async def`` test method run under trial and pytest alike."""

    def wrapper(self: TestCase) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(test(self))

    wrapper.__name__ = test.__name__
    wrapper.__doc__ = test.__doc__
    return wrapper


class EtcdTestMixin:
    """What every integration test needs: a server, registries on it, waiting."""

    version = "3.5"
    timeout = 60  # trial's per-test limit

    async def start(self, **kwargs: Any) -> EtcdServer:
        return await start_etcd(self, self.version, **kwargs)  # type: ignore[arg-type]

    def registry(self, endpoints: str | Sequence[str], **kwargs: Any) -> EtcdRegistry:
        kwargs.setdefault("ttl", TTL)
        kwargs.setdefault("timeout", 2.0)
        registry = EtcdRegistry(reactor, endpoints, **kwargs)
        self.addCleanup(registry.close)  # type: ignore[attr-defined]
        return registry

    async def ports_of(self, registry: EtcdRegistry, service: str) -> list[int]:
        return [i.port for i in await registry.lookup(service)]

    def until(self, check: Any, timeout: float, what: str) -> "defer.Deferred[None]":
        return wait_for(reactor, check, timeout, what)

    async def until_ports(self, registry: EtcdRegistry, service: str, ports: list[int],
                          timeout: float, what: str) -> None:
        async def check() -> bool:
            return await self.ports_of(registry, service) == ports

        await self.until(check, timeout, what)


class RegistrationTestsMixin(EtcdTestMixin):
    @run
    async def test_registered_instance_is_found_by_lookup(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        await registry.register(ARITH)
        self.assertEqual(await registry.lookup("arith"), [ARITH])

    @run
    async def test_etcdctl_sees_the_instance_json_under_the_service_prefix(self) -> None:
        server = await self.start()
        await self.registry(server.url).register(ARITH)
        out = await server.etcdctl("get", "--prefix", "/msrpc/services/arith/")
        key, value = out.splitlines()[:2]
        self.assertEqual((key, ServiceInstance.from_json(value)), (KEY, ARITH))

    @run
    async def test_etcdctl_shows_the_key_on_a_lease_with_the_ttl(self) -> None:
        server = await self.start()
        registry = self.registry(server.url, ttl=7)
        await registry.register(ARITH)
        lease = registry._keepers[0].lease
        out = await server.etcdctl("lease", "timetolive", format(int(lease), "x"), "--keys",
                                   "--write-out=json")
        status = json.loads(out)
        self.assertEqual(status["granted-ttl"], 7)
        self.assertEqual([base64.b64decode(k) for k in status["keys"]], [KEY.encode()])

    @run
    async def test_deregister_removes_the_key_and_revokes_the_lease(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        registration = await registry.register(ARITH)
        lease = registry._keepers[0].lease
        await registration.deregister()
        self.assertEqual(await server.etcdctl("get", "--prefix", "/msrpc/"), "")
        out = await server.etcdctl("lease", "timetolive", format(int(lease), "x"),
                                   "--write-out=json")
        self.assertEqual(json.loads(out)["ttl"], -1)

    @run
    async def test_registration_comes_back_after_etcd_loses_its_data(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        await registry.register(ARITH)
        lease = registry._keepers[0].lease
        await server.kill()
        await server.restart(fresh=True)
        # etcd lost everything, our lease too.  (Not "the key is gone": the keepalive may
        # already have put it back by the time etcdctl looks, on a busy machine.)
        out = await server.etcdctl("lease", "timetolive", format(int(lease), "x"),
                                   "--write-out=json")
        self.assertEqual(json.loads(out)["ttl"], -1)
        await self.until_ports(registry, "arith", [9112], TTL * 3, "re-registration")
        self.assertNotEqual(registry._keepers[0].lease, lease)  # granted anew

    @run
    async def test_registration_survives_etcd_crash_and_restart(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        await registry.register(ARITH)
        await server.kill()
        await server.restart()
        self.assertEqual(await self.ports_of(registry, "arith"), [9112])
        # and it is still kept alive afterwards: longer than a TTL later it is there
        await self.until(lambda: registry._keepers[0]._outage.failing is False, TTL * 3,
                         "keepalive after restart")
        await _sleep(TTL * 1.5)
        self.assertEqual(await self.ports_of(registry, "arith"), [9112])

    @run
    async def test_plain_msgo_key_is_found(self) -> None:
        server = await self.start()
        await server.etcdctl("put", "legacy", "127.0.0.1:7001")
        registry = self.registry(server.url)
        instances = await registry.lookup("legacy")
        self.assertEqual([(i.host, i.port) for i in instances], [("127.0.0.1", 7001)])


    @run
    async def test_https_endpoint_with_client_certificate(self) -> None:
        server = await self.start(tls=True)
        registry = self.registry(server.url.replace("https://", ""), tls=client_tls(server.pki))
        await registry.register(ARITH)
        self.assertEqual(await registry.lookup("arith"), [ARITH])

    @run
    async def test_https_endpoint_with_an_unknown_ca_is_unavailable(self) -> None:
        server = await self.start(tls=True)
        (server.workdir / "other").mkdir()
        strangers = make_pki(server.workdir / "other")
        registry = self.registry(server.url, tls=TLSFiles(ca=str(strangers.ca)))
        with self.assertRaises(RegistryUnavailable):
            await registry.lookup("arith")


class WatchTestsMixin(EtcdTestMixin):
    @run
    async def test_watch_sees_an_instance_added_and_removed(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append([i.port for i in xs]))
        self.addCleanup(watch.stop)
        await self.until(lambda: seen == [[]], 5, "initial watch list")
        registration = await self.registry(server.url).register(ARITH)
        await self.until(lambda: seen[-1] == [9112], 5, "added instance")
        await registration.deregister()
        await self.until(lambda: seen[-1] == [], 5, "removed instance")
        self.assertEqual(seen, [[], [9112], []])

    @run
    async def test_watch_follows_a_msgo_plain_key_next_to_our_prefix(self) -> None:
        server = await self.start()
        await server.etcdctl("put", "arith", "127.0.0.1:7001")
        registry = self.registry(server.url)
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append(sorted(i.port for i in xs)))
        self.addCleanup(watch.stop)
        await self.until(lambda: seen == [[7001]], 5, "initial watch list")
        await server.etcdctl("put", "arith", "127.0.0.1:7002")
        await self.until(lambda: seen[-1] == [7002], 5, "changed plain key")
        await self.registry(server.url).register(ARITH)
        await self.until(lambda: seen[-1] == [7002, 9112], 5, "instance beside it")
        await server.etcdctl("del", "arith")
        await self.until(lambda: seen[-1] == [9112], 5, "deleted plain key")

    @run
    async def test_many_watched_services_share_one_stream(self) -> None:
        server = await self.start()
        writer, registry = self.registry(server.url), self.registry(server.url)
        names = [f"svc{i}" for i in range(40)]
        seen: dict[str, list[int]] = {}
        for name in names:
            watch = registry.watch(name, lambda xs, name=name: seen.__setitem__(
                name, [i.port for i in xs]))
            self.addCleanup(watch.stop)
        await self.until(lambda: len(seen) == len(names), 5, "every first list")
        changed = {name: 7000 + n for n, name in enumerate(names) if n % 7 == 0}
        for name, port in changed.items():
            await writer.register(ServiceInstance(name, "127.0.0.1", port))
        await self.until(lambda: all(seen[n] == [p] for n, p in changed.items()), 5,
                         "every change in its own watch")
        self.assertTrue(all(seen[n] == [] for n in names if n not in changed))
        self.assertLessEqual(registry.watch_streams, 3)  # not one per service

    @run
    async def test_watch_sees_an_expired_lease_as_removal(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        code, lease = await post_json(reactor, server.url + "/v3/lease/grant", {"TTL": 1})
        await server.etcdctl("put", "--lease=" + format(int(lease["ID"]), "x"), KEY,
                             ARITH.to_json())
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append([i.port for i in xs]))
        self.addCleanup(watch.stop)
        await self.until(lambda: seen == [[9112]], 5, "initial watch list")
        await self.until(lambda: seen[-1] == [], 4, "removal by lease expiry")

    @run
    async def test_watch_resumes_after_etcd_restart(self) -> None:
        server = await self.start()
        registry = self.registry(server.url)
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append([i.port for i in xs]))
        self.addCleanup(watch.stop)
        await self.until(lambda: seen == [[]], 5, "initial watch list")
        await server.stop()
        await server.restart()
        await server.etcdctl("put", KEY, ARITH.to_json())
        await self.until(lambda: seen[-1] == [9112], 15, "change after restart")


    @run
    async def test_watch_lists_again_when_it_missed_a_compaction(self) -> None:
        server = await self.start()
        registry = self.registry(server.url, backoff=lambda attempt: 1.5)
        messages: list[str] = []
        observer = lambda event: messages.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append([i.port for i in xs]))
        self.addCleanup(watch.stop)
        await self.until(lambda: seen == [[]], 5, "initial watch list")
        await server.stop()
        await server.restart()
        # While the watch waits to reconnect: a change, then a compaction past it.
        await server.etcdctl("put", KEY, ARITH.to_json())
        _, answer = await post_json(reactor, server.url + "/v3/kv/put",
                                    {"key": base64.b64encode(b"/other").decode()})
        await server.etcdctl("compaction", answer["header"]["revision"])
        await self.until(lambda: seen[-1] == [9112], 10, "list after compaction")
        self.assertTrue(any("compaction" in m for m in messages), messages)


class AuthTestsMixin(EtcdTestMixin):
    @run
    async def test_right_password_registers_looks_up_and_watches(self) -> None:
        server = await self.start()
        await server.enable_auth(user="msrpc", password="msrpc-pw")
        registry = self.registry(server.url, user="msrpc", password="msrpc-pw")
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append([i.port for i in xs]))
        self.addCleanup(watch.stop)
        await registry.register(ARITH)
        self.assertEqual(await registry.lookup("arith"), [ARITH])
        await self.until(lambda: seen and seen[-1] == [9112], 5, "watch under auth")

    @run
    async def test_wrong_password_is_a_clear_auth_error(self) -> None:
        server = await self.start()
        await server.enable_auth(user="msrpc", password="msrpc-pw")
        registry = self.registry(server.url, user="msrpc", password="not-it")
        with self.assertRaises(RegistryAuthError) as caught:
            await registry.register(ARITH)
        self.assertIn("invalid user ID or password", str(caught.exception))

    @run
    async def test_missing_credentials_is_an_auth_error(self) -> None:
        server = await self.start()
        await server.enable_auth()
        with self.assertRaises(RegistryAuthError):
            await self.registry(server.url).lookup("arith")


# --------------------------------------------------------------------------- per version


class Registration35Tests(RegistrationTestsMixin, TestCase):
    version = "3.5"


class Registration34Tests(RegistrationTestsMixin, TestCase):
    version = "3.4"


class Watch35Tests(WatchTestsMixin, TestCase):
    version = "3.5"


class Watch34Tests(WatchTestsMixin, TestCase):
    version = "3.4"


class Auth35Tests(AuthTestsMixin, TestCase):
    version = "3.5"


class Auth34Tests(AuthTestsMixin, TestCase):
    version = "3.4"


class ProcessDeathTests(EtcdTestMixin, TestCase):
    @run
    async def test_instance_of_a_killed_process_disappears_within_ttl(self) -> None:
        server = await self.start()
        log_path = server.workdir / "registrant.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        child = LoggedProcess(reactor, [sys.executable, "-c", REGISTRANT, server.url,
                                        str(free_port()), str(TTL)], log_path, env=env)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(child.kill()))
        registry = self.registry(server.url)
        await self.until(lambda: "REGISTERED-OK" in child.log_text(), 15,
                         "child registration")
        self.assertEqual(len(await registry.lookup("victim")), 1)
        await _sleep(TTL)  # it keeps itself alive past one TTL
        self.assertEqual(len(await registry.lookup("victim")), 1)
        await child.kill()
        killed_at = reactor.seconds()
        await self.until_ports(registry, "victim", [], TTL + 1.0, "expiry of the lease")
        self.assertLessEqual(reactor.seconds() - killed_at, TTL + 1.0)


class ClusterTests(EtcdTestMixin, TestCase):
    @run
    async def test_registration_and_lookups_survive_the_leader_being_killed(self) -> None:
        cluster = await start_cluster(self, "3.5")
        registry = self.registry(cluster.urls, timeout=1.0)
        await registry.register(ARITH)
        leader = await cluster.leader()
        await leader.kill()
        # A lookup is a linearizable read: during the election no member may answer it
        # (clients read their cache meanwhile); once the survivors elect a leader, every
        # lookup must work, and the registration must outlive a TTL through them.
        await cluster.wait_leader()
        # longer than one TTL: the lease must have been kept alive through the survivors
        deadline = reactor.seconds() + TTL * 2
        while reactor.seconds() < deadline:
            self.assertEqual(await self.ports_of(registry, "arith"), [9112])
            await _sleep(0.2)
        survivor = next(m for m in cluster.members if m.running)
        out = await survivor.etcdctl("get", "--prefix", "/msrpc/services/arith/")
        self.assertEqual(out.splitlines()[0], KEY)

    @run
    async def test_watch_keeps_working_when_its_member_is_stopped(self) -> None:
        cluster = await start_cluster(self, "3.5")
        registry = self.registry(cluster.urls, timeout=1.0)
        seen: list[list[int]] = []
        watch = registry.watch("arith", lambda xs: seen.append([i.port for i in xs]))
        self.addCleanup(watch.stop)
        await self.until(lambda: seen == [[]], 5, "initial watch list")
        await cluster.members[0].stop()     # the first endpoint, where the watch is
        other = self.registry(cluster.urls[1:])
        await other.register(ARITH)
        await self.until(lambda: seen[-1] == [9112], 10, "change seen after failover")


    @run
    async def test_killed_member_rejoins_with_its_data_after_restart(self) -> None:
        cluster = await start_cluster(self, "3.5")
        member = cluster.members[2]
        await member.kill()
        await cluster.wait_leader()
        await cluster.members[0].etcdctl("put", "/msrpc/while-away", "x")
        await member.restart()
        out = await member.etcdctl("get", "/msrpc/while-away", "--print-value-only")
        self.assertEqual(out.strip(), "x")


# --------------------------------------------------------------------------- helpers


def _sleep(seconds: float) -> "defer.Deferred[None]":
    return task.deferLater(reactor, seconds, lambda: None)
