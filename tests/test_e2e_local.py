"""
End to end with the local registry: a real ``twistd msrpc`` (or ``twistd -ny
tac/server.tac``) process and the real ``msrpc`` command, meeting in one SQLite file in a
temporary directory (never the user's own registry).
"""

from __future__ import annotations

import signal
import sys

from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import TestCase

from msrpc import __version__
from msrpc.client import Client
from msrpc.errors import ConnectionLost
from msrpc.registry.local import ENV_VAR, LocalRegistry
from tests.servers import REPO_ROOT, run, wait_for
from tests.servers.msrpcd import (
    MsrpcDaemon, child_env, ls_entries, msrpc_cli, start_daemon, twistd, workdir,
)

WHOAMI = "whoami=tests.e2e_service:Whoami"


class LocalEndToEndTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = workdir(self)
        self.path = self.dir / "registry.sqlite3"

    def registry_args(self) -> list[str]:
        return ["--registry", "local", "--local-path", str(self.path)]

    def daemon(self, *args: str, registered: int = 2) -> "defer.Deferred[MsrpcDaemon]":
        """``twistd -n msrpc`` on this test's registry file (demo services by default)."""
        # a short grace keeps cleanups quick; a test may pass its own --grace (last wins)
        return start_daemon(self, reactor, self.dir,
                            [*self.registry_args(), "--grace", "0.2", *args],
                            registered=registered)

    def msrpc(self, command: str, *args: str) -> "defer.Deferred[tuple[str, str, int]]":
        """``msrpc COMMAND`` on this test's registry file: (stdout, stderr, exit code)."""
        return msrpc_cli(reactor, command, *self.registry_args(), *args, cwd=self.dir)

    def registry(self) -> LocalRegistry:
        """A reader of the same file in this process, for checks that need precise timing."""
        registry = LocalRegistry(reactor, self.path)
        self.addCleanup(registry.close)
        return registry

    @run
    async def test_demo_services_answer_msrpc_call(self) -> None:
        await self.daemon()
        self.assertEqual(await self.msrpc("call", "arith.add", "1", "2"), ("3\n", "", 0))
        # python -m msrpc is the same command; options may follow the arguments
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "msrpc", "call", "arith.add", "1", "2",
                             *self.registry_args()], env=child_env(), path=str(self.dir))
        self.assertEqual((out, err, code), (b"3\n", b"", 0))

    @run
    async def test_version_is_msrpcs_own(self) -> None:
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "msrpc", "--version"], env=child_env(), path=str(self.dir))
        self.assertTrue(out.decode().startswith(f"msrpc {__version__} (Twisted "), out)
        out, err, code = await utils.getProcessOutputAndValue(
            twistd(), ["msrpc", "--version"], env=child_env(), path=str(self.dir))
        self.assertTrue(out.decode().startswith(f"msrpc {__version__} "), out + err)

    @run
    async def test_call_without_instances_exits_1_without_a_traceback(self) -> None:
        out, err, code = await self.msrpc("call", "nope.x")
        self.assertEqual((out, code), ("", 1))
        self.assertIn("NoInstances: no live instance of 'nope'", err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Unhandled error", err)

    @run
    async def test_contradictory_options_refuse_to_start(self) -> None:
        # ssl: serves TLS itself; --tls-cert on top once wrapped TLS twice and every call
        # died with a bare ConnectionLost.
        out, err, code = await utils.getProcessOutputAndValue(
            twistd(), ["-n", "--pidfile=", "msrpc", *self.registry_args(),
                       "--listen", "ssl:0:privateKey=key.pem:certKey=cert.pem",
                       "--tls-cert", "cert.pem"], env=child_env(), path=str(self.dir))
        self.assertNotEqual(code, 0)
        self.assertIn(b"would wrap TLS in TLS", out + err)
        self.assertEqual(await self.msrpc("ls"), ("", "", 0))  # nothing was registered

    @run
    async def test_a_second_signal_during_the_drain_stops_at_once(self) -> None:
        daemon = await self.daemon("--grace", "0", "--drain-timeout", "120")
        registry = self.registry()
        client = Client(reactor, registry, timeout=120)
        self.addCleanup(client.close)
        slow = client.call("arith", "slow_add", 1, 2, 120)
        # One connection, requests handled in order: once this answers, slow_add runs.
        self.assertEqual(await client.call("arith", "add", 1, 2), 3)
        daemon.process.signal(signal.SIGTERM)
        closed = f"Port {daemon.port} Closed"
        await wait_for(reactor, lambda: closed in daemon.log_text(), 10, "the port to close")
        self.assertTrue(daemon.process.running)  # draining the slow call
        asked_again = reactor.seconds()
        daemon.process.signal(signal.SIGINT)  # Ctrl-C
        await wait_for(reactor, lambda: not daemon.process.running, 10, "the daemon to stop")
        self.assertLess(reactor.seconds() - asked_again, 5.0)
        with self.assertRaises(ConnectionLost):
            await slow
        log = daemon.log_text()
        self.assertEqual(daemon.exit_status(), "SIGTERM", log[-3000:])  # the first signal
        self.assertIn("stopping now: 1 calls in flight are cut off", log)
        self.assertNotIn("ReactorNotRunning", log)
        self.assertNotIn("Traceback", log)

    @run
    async def test_msrpc_ls_lists_arith_and_echo_at_the_daemon_address(self) -> None:
        daemon = await self.daemon()
        out, err, code = await self.msrpc("ls")
        self.assertEqual((err, code), ("", 0))
        self.assertEqual(ls_entries(out), [("arith", daemon.address), ("echo", daemon.address)])

    @run
    async def test_user_service_is_served_instead_of_the_demos(self) -> None:
        daemon = await self.daemon("--service", WHOAMI, registered=1)
        self.assertEqual(await self.msrpc("call", "whoami.greet", "world"),
                         ('"hello, world"\n', "", 0))
        self.assertEqual(await self.msrpc("call", "whoami.pid"), (f"{daemon.pid}\n", "", 0))
        out, _, _ = await self.msrpc("ls")
        self.assertEqual(ls_entries(out), [("whoami", daemon.address)])

    @run
    async def test_remote_error_exits_1_with_the_error_on_stderr(self) -> None:
        await self.daemon("--service", WHOAMI, registered=1)
        out, err, code = await self.msrpc("call", "whoami.fail", "boom")
        self.assertEqual((out, code), ("", 1))
        self.assertIn("RemoteError: [500] ValueError: boom", err)

    @run
    async def test_sigterm_deregisters_before_closing_and_shuts_down_cleanly(self) -> None:
        # A TTL far beyond the test: only deregistration can take the instances away.
        daemon = await self.daemon("--local-ttl", "300", "--grace", "0.5")
        await daemon.terminate()
        log = daemon.log_text()
        # twistd ends itself with the SIGTERM it handled, after the clean shutdown
        self.assertEqual(daemon.exit_status(), "SIGTERM", log[-3000:])
        self.assertIn("Server Shut Down.", log)
        self.assertEqual(await self.msrpc("ls"), ("", "", 0))
        closed = log.index(f"Port {daemon.port} Closed")
        for service in ("arith", "echo"):
            self.assertLess(log.index(f"deregistered {service} at {daemon.address}"), closed)

    @run
    async def test_sigkill_leaves_the_instances_to_expire_within_ttl(self) -> None:
        ttl = 2.0
        daemon = await self.daemon("--local-ttl", str(ttl))
        registry = self.registry()

        async def addresses() -> list[str]:
            return [i.address for i in await registry.lookup("arith")]

        await task.deferLater(reactor, ttl * 1.5, lambda: None)  # heartbeats outlive a TTL
        self.assertEqual(await addresses(), [daemon.address])
        await daemon.kill()
        killed_at = reactor.seconds()

        async def expired() -> bool:
            return await addresses() == []

        await wait_for(reactor, expired, ttl * 3, "the killed daemon's instances to expire")
        self.assertLessEqual(reactor.seconds() - killed_at, ttl + 1.0)
        self.assertEqual(await self.msrpc("ls"), ("", "", 0))

    @run
    async def test_watch_in_another_process_sees_the_daemon_come_and_go_at_once(
            self) -> None:
        # Polls 30 s apart and a 60 s TTL: within the test only change notification
        # (the change file, inotify) can tell the watch.
        registry = LocalRegistry(reactor, self.path, ttl=60, refresh=30)
        self.addCleanup(registry.close)
        seen: list[list[str]] = []
        registry.watch("arith", lambda found: seen.append([i.address for i in found]))
        await wait_for(reactor, lambda: seen == [[]], 5.0, "the first list")
        daemon = await self.daemon("--local-ttl", "60")
        await wait_for(reactor, lambda: seen[-1] == [daemon.address], 5.0,
                       "the registration, notified")
        await daemon.terminate()
        await wait_for(reactor, lambda: seen[-1] == [], 5.0, "the deregistration, notified")

    @run
    async def test_tac_file_serves_the_demo_services_found_through_the_cli(self) -> None:
        env = {ENV_VAR: str(self.path), "MSRPC_LISTEN": "tcp:0:interface=127.0.0.1"}
        daemon = await start_daemon(self, reactor, self.dir, [], registered=2,
                                                 env=env, tac=REPO_ROOT / "tac" / "server.tac")
        # no --local-path: the command finds the same file through the environment
        self.assertEqual(await msrpc_cli(reactor, "call", "arith.add", "1", "2", env=env),
                         ("3\n", "", 0))
        out, _, _ = await msrpc_cli(reactor, "ls", env={ENV_VAR: str(self.path)})
        self.assertEqual(ls_entries(out), [("arith", daemon.address), ("echo", daemon.address)])
        await daemon.terminate()
        self.assertEqual(daemon.exit_status(), "SIGTERM")
        self.assertEqual(await msrpc_cli(reactor, "ls", env={ENV_VAR: str(self.path)}),
                         ("", "", 0))
