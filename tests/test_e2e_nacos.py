"""
End to end with Nacos: real ``twistd msrpc --registry nacos`` processes register in a real
Nacos (``scripts/install-nacos``; skipped locally when missing, failed under CI) in both
dialects (2.3.2 with v1; 3.1.0 with v1 off, so v3); Nacos's own instance list shows what they
published, the real ``msrpc`` command calls them, a client spreads calls by their weights,
and a killed one is dropped by Nacos's heartbeat timeout.

Nacos takes seconds to start, so every test uses the shared server of its configuration
(``shared_nacos``), each with its own service and group names so that none sees another's
instances.  What Nacos holds is read from its HTTP API directly, never through msrpc.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any, Optional

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from msrpc.client import Client
from msrpc.registry.nacos import DEFAULT_TTL, NacosRegistry, liveness_metadata
from tests.servers import run, wait_for
from tests.servers.msrpcd import MsrpcDaemon, ls_entries, msrpc_cli, start_daemon, workdir
from tests.servers.nacos import CONFIGS, SHORT_TIMEOUTS, NacosServer, require_nacos, \
    shared_nacos


class Scenarios:
    """What every dialect passes end to end; subclasses name the server configuration."""

    config = ""
    timeout = 300  # the first test waits for the shared Nacos to start

    def setUp(self) -> None:
        require_nacos(CONFIGS[self.config].version)
        self.dir = workdir(self)
        tag = uuid.uuid4().hex[:10]
        self.service, self.group = f"e2e-{tag}", f"e2e-group-{tag}"

    async def nacos(self) -> NacosServer:
        self.server = await shared_nacos(reactor, config=self.config)
        self.registry_args = ["--registry", "nacos", "--nacos", self.server.url,
                              "--nacos-group", self.group]
        return self.server

    def daemon(self, *args: str, name: str = "msrpcd") -> "defer.Deferred[MsrpcDaemon]":
        """A daemon serving ``tests.e2e_service:Whoami`` as this test's service."""
        return start_daemon(self, reactor, self.dir,
                            [*self.registry_args, "--grace", "0.2",
                             "--service", f"{self.service}=tests.e2e_service:Whoami", *args],
                            registered=1, name=name)

    def msrpc(self, command: str, *args: str, env: Optional[dict[str, str]] = None
              ) -> "defer.Deferred[tuple[str, str, int]]":
        return msrpc_cli(reactor, command, *self.registry_args, *args, env=env)

    async def listed(self, **params: Any) -> list[dict[str, Any]]:
        """Nacos's own list of this test's service (healthy or not)."""
        return await self.server.instances(self.service, groupName=self.group, **params)

    async def until_listed(self, ports: set[int], timeout: float = 20.0,
                           **params: Any) -> None:
        async def matches() -> bool:
            return {host["port"] for host in await self.listed(**params)} == ports

        await wait_for(reactor, lambda: defer.Deferred.fromCoroutine(matches()), timeout,
                       f"Nacos to list ports {sorted(ports)} of {self.service}", interval=0.2)

    @run
    async def test_instance_in_nacos_has_the_weight_metadata_group_and_cluster(self) -> None:
        await self.nacos()
        daemon = await self.daemon("--nacos-cluster", "e2e-cluster", "--weight", "3",
                                   "--metadata", "zone=z1", "--metadata", "version=2")
        await self.until_listed({daemon.port}, clusters=["e2e-cluster"])
        [host] = await self.listed(clusters=["e2e-cluster"])
        self.assertEqual(
            {k: host[k] for k in ("ip", "port", "weight", "metadata", "clusterName",
                                  "serviceName", "healthy", "ephemeral")},
            {"ip": "127.0.0.1", "port": daemon.port, "weight": 3.0,
             "metadata": {"zone": "z1", "version": "2", "idempotent": "pid",
                          **liveness_metadata(DEFAULT_TTL)},
             "clusterName": "e2e-cluster",
             "serviceName": f"{self.group}@@{self.service}", "healthy": True,
             "ephemeral": True})

    @run
    async def test_msrpc_call_and_ls_find_the_daemon_through_nacos(self) -> None:
        await self.nacos()
        daemon = await self.daemon()
        await self.until_listed({daemon.port})
        self.assertEqual(await self.msrpc("call", f"{self.service}.greet", "world"),
                         ('"hello, world"\n', "", 0))
        self.assertEqual(await self.msrpc("call", f"{self.service}.pid"),
                         (f"{daemon.pid}\n", "", 0))
        out, err, code = await self.msrpc("ls", *self.ls_args(),
                                          env={"MSRPC_NACOS_PASSWORD": self.server.password})
        self.assertEqual((err, code), ("", 0))
        self.assertEqual(ls_entries(out), [(self.service, daemon.address)])

    def ls_args(self) -> list[str]:
        """What ``msrpc ls`` needs to list services here (v3: an admin API user)."""
        return []

    @run
    async def test_calls_are_shared_in_proportion_to_the_weights(self) -> None:
        await self.nacos()
        light = await self.daemon("--weight", "1", name="light")
        heavy = await self.daemon("--weight", "9", name="heavy")
        registry = NacosRegistry(reactor, self.server.url, group=self.group)
        self.addCleanup(registry.close)

        async def both_found() -> bool:
            return len(await registry.lookup(self.service)) == 2

        await wait_for(reactor, lambda: defer.Deferred.fromCoroutine(both_found()), 20,
                       "both daemons in the lookup", interval=0.2)
        client = Client(reactor, registry)
        self.addCleanup(client.close)
        calls = 400
        answered = Counter([await client.call(self.service, "pid") for _ in range(calls)])
        self.assertEqual(set(answered), {light.pid, heavy.pid})
        share = answered[heavy.pid] / calls  # 0.9 expected, 0.5 if weights were ignored
        self.assertTrue(0.8 <= share <= 0.97, f"weight-9 share {share:.3f} of {calls} calls")

    @run
    async def test_killed_daemon_is_dropped_by_nacos_after_its_ttl(self) -> None:
        await self.nacos()
        # beats every 1 s; unhealthy after 3 s and deleted after 6 s without one
        daemon = await self.daemon("--nacos-ttl", "3")
        await self.until_listed({daemon.port})
        [host] = await self.listed()
        self.assertEqual({k: v for k, v in host["metadata"].items()
                          if k.startswith("preserved.")}, SHORT_TIMEOUTS)
        # Alive, it beats: healthy well past the heartbeat and delete timeouts.
        alive_until = reactor.seconds() + 8.0
        while reactor.seconds() < alive_until:
            [host] = await self.listed()
            self.assertTrue(host["healthy"], host)
            await task.deferLater(reactor, 1.0, lambda: None)
        await daemon.kill()
        killed_at = reactor.seconds()
        await self.until_listed(set(), timeout=45)
        # 6 s delete timeout, checked by Nacos every 5 s, plus the list's lag
        self.assertLess(reactor.seconds() - killed_at, 20)


class NacosV1EndToEndTests(Scenarios, TestCase):
    config = "2.3.2"


class NacosV3EndToEndTests(Scenarios, TestCase):
    config = "3.1.0"

    def ls_args(self) -> list[str]:
        return ["--nacos-user", self.server.username]

    @run
    async def test_ls_without_an_admin_user_says_it_cannot_list(self) -> None:
        await self.nacos()
        out, err, code = await self.msrpc("ls")
        self.assertEqual((out, code), ("", 1))
        self.assertIn("cannot list services", err)
        self.assertNotIn("Traceback", err)
