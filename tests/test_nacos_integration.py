"""
NacosRegistry against a real Nacos 2.x (installed by scripts/install-nacos; skipped when it
is not, except under CI where that fails).  Most tests share one server per process (one
without auth, one with); the restart test starts its own.  What Nacos itself holds is read
from its HTTP API directly, never through the adapter under test.

Nacos's list lags a change by about half a second (docs/ref/nacos-api-verified.md), so
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

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from msrpc.errors import RegistryAuthError
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistry
from msrpc.registry.nacos import DEFAULT_TTL, NacosRegistry, liveness_metadata
from tests.servers import REPO_ROOT, free_port, wait_for
from tests.servers.nacos import SHORT_TIMEOUTS, NacosServer, require_nacos, shared_nacos


def nacos_test(method: Callable[..., Awaitable[Any]]) -> Callable[..., defer.Deferred]:
    """An async test whose failure also prints the log tail of every Nacos it used."""

    @functools.wraps(method)
    def wrapper(self: "NacosIntegrationTests") -> defer.Deferred:
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


class NacosIntegrationTests(unittest.TestCase):
    timeout = 300

    def setUp(self) -> None:
        require_nacos()
        self.servers: list[NacosServer] = []
        self.service = f"msrpc-it-{uuid.uuid4().hex[:10]}"

    async def server(self, auth: bool = False) -> NacosServer:
        server = await shared_nacos(reactor, auth=auth)
        self.servers.append(server)
        return server

    async def own_server(self) -> NacosServer:
        server = NacosServer(reactor)
        self.servers.append(server)
        self.addCleanup(server.cleanup)
        return await server.start()

    def registry(self, server: NacosServer, **kw: Any) -> NacosRegistry:
        kw.setdefault("refresh", 0.5)
        kw.setdefault("timeout", 5.0)
        registry = NacosRegistry(reactor, kw.pop("servers", server.url), **kw)
        self.addCleanup(registry.close)
        return registry

    def instance(self, port: Optional[int] = None, **kw: Any) -> ServiceInstance:
        return ServiceInstance(service=self.service, host="127.0.0.1",
                               port=port or free_port(), **kw)

    async def nacos_ports(self, server: NacosServer, **params: Any) -> set[int]:
        return {h["port"] for h in await server.instances(self.service, **params)}

    def until(self, check: Callable[[], Awaitable[bool]], what: str,
              timeout: float = 20.0) -> defer.Deferred[None]:
        return wait_for(reactor, lambda: defer.Deferred.fromCoroutine(check()), timeout,
                        what, interval=0.2)

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

        async def listed() -> bool:
            return mine.port in await self.nacos_ports(server, groupName="msrpc-g")

        await self.until(listed, "the instance in Nacos's list")
        [host] = await server.instances(self.service, groupName="msrpc-g")
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

    async def _listed(self, server: NacosServer, port: int) -> bool:
        return port in await self.nacos_ports(server)

    @nacos_test
    async def test_lookup_in_clusters_returns_only_those_clusters(self) -> None:
        server = await self.server()
        registry = self.registry(server)
        a = await registry.register(self.instance(cluster="a"))
        await registry.register(self.instance(cluster="b"))

        async def only_a() -> bool:
            found = await registry.lookup(self.service, clusters=["a"])
            return [i.port for i in found] == [a.instance.port]

        await self.until(only_a, "a lookup of cluster a")

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
        registry = self.registry(server)
        registration = await registry.register(self.instance(metadata=SHORT_TIMEOUTS))
        port = registration.instance.port
        await self.until(lambda: self._listed(server, port), "the registered instance")
        await _sleep(9.0)  # without beats: unhealthy by 8.5 s (3 s + a 5 s check period)
        [host] = await server.instances(self.service)
        self.assertEqual((host["port"], host["healthy"]), (port, True))

    @nacos_test
    async def test_instance_of_a_killed_process_is_removed_after_nacos_timeout(self) -> None:
        server = await self.server()
        port = free_port()
        child = await self._spawn_child(server, port)
        await self.until(lambda: self._listed(server, port), "the child's instance")
        child.kill()
        killed_at = reactor.seconds()

        async def gone() -> bool:
            return not await self._listed(server, port)

        await self.until(gone, "Nacos to drop the dead child's instance", timeout=30)
        # 6 s delete timeout, checked by Nacos every 5 s, plus the list's lag
        self.assertLess(reactor.seconds() - killed_at, 20)

    @nacos_test
    async def test_killed_process_leaves_the_healthy_list_within_ttl_and_check_period(
            self) -> None:
        server = await self.server()
        watcher = self.registry(server)
        seen: list[set[int]] = []
        watcher.watch(self.service, lambda instances: seen.append({i.port for i in instances}))
        port = free_port()
        child = await self._spawn_child(server, port, metadata={})  # the default --nacos-ttl
        await self.until(lambda: _true(bool(seen) and seen[-1] == {port}),
                         "the child's instance in the watch")
        child.kill()
        killed_at = reactor.seconds()
        await self.until(lambda: _true(seen[-1] == set()), "the killed child out of the watch",
                         timeout=30)
        elapsed = reactor.seconds() - killed_at
        # unhealthy at the first beat check (every 5 s, fixed in Nacos) after the TTL, and
        # pushed 0.5 s later; the last beat came up to TTL/3 before the kill
        self.assertLess(elapsed, DEFAULT_TTL + 5.0 + 1.5, f"dropped after {elapsed:.1f} s")

    async def _spawn_child(self, server: NacosServer, port: int,
                           metadata: Optional[dict[str, str]] = None) -> "_Child":
        child = _Child()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])))
        args = [sys.executable, "-m", "tests.nacos_child", server.url, self.service,
                str(port), json.dumps(SHORT_TIMEOUTS if metadata is None else metadata)]
        reactor.spawnProcess(child, sys.executable, args, env=env, path=str(REPO_ROOT))
        self.addCleanup(child.end)
        await wait_for(reactor, lambda: child.registered or child.exited, 30,
                       "the child to register")
        self.assertTrue(child.registered, f"child exited: {child.output!r}")
        return child

    @nacos_test
    async def test_nacos_restart_is_followed_by_registration_without_intervention(
            self) -> None:
        server = await self.own_server()
        registry = self.registry(server)
        registration = await registry.register(self.instance(metadata=SHORT_TIMEOUTS))
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
        seen: list[set[int]] = []
        registry.watch(self.service, lambda instances: seen.append({i.port for i in instances}))
        await self.until(lambda: _true(bool(seen) and seen[-1] == {first.instance.port}),
                         "the first instance in the watch")
        second = await registry.register(self.instance())
        both = {first.instance.port, second.instance.port}
        await self.until(lambda: _true(seen[-1] == both), "the added instance in the watch")
        await second.deregister()
        await self.until(lambda: _true(seen[-1] == {first.instance.port}),
                         "the removed instance gone from the watch", timeout=5)

    # ------------------------------------------------------------------ UDP push

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
        seen: list[set[int]] = []
        watcher.watch(self.service, lambda instances: seen.append({i.port for i in instances}))
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
        self.assertEqual(caught.exception.status, 403)
        self.assertIn("user not found!", str(caught.exception))

    @nacos_test
    async def test_no_credentials_against_auth_nacos_is_an_auth_error(self) -> None:
        server = await self.server(auth=True)
        with self.assertRaises(RegistryAuthError) as caught:
            await self.registry(server).lookup(self.service)
        self.assertEqual(caught.exception.status, 403)


async def _true(value: bool) -> bool:
    return value


def _sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

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
