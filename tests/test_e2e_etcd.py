"""
End to end with etcd: a real ``twistd msrpc --registry etcd`` process registers in a real
etcd 3.5 (``scripts/install-etcd``; skipped locally when missing, failed under CI), the real
``msrpc`` command finds it there, and ``etcdctl`` shows what it wrote: the instance JSON on
a lease of the configured TTL, gone when the process is killed.
"""

from __future__ import annotations

import base64
import json

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from msrpc.registry.instance import ServiceInstance
from tests.servers import run, wait_for
from tests.servers.etcd import EtcdServer, start_etcd
from tests.servers.msrpcd import MsrpcDaemon, ls_entries, msrpc_cli, start_daemon, workdir

#: Short enough to watch a lease expire, long enough for keepalives (every TTL/3) to matter.
TTL = 3
PREFIX = "/msrpc/services/"


class EtcdEndToEndTests(TestCase):
    timeout = 60

    async def start(self, *args: str) -> tuple[EtcdServer, MsrpcDaemon]:
        """etcd, then a daemon serving the demo services (arith, echo) registered in it."""
        etcd = await start_etcd(self, "3.5")
        self.registry_args = ["--registry", "etcd", "--etcd", etcd.url]
        daemon = await start_daemon(
            self, reactor, workdir(self),
            [*self.registry_args, "--etcd-ttl", str(TTL), "--grace", "0.2", *args],
            registered=2)
        return etcd, daemon

    def msrpc(self, command: str, *args: str) -> "defer.Deferred[tuple[str, str, int]]":
        return msrpc_cli(reactor, command, *self.registry_args, *args)

    async def keys(self, etcd: EtcdServer) -> list[str]:
        return (await etcd.etcdctl("get", "--prefix", PREFIX, "--keys-only")).split()

    @run
    async def test_msrpc_call_through_etcd_reaches_the_daemon(self) -> None:
        await self.start()
        self.assertEqual(await self.msrpc("call", "arith.add", "1", "2"), ("3\n", "", 0))

    @run
    async def test_msrpc_ls_through_etcd_lists_the_daemon(self) -> None:
        _, daemon = await self.start()
        out, err, code = await self.msrpc("ls")
        self.assertEqual((err, code), ("", 0))
        self.assertEqual(ls_entries(out), [("arith", daemon.address), ("echo", daemon.address)])

    @run
    async def test_etcdctl_shows_the_instance_json_with_weight_and_metadata(self) -> None:
        etcd, daemon = await self.start("--weight", "3", "--metadata", "zone=z1")
        lines = (await etcd.etcdctl("get", "--prefix", PREFIX)).splitlines()
        stored = dict(zip(lines[0::2], map(ServiceInstance.from_json, lines[1::2])))
        self.assertEqual(sorted(stored), [f"{PREFIX}arith/{daemon.address}",
                                          f"{PREFIX}echo/{daemon.address}"])
        idempotent = {"arith": "add,mul", "echo": "echo,ping"}  # the demos' @expose
        for key, instance in stored.items():
            service = key.split("/")[3]
            self.assertEqual((instance.service, instance.address, instance.weight,
                              instance.metadata),
                             (service, daemon.address, 3.0,
                              {"zone": "z1", "idempotent": idempotent[service]}))

    @run
    async def test_each_instance_is_on_its_own_lease_with_the_ttl(self) -> None:
        etcd, daemon = await self.start()
        leases = (await etcd.etcdctl("lease", "list")).split()[3:]  # "found N leases" first
        self.assertEqual(len(leases), 2)
        keys = []
        for lease in leases:
            status = json.loads(await etcd.etcdctl("lease", "timetolive", lease, "--keys",
                                                   "--write-out=json"))
            self.assertEqual(status["granted-ttl"], TTL)
            self.assertGreater(status["ttl"], 0)
            keys += [base64.b64decode(k).decode() for k in status["keys"]]
        self.assertEqual(sorted(keys), await self.keys(etcd))

    @run
    async def test_sigterm_revokes_the_leases(self) -> None:
        etcd, daemon = await self.start()
        await daemon.terminate()
        self.assertEqual(daemon.exit_status(), "SIGTERM")  # twistd's clean stop, see there
        self.assertEqual(await self.keys(etcd), [])
        self.assertEqual((await etcd.etcdctl("lease", "list")).split(), ["found", "0", "leases"])

    @run
    async def test_instances_of_a_killed_daemon_are_gone_within_the_ttl(self) -> None:
        etcd, daemon = await self.start()
        await daemon.kill()
        killed_at = reactor.seconds()

        async def gone() -> bool:
            return await self.keys(etcd) == []

        await wait_for(reactor, gone, TTL * 3, "the killed daemon's keys to expire",
                       interval=0.1)
        self.assertLessEqual(reactor.seconds() - killed_at, TTL + 1.0)
        self.assertEqual((await etcd.etcdctl("lease", "list")).split(), ["found", "0", "leases"])
        out, _, code = await self.msrpc("call", "arith.add", "1", "2")
        self.assertEqual((out, code), ("", 1))
