"""
Operating a real ``twistd msrpc`` with the real ``msrpc`` command: ``msrpc health`` asks its
health service, ``msrpc watch`` sees it come and go, ``--access-log`` logs its calls.
"""

from __future__ import annotations

import signal

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.servers import run, wait_for
from tests.servers.msrpcd import child_env, msrpc_argv, msrpc_cli, start_daemon, workdir
from tests.servers.process import LoggedProcess


class OperationsEndToEndTests(TestCase):
    timeout = 90

    @run
    async def test_health_watch_and_access_log_of_a_real_daemon(self) -> None:
        directory = workdir(self)
        registry = ["--registry", "local", "--local-path", str(directory / "r.sqlite3"),
                    "--local-refresh", "0.2"]
        watch = LoggedProcess(reactor, [*msrpc_argv(), "watch", "whoami", *registry],
                              directory / "watch.log", child_env(), cwd=str(directory))
        self.addCleanup(watch.terminate, reactor)
        daemon = await start_daemon(self, reactor, directory,
                                    [*registry, "--service", "whoami=tests.e2e_service:Whoami",
                                     "--access-log", "--grace", "0.5"], registered=1)

        out, err, code = await msrpc_cli(reactor, "health", "whoami", *registry,
                                         cwd=directory)
        self.assertEqual((err, code), ("", 0))
        [line] = out.splitlines()
        self.assertRegex(line, rf"^whoami\t{daemon.address}\tSERVING\t\(\d+\.\d ms\)$")

        self.assertEqual(await msrpc_cli(reactor, "call", *registry, "whoami.greet", "ops",
                                         cwd=directory), ('"hello, ops"\n', "", 0))
        await wait_for(reactor, lambda: "whoami.greet 200 " in daemon.log_text(), 10,
                       "the access log line")
        self.assertRegex(daemon.log_text(), r"\[msrpc\.access#info\] whoami\.greet 200 "
                                            r"\d+\.\d{3}ms from 127\.0\.0\.1:\d+ in=\d+ out=\d+")

        daemon.process.signal(signal.SIGTERM)  # type: ignore[union-attr]
        await daemon.process.ended  # type: ignore[union-attr]
        out, _, code = await msrpc_cli(reactor, "health", "whoami", *registry, cwd=directory)
        self.assertEqual((out, code), ("whoami\t(no live instances)\n", 1))

        def changes() -> list[tuple[str, ...]]:
            lines = [line.split("\t") for line in watch.log_text().splitlines()
                     if "\twhoami\t" in line]
            return [(f[1], f[2], f[3]) for f in lines]

        await wait_for(reactor, lambda: len(changes()) == 2, 10, "the watch to see the stop")
        self.assertEqual(changes(), [("whoami", "added", daemon.address),
                                     ("whoami", "removed", daemon.address)])
        watch.signal(signal.SIGINT)  # until interrupted: then it exits cleanly
        await watch.ended
        self.assertEqual(watch.exit_code, 0)
        self.assertNotIn("Traceback", watch.log_text())
