"""
``twistd msrpc --workers 2`` as real processes on loopback: one registration for all
workers, every worker serving, a crashed worker restarted, and a stop that deregisters
first and then drains every worker.  The inherited-socket mode (used where SO_REUSEPORT
does not spread connections) runs its real workers from an in-process pool.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from msrpc.client import Client, RetryPolicy
from msrpc.errors import ConnectionLost
from msrpc.registry.local import LocalRegistry
from msrpc.registry.static import StaticRegistry
from msrpc.workers import ListenAddress, WorkerPool, worker_command
from tests.servers import wait_for
from tests.servers.msrpcd import MsrpcDaemon, child_env, start_daemon, workdir

TTL = 1.5
REFRESH = 0.2
SERVICE = "worker=tests.worker_service:Worker"


def run(test: Any) -> Any:
    """Let an ``async def`` test method run under trial and pytest alike."""

    def wrapper(self: TestCase) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(test(self))

    wrapper.__name__ = test.__name__
    return wrapper


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTestCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir: Path = workdir(self)
        self.registry_path = self.dir / "registry.sqlite3"

    def registry(self) -> LocalRegistry:
        registry = LocalRegistry(reactor, self.registry_path, ttl=TTL, refresh=REFRESH)
        self.addCleanup(registry.close)
        return registry

    def supervisor(self) -> "defer.Deferred[MsrpcDaemon]":
        args = ["--workers", "2", "--registry", "local", "--local-path",
                str(self.registry_path), "--local-ttl", str(TTL), "--local-refresh",
                str(REFRESH), "--grace", "0.5", "--drain-timeout", "5", "--service", SERVICE]
        return start_daemon(self, reactor, self.dir, args, registered=1, name="supervisor")

    async def call(self, address: str, method: str, *args: Any) -> Any:
        """One call on a fresh connection (each may land on another worker)."""
        client = Client(reactor, StaticRegistry({"worker": [address]}), timeout=10.0,
                        retry=RetryPolicy(max_attempts=1))
        try:
            return await client.call("worker", method, *args)
        finally:
            await client.close()

    async def worker_pids(self, address: str, count: int = 2, exclude: Any = ()) -> set[int]:
        """Pids answering on ``address`` from fresh connections (each may land on another
        worker), once ``count`` of them are not in ``exclude``."""
        seen: set[int] = set()

        async def enough() -> bool:
            for _ in range(10):
                seen.add(await self.call(address, "pid"))
            return len(seen - set(exclude)) >= count

        await wait_for(reactor, enough, 30.0, f"{count} workers answering on {address}")
        return seen


class SupervisedWorkersTests(WorkersTestCase):
    @run
    async def test_one_registration_for_every_worker_and_every_worker_serves(self) -> None:
        daemon = await self.supervisor()
        [instance] = await self.registry().lookup("worker")
        self.assertEqual(instance.port, daemon.port)
        pids = await self.worker_pids(daemon.address)
        self.assertEqual(len(pids), 2, "both workers answer calls on the one port")
        self.assertNotIn(daemon.pid, pids)

    @run
    async def test_a_crashed_worker_is_restarted_and_the_instance_stays_published(
            self) -> None:
        daemon = await self.supervisor()
        before = await self.worker_pids(daemon.address)
        client = Client(reactor, StaticRegistry({"worker": [daemon.address]}), timeout=10.0,
                        retry=RetryPolicy(max_attempts=1))
        self.addCleanup(client.close)
        victim = await client.call("worker", "pid")
        with self.assertRaises(ConnectionLost):
            await client.call("worker", "crash")
        await wait_for(reactor, lambda: not alive(victim), 10.0, "the crashed worker gone")
        new = await self.worker_pids(daemon.address, count=1, exclude=before)
        self.assertTrue(new - before, "a new worker answers in place of the crashed one")
        self.assertEqual(len(await self.registry().lookup("worker")), 1)
        self.assertRegex(daemon.log_text(), r"worker \d \(pid \d+\) exited with status 3 "
                                            r"after [\d.]+s; restarting it in 0\.5s")

    @run
    async def test_stop_deregisters_first_then_drains_every_worker(self) -> None:
        daemon = await self.supervisor()
        registry = self.registry()
        pids = await self.worker_pids(daemon.address)
        # Calls in flight on several connections (so on both workers, almost surely).
        slow = [defer.Deferred.fromCoroutine(self.call(daemon.address, "slow", 2.0))
                for _ in range(6)]
        await task.deferLater(reactor, 0.3, lambda: None)  # the calls reach the workers
        stopping = daemon.terminate()

        async def withdrawn() -> bool:
            return not await registry.lookup("worker")

        await wait_for(reactor, withdrawn, 1.5, "the instance withdrawn before the drain")
        answered = await defer.gatherResults(slow, consumeErrors=True)
        self.assertTrue(set(answered) <= pids)  # every call in flight was answered
        await stopping
        self.assertEqual(daemon.exit_status(), "SIGTERM")  # twistd's graceful stop
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        log = daemon.log_text()
        first_worker_stop = re.search(r"\[worker \d\] Received SIGTERM", log)
        assert first_worker_stop is not None
        self.assertLess(log.index("deregistered worker"), first_worker_stop.start())


    @run
    async def test_workers_stop_by_themselves_when_the_supervisor_is_killed(self) -> None:
        daemon = await self.supervisor()
        pids = await self.worker_pids(daemon.address)
        await daemon.kill()
        await wait_for(reactor, lambda: not any(alive(pid) for pid in pids), 20.0,
                       "orphaned workers gone")


class InheritedSocketTests(WorkersTestCase):
    @run
    async def test_workers_share_one_listening_socket_where_reuseport_cannot_spread(
            self) -> None:
        args = ["--registry", "static", "--service", SERVICE, "--grace", "0",
                "--drain-timeout", "5"]
        pool = WorkerPool(reactor, ListenAddress(socket.AF_INET, "127.0.0.1", 0),
                          worker_command(args), 2, kill_timeout=10.0, reuse_port=False,
                          env=child_env())
        self.addCleanup(pool.stop)
        await pool.start()
        address = f"127.0.0.1:{pool.listening.host.port}"
        pids = await self.worker_pids(address, count=1)
        self.assertTrue(pids)
        await pool.stop()
        self.assertEqual([pid for pid in pids if alive(pid)], [])
