"""
Client discovery and resilience with real processes: ``twistd msrpc`` servers on loopback,
found through a local registry in a temporary file, called by a ``Client`` in the test
process under a steady load (``tests.servers.load``) while servers are killed, stopped and
restarted.

Timers are short (TTL 1.5 s, watch refresh 0.2 s, grace 0.6 s) so each test takes seconds.
The numbers of each run are logged and written to stderr on a line starting with
``RESILIENCE``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Coroutine

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from msrpc.client import Client
from msrpc.registry.local import LocalRegistry
from tests.servers import wait_for
from tests.servers.load import CallSpec, Load, Report
from tests.servers.msrpcd import MsrpcDaemon, start_daemon, workdir

TTL = 1.5
REFRESH = 0.2
#: Longer than a few watch refreshes: clients drop a stopping server before it stops
#: accepting calls.
GRACE = 0.6
DEADLINE = 2.0
RATE = 200.0
IN_FLIGHT = 16
#: How long the demo's ``arith.slow_add`` takes: calls really are in flight on the server
#: when it is killed or drained.
WORK = 0.01

log = Logger()


def run(test: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[TestCase], Any]:
    """Let an ``async def`` test method run under trial and pytest alike."""

    def wrapper(self: TestCase) -> "defer.Deferred[None]":
        return defer.Deferred.fromCoroutine(test(self))

    wrapper.__name__ = test.__name__
    wrapper.__doc__ = test.__doc__
    return wrapper


def slow_add(i: int, idempotent: bool) -> CallSpec:
    return CallSpec("arith", "slow_add", (i, 1), {"delay": WORK}, idempotent=idempotent)


def sleep(seconds: float) -> "defer.Deferred[None]":
    return task.deferLater(reactor, seconds, lambda: None)


class ResilienceTestCase(TestCase):
    timeout = 60  # trial's per-test limit

    def setUp(self) -> None:
        self.dir: Path = workdir(self)
        self.registry_path = self.dir / "registry.sqlite3"
        self.started = 0

    def server_args(self) -> list[str]:
        return ["--registry", "local", "--local-path", str(self.registry_path),
                "--local-ttl", str(TTL), "--local-refresh", str(REFRESH),
                "--grace", str(GRACE), "--drain-timeout", "5",
                "--service", "arith=msrpc.demo:Arith"]

    def server(self) -> "defer.Deferred[MsrpcDaemon]":
        """One more ``twistd msrpc`` serving ``arith``, returned once registered."""
        self.started += 1
        return start_daemon(self, reactor, self.dir, self.server_args(), registered=1,
                            name=f"server{self.started}")

    async def servers(self, count: int) -> list[MsrpcDaemon]:
        return list(await defer.gatherResults([self.server() for _ in range(count)],
                                              consumeErrors=True))

    def client(self) -> Client:
        registry = LocalRegistry(reactor, self.registry_path, ttl=TTL, refresh=REFRESH)
        self.addCleanup(registry.close)
        client = Client(reactor, registry, timeout=DEADLINE)
        self.addCleanup(client.close)  # before the registry's (cleanups run LIFO)
        return client

    async def listed(self, client: Client, servers: list[MsrpcDaemon]) -> None:
        """Until the registry lists exactly these servers."""
        expected = sorted(s.port for s in servers)  # type: ignore[type-var]

        async def check() -> bool:
            instances = await client.registry.lookup("arith")
            return sorted(i.port for i in instances) == expected

        await wait_for(reactor, check, 10.0, f"arith listed at ports {expected}")

    def record(self, scenario: str, client: Client, report: Report) -> None:
        stats = ", ".join(f"{k}={v}" for k, v in sorted(client.stats.items()))
        log.info("{scenario}: {summary}; client.stats: {stats}", scenario=scenario,
                 summary=report.summary(), stats=stats)
        sys.stderr.write(f"\nRESILIENCE {scenario}: {report.summary()}; "
                         f"client.stats: {stats}\n")

    def assertClean(self, report: Report) -> None:
        """No call lost, late, failed with an undocumented error, or idempotent and failed."""
        self.assertEqual(report.problems(), [])


class KillAndStopTests(ResilienceTestCase):

    @run
    async def test_idempotent_calls_survive_a_killed_and_a_stopped_server(self) -> None:
        """
        Three servers, 1200 calls at 200/s (three in four idempotent), 2 s deadline each;
        one server is SIGKILLed and another SIGTERMed mid-stream.
        """
        servers = await self.servers(3)
        client = self.client()
        await self.listed(client, servers)
        load = Load(reactor, client, lambda i: slow_add(i, idempotent=i % 4 != 0),
                    rate=RATE, timeout=DEADLINE, max_in_flight=IN_FLIGHT, count=1200)

        async def chaos() -> None:
            await sleep(1.5)
            await servers[0].kill()
            await sleep(1.5)
            await servers[1].terminate()

        done = defer.Deferred.fromCoroutine(chaos())
        report = await load.run()
        await done
        self.record("kill+stop", client, report)

        self.assertEqual(report.made, 1200)
        self.assertClean(report)
        self.assertGreater(report.succeeded, 0)
        self.assertGreater(report.retries, 0)  # the kill did hit calls


class RollingRestartTests(ResilienceTestCase):

    @run
    async def test_rolling_restart_fails_no_call(self) -> None:
        """
        Two servers under a steady load of non-idempotent calls; each in turn is stopped
        gracefully (SIGTERM, wait for its exit), replaced by a new process, and the next
        is restarted only once the new one is registered.  Not one call may fail.
        """
        servers = await self.servers(2)
        client = self.client()
        await self.listed(client, servers)
        load = Load(reactor, client, lambda i: slow_add(i, idempotent=False),
                    rate=RATE, timeout=DEADLINE, max_in_flight=IN_FLIGHT, duration=30.0)
        running = load.run()

        await sleep(0.5)
        for i in range(len(servers)):
            await servers[i].terminate()
            servers[i] = await self.server()
            await self.listed(client, servers)
            await sleep(0.5)
        load.stop()
        report = await running
        self.record("rolling-restart", client, report)

        self.assertClean(report)
        self.assertEqual(report.failed_by_class, {})
        self.assertGreater(report.made, 0)
