"""
NacosRegistry against real Nacos servers (installed by scripts/install-nacos; skipped when
they are not, except under CI where that fails), in both HTTP dialects: Nacos 2.3.2 with the
v1 API and Nacos 3.1.0 with its v1 client API switched off (as 3.2+ have none), so msrpc's
auto-detection must pick v3.  Every test of ``Scenarios`` runs against both; push is v1's
only.  The tests share one server per configuration and process (tests/servers/nacos.py).
What Nacos itself holds is read from its HTTP API directly, never through the adapter under
test.

Nacos's list lags a change by about half a second (it is refreshed when Nacos pushes), so
every expectation about it is polled with ``wait_for`` rather than asserted at once.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import uuid
from typing import Any, Awaitable, Callable, Optional

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from msrpc.errors import RegistryAuthError, RegistryError
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistry
from msrpc.registry.nacos import DEFAULT_TTL, NacosRegistry, liveness_metadata
from tests.servers import REPO_ROOT, free_port, wait_for
from tests.servers.nacos import CONFIGS, SHORT_TIMEOUTS, NacosServer, require_nacos, \
    shared_nacos


def nacos_test(method: Callable[..., Awaitable[Any]]) -> Callable[..., defer.Deferred]:
    """An async test whose failure also prints the log tail of every Nacos it used."""

    @functools.wraps(method)
    def wrapper(self: "Scenarios") -> defer.Deferred:
        async def run() -> Any:
            try:
                return await method(self)
            except BaseException:
                for server in self.servers:
                    sys.stderr.write(f"\n--- {server!r} log ({server.log_path}):\n"
                                     f"{server.log_tail()}\n")
                raise

        return defer.Deferred.fromCoroutine(run())

    return wrapper


class Scenarios:
    """The tests every dialect passes; subclasses name the server configurations."""

    config = ""
    auth_config = ""
    timeout = 300

    def setUp(self) -> None:
        require_nacos(CONFIGS[self.config].version)
        self.servers: list[NacosServer] = []
        self.service = f"msrpc-it-{uuid.uuid4().hex[:10]}"

    async def server(self, auth: bool = False) -> NacosServer:
        server = await shared_nacos(reactor, config=self.auth_config if auth else self.config)
        self.servers.append(server)
        return server

    def registry(self, server: NacosServer, **kw: Any) -> NacosRegistry:
        kw.setdefault("refresh", 0.5)
        kw.setdefault("timeout", 5.0)
        registry = NacosRegistry(reactor, kw.pop("servers", server.url), **kw)
        self.addCleanup(registry.close)  # type: ignore[attr-defined]
        return registry

    def instance(self, port: Optional[int] = None, **kw: Any) -> ServiceInstance:
        return ServiceInstance(service=self.service, host="127.0.0.1",
                               port=port or free_port(), **kw)

    async def nacos_ports(self, server: NacosServer, **params: Any) -> set[int]:
        return {h["port"] for h in await server.instances(self.service, **params)}

    async def _listed(self, server: NacosServer, port: int) -> bool:
        return port in await self.nacos_ports(server)

    def until(self, check: Callable[[], Awaitable[bool]], what: str,
              timeout: float = 20.0) -> defer.Deferred[None]:
        return wait_for(reactor, lambda: defer.Deferred.fromCoroutine(check()), timeout,
                        what, interval=0.2)

    def watch(self, registry: NacosRegistry) -> list[set[int]]:
        seen: list[set[int]] = []
        registry.watch(self.service, lambda instances: seen.append({i.port for i in instances}))
        return seen

    # ------------------------------------------------------------------ dialect

    @nacos_test
    async def test_auto_detection_picks_the_api_the_server_has(self) -> None:
        server = await self.server()
        registry = self.registry(server)
        self.assertEqual(await registry.lookup(self.service), [])
        [dialect] = registry._dialects.values()
        self.assertEqual(dialect.name, CONFIGS[self.config].dialect)

    # ------------------------------------------------------------------ register / lookup

    @nacos_test
    async def test_registered_instance_is_looked_up_with_weight_metadata_group_cluster(
            self) -> None:
        server = await self.server()
        registry = self.registry(server, group="msrpc-g", cluster="c1")
        self.assertTrue(verifyObject(IRegistry, registry))
        mine = self.instance(weight=3, metadata={"zone": "z1", "version": "2"})
        await registry.register(mine)
        found: list[ServiceInstance] = []

        async def visible() -> bool:
            found[:] = await registry.lookup(self.service)
            return bool(found)

        await self.until(visible, "the instance in our lookup")
        [instance] = found
        self.assertEqual((instance.host, instance.port), (mine.host, mine.port))
        self.assertEqual(instance.weight, 3.0)
        self.assertEqual(instance.metadata, {"zone": "z1", "version": "2",
                                             **liveness_metadata(DEFAULT_TTL)})
        self.assertEqual((instance.namespace, instance.group, instance.cluster),
                         ("public", "msrpc-g", "c1"))
        self.assertTrue(instance.selectable)

    @nacos_test
    async def test_registered_instance_is_in_nacos_own_instance_list(self) -> None:
        server = await self.server()
        registry = self.registry(server, group="msrpc-g", cluster="c1")
        mine = self.instance(weight=4, metadata={"k": "v"})
        await registry.register(mine)
        where = {"groupName": "msrpc-g", "clusters": ["c1"]}

        async def listed() -> bool:
            return mine.port in await self.nacos_ports(server, **where)

        await self.until(listed, "the instance in Nacos's list")
        [host] = await server.instances(self.service, **where)
        self.assertEqual((host["ip"], host["weight"], host["metadata"], host["clusterName"],
                          host["ephemeral"], host["healthy"], host["enabled"]),
                         ("127.0.0.1", 4.0, {"k": "v", **liveness_metadata(DEFAULT_TTL)},
                          "c1", True, True, True))

    @nacos_test
    async def test_deregistered_instance_leaves_nacos(self) -> None:
        server = await self.server()
        registry = self.registry(server)
        registration = await registry.register(self.instance())
        await self.until(lambda: self._listed(server, registration.instance.port),
                         "the registered instance")
        await registration.deregister()

        async def gone() -> bool:
            return not await self.nacos_ports(server)

        await self.until(gone, "the deregistered instance to go")

    @nacos_test
    async def test_lookup_in_clusters_returns_only_those_clusters(self) -> None:
        server = await self.server()
        registry = self.registry(server)
        a = await registry.register(self.instance(cluster="a"))
        b = await registry.register(self.instance(cluster="b"))

        async def only_a() -> bool:
            found = await registry.lookup(self.service, clusters=["a"])
            return [i.port for i in found] == [a.instance.port]

        async def both() -> bool:
            found = await registry.lookup(self.service, clusters=["a", "b"])
            return sorted(i.port for i in found) == sorted([a.instance.port, b.instance.port])

        await self.until(only_a, "a lookup of cluster a")
        await self.until(both, "a lookup of clusters a and b")

    @nacos_test
    async def test_lookup_fails_over_from_a_dead_server_to_a_live_one(self) -> None:
        server = await self.server()
        dead = f"http://127.0.0.1:{free_port()}"
        registry = self.registry(server, servers=f"{dead},{server.url}")
        self.assertEqual(await registry.lookup(self.service), [])
        self.assertEqual(registry.endpoints.current, server.api)

    # ------------------------------------------------------------------ liveness

    @nacos_test
    async def test_beats_keep_the_instance_healthy_past_nacos_timeouts(self) -> None:
        server = await self.server()
        registry = self.registry(server, ttl=3.0)  # = SHORT_TIMEOUTS
        registration = await registry.register(self.instance())
        port = registration.instance.port
        await self.until(lambda: self._listed(server, port), "the registered instance")
        await _sleep(9.0)  # without beats: unhealthy by 8.5 s (3 s + a 5 s check period)
        [host] = await server.instances(self.service)
        self.assertEqual((host["port"], host["healthy"]), (port, True))

    @nacos_test
    async def test_killed_process_leaves_the_watch_within_its_ttl_then_nacos(self) -> None:
        server = await self.server()
        watcher = self.registry(server)
        seen = self.watch(watcher)
        port = free_port()
        child = await self._spawn_child(server, port, SHORT_TIMEOUTS)  # a 3 s TTL
        await self.until(lambda: _true(bool(seen) and seen[-1] == {port}),
                         "the child's instance in the watch")
        child.kill()
        killed_at = reactor.seconds()
        await self.until(lambda: _true(seen[-1] == set()), "the killed child out of the watch",
                         timeout=30)
        dropped = reactor.seconds() - killed_at
        # unhealthy at the first beat check (every 5 s, fixed in Nacos) after the 3 s TTL,
        # listed so 0.5 s later; the watch polls every 0.5 s here (pushes come sooner on v1)
        self.assertLess(dropped, 3.0 + 5.0 + 1.5, f"left the watch after {dropped:.1f} s")

        async def deleted() -> bool:
            return not await self._listed(server, port)

        await self.until(deleted, "Nacos to delete the dead child's instance", timeout=30)
        # 6 s delete timeout, checked every 5 s, plus the list's lag
        self.assertLess(reactor.seconds() - killed_at, 20)

    async def _spawn_child(self, server: NacosServer, port: int,
                           metadata: dict[str, str]) -> "_Child":
        child = _Child()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])))
        args = [sys.executable, "-m", "tests.nacos_child", server.url, self.service,
                str(port), json.dumps(metadata)]
        reactor.spawnProcess(child, sys.executable, args, env=env, path=str(REPO_ROOT))
        self.addCleanup(child.end)  # type: ignore[attr-defined]
        await wait_for(reactor, lambda: child.registered or child.exited, 30,
                       "the child to register")
        self.assertTrue(child.registered, f"child exited: {child.output!r}")
        return child

    @nacos_test
    async def test_nacos_restart_is_followed_by_registration_without_intervention(
            self) -> None:
        server = await self.server()
        registry = self.registry(server, ttl=3.0)
        registration = await registry.register(self.instance())
        port = registration.instance.port
        await self.until(lambda: self._listed(server, port), "the registered instance")
        await server.restart()  # ephemeral instances do not survive it
        await self.until(lambda: self._listed(server, port),
                         "the instance registered again after the restart", timeout=30)

    # ------------------------------------------------------------------ watch

    @nacos_test
    async def test_watch_sees_an_added_and_a_removed_instance(self) -> None:
        server = await self.server()
        registry = self.registry(server, refresh=0.5)
        first = await registry.register(self.instance())
        seen = self.watch(registry)
        await self.until(lambda: _true(bool(seen) and seen[-1] == {first.instance.port}),
                         "the first instance in the watch")
        second = await registry.register(self.instance())
        both = {first.instance.port, second.instance.port}
        await self.until(lambda: _true(seen[-1] == both), "the added instance in the watch")
        await second.deregister()
        await self.until(lambda: _true(seen[-1] == {first.instance.port}),
                         "the removed instance gone from the watch", timeout=5)

    # ------------------------------------------------------------------ auth

    @nacos_test
    async def test_right_password_registers_and_looks_up(self) -> None:
        server = await self.server(auth=True)
        registry = self.registry(server, username=server.username, password=server.password)
        registration = await registry.register(self.instance())

        async def found() -> bool:
            return [i.port for i in await registry.lookup(self.service)] == \
                [registration.instance.port]

        await self.until(found, "the instance through an authenticated lookup")

    @nacos_test
    async def test_wrong_password_is_a_clear_auth_error(self) -> None:
        server = await self.server(auth=True)
        registry = self.registry(server, username=server.username, password="wrong")
        with self.assertRaises(RegistryAuthError) as caught:
            await registry.register(self.instance())
        # 2.3.2: 403 "user not found!"; 3.1.0: a bare 500
        self.assertIn(caught.exception.status, (403, 500))
        self.assertIn("login to nacos as nacos", str(caught.exception))
        self.assertIn("check the user name and password", str(caught.exception))

    @nacos_test
    async def test_no_credentials_against_auth_nacos_is_an_auth_error(self) -> None:
        server = await self.server(auth=True)
        with self.assertRaises(RegistryAuthError) as caught:
            await self.registry(server).lookup(self.service)
        self.assertEqual(caught.exception.status, 403)


class NacosV1IntegrationTests(Scenarios, unittest.TestCase):
    """Nacos 2.3.2, v1 API, with UDP push."""

    config, auth_config = "2.3.2", "2.3.2-auth"

    @nacos_test
    async def test_watch_sees_changes_by_push_long_before_any_poll(self) -> None:
        server = await self.server()
        watcher = self.registry(server, refresh=60.0, push_refresh=60.0)
        writer = self.registry(server, push_port=None)
        seen: list[tuple[float, set[int]]] = []
        watcher.watch(self.service, lambda instances: seen.append(
            (reactor.seconds(), {i.port for i in instances})))
        await self.until(lambda: _true(bool(seen)), "the first list in the watch")
        assert watcher.push is not None
        registration = await writer.register(self.instance())
        port = registration.instance.port
        for change, wanted in (("registered", {port}), ("deregistered", set())):
            changed_at = reactor.seconds()
            await self.until(lambda: _true(seen[-1][1] == wanted),
                             f"the {change} instance pushed to the watch", timeout=30)
            # Nacos pushes 0.5 s after a change (nacos.naming.push.pushTaskDelay) and the
            # watcher lists the service at once (bench/ measures how fast: this machine
            # may be loaded); its polls, 60 s apart, cannot have found it
            self.assertLess(seen[-1][0] - changed_at, 30.0)
            if change == "registered":
                await registration.deregister()
        self.assertEqual((watcher.stats["changes.pushed"], watcher.stats["changes.polled"]),
                         (2, 0))
        self.assertTrue(watcher.push_working)
        self.assertGreaterEqual(watcher.push.receiver.received, 2)

    @nacos_test
    async def test_lost_pushes_fall_back_to_polling(self) -> None:
        server = await self.server()
        watcher = self.registry(server, refresh=0.5, push_refresh=4.0)
        writer = self.registry(server, push_port=None)
        seen = self.watch(watcher)
        await self.until(lambda: _true(bool(seen)), "the first list in the watch")
        assert watcher.push is not None
        watcher.push.receiver.drop = lambda datagram: True  # a firewall eats every push
        first = (await writer.register(self.instance())).instance.port
        await self.until(lambda: _true(seen[-1] == {first}),
                         "the first instance found by the safety-net poll", timeout=10)
        await self.until(lambda: _true(not watcher.push_working),
                         "the watcher to notice that pushes are lost", timeout=5)
        second = (await writer.register(self.instance())).instance.port
        registered_at = reactor.seconds()
        await self.until(lambda: _true(seen[-1] == {first, second}),
                         "the second instance found by the short poll", timeout=5)
        # the 0.5 s poll, plus Nacos's list lag of about 0.6 s
        self.assertLess(reactor.seconds() - registered_at, 2.5)
        self.assertEqual(watcher.push.receiver.received, 0)

    @nacos_test
    async def test_services_lists_the_services_of_our_group(self) -> None:
        server = await self.server()
        registry = self.registry(server, group=f"g-{self.service}")
        await registry.register(self.instance())
        self.assertEqual(await registry.services(), [self.service])


class NacosV3IntegrationTests(Scenarios, unittest.TestCase):
    """Nacos 3.1.0 with its v1 client API off (as 3.2+): the v3 dialect, polling."""

    config, auth_config = "3.1.0", "3.1.0-auth"

    @nacos_test
    async def test_forcing_v1_on_a_server_without_it_is_a_clear_error(self) -> None:
        server = await self.server()
        with self.assertRaises(RegistryError) as caught:
            await self.registry(server, api="v1").lookup(self.service)
        self.assertEqual(caught.exception.status, 410)
        self.assertIn("--nacos-api auto", str(caught.exception))

    @nacos_test
    async def test_services_come_from_the_admin_api_for_an_admin(self) -> None:
        server = await self.server(auth=True)
        registry = self.registry(server, group=f"g-{self.service}",
                                 username=server.username, password=server.password)
        await registry.register(self.instance())

        async def listed() -> bool:
            return await registry.services() == [self.service]

        await self.until(listed, "our service in the admin API's list")

    @nacos_test
    async def test_services_without_an_admin_say_this_registry_cannot_list(self) -> None:
        server = await self.server()
        with self.assertRaises(RegistryError) as caught:
            await self.registry(server).services()
        self.assertNotIsInstance(caught.exception, RegistryAuthError)
        self.assertIn("cannot list services", str(caught.exception))

    @nacos_test
    async def test_a_watch_polls_without_push(self) -> None:
        server = await self.server()
        registry = self.registry(server, refresh=0.5)
        seen = self.watch(registry)
        await self.until(lambda: _true(bool(seen)), "the first list in the watch")
        registration = await registry.register(self.instance())
        registered_at = reactor.seconds()
        await self.until(lambda: _true(seen[-1] == {registration.instance.port}),
                         "the instance in the watch")
        self.assertLess(reactor.seconds() - registered_at, 2.5)  # 0.5 s poll + the list lag
        self.assertIsNone(registry.push_working)  # v3 never subscribes


class Nacos31BothApisTests(unittest.TestCase):
    """Nacos 3.1.0 as shipped, v1 switch on: auto still picks v3; v1 when asked, with push."""

    timeout = 300

    def setUp(self) -> None:
        require_nacos(CONFIGS["3.1.0-v1"].version)
        self.service = f"msrpc-it-{uuid.uuid4().hex[:10]}"

    def registry(self, server: NacosServer, **kw: Any) -> NacosRegistry:
        registry = NacosRegistry(reactor, server.url, timeout=5.0, **kw)
        self.addCleanup(registry.close)
        return registry

    @defer.inlineCallbacks
    def test_auto_picks_v3_even_where_v1_answers(self) -> Any:
        server = yield shared_nacos(reactor, config="3.1.0-v1")
        registry = self.registry(server)
        self.assertEqual((yield registry.lookup(self.service)), [])
        self.assertEqual([d.name for d in registry._dialects.values()], ["v3"])
        self.assertIsNone(registry.push_working)

    @defer.inlineCallbacks
    def test_v1_when_asked_registers_and_brings_pushes(self) -> Any:
        server = yield shared_nacos(reactor, config="3.1.0-v1")
        watcher = self.registry(server, api="v1", refresh=60.0, push_refresh=60.0)
        writer = self.registry(server, api="v1", push_port=None)
        seen: list[set[int]] = []
        watcher.watch(self.service, lambda found: seen.append({i.port for i in found}))
        yield wait_for(reactor, lambda: bool(seen), 20, "the first list in the watch")
        registration = yield writer.register(ServiceInstance(
            service=self.service, host="127.0.0.1", port=free_port(), metadata={"k": "v"}))
        port = registration.instance.port
        # only a push can bring it: the watch's polls are 60 s apart
        yield wait_for(reactor, lambda: seen[-1] == {port}, 30,
                       "the registered instance pushed to the watch", interval=0.2)
        [found] = yield writer.lookup(self.service)
        self.assertEqual((found.port, found.metadata.get("k")), (port, "v"))
        self.assertTrue(watcher.push_working)
        yield registration.deregister()
        yield wait_for(reactor, lambda: seen[-1] == set(), 30,
                       "the deregistered instance pushed away", interval=0.2)
        self.assertEqual(watcher.stats["changes.polled"], 0)


async def _true(value: bool) -> bool:
    return value


def _sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class _Child(protocol.ProcessProtocol):
    """The registering child process: notes its ``registered`` line and its exit."""

    def __init__(self) -> None:
        self.output = b""
        self.registered = False
        self.exited = False
        self._ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self.registered = self.registered or b"registered" in self.output

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exited = True
        self._ended.callback(None)

    def kill(self) -> None:
        if not self.exited and self.transport is not None:
            self.transport.signalProcess(signal.SIGKILL)

    def end(self) -> defer.Deferred[None]:
        self.kill()
        return self._ended
