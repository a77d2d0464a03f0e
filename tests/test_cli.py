"""The ``msrpc`` command against a real server on a loopback port."""

from __future__ import annotations

import io
import json

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from msrpc import cli
from msrpc.demo import default_services
from msrpc.server import Server


class CliTests(TestCase):
    def setUp(self) -> defer.Deferred:
        self.server = Server(reactor, "tcp:0:interface=127.0.0.1",
                             services=default_services(reactor), grace=0)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        return self.server.ready

    def static(self) -> list[str]:
        port = self.server.address.port
        return ["--registry", "static", "--static",
                f"arith=127.0.0.1:{port};echo=127.0.0.1:{port}"]

    def msrpc(self, *argv: str) -> "defer.Deferred[tuple[int, str, str]]":
        """Run the command in-process; its exit code and what it printed."""
        out, err = io.StringIO(), io.StringIO()

        async def run() -> tuple[int, str, str]:
            code = await cli.run(reactor, list(argv), out, err)
            return code, out.getvalue(), err.getvalue()

        return defer.Deferred.fromCoroutine(run())

    @defer.inlineCallbacks
    def test_call_prints_the_result_as_json(self):  # type: ignore[no-untyped-def]
        code, out, err = yield self.msrpc("call", *self.static(), "arith.add", "1", "2")
        self.assertEqual((code, out, err), (0, "3\n", ""))

    @defer.inlineCallbacks
    def test_json_arguments_and_kwargs(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("call", *self.static(), "echo.echo", '{"a": [1, 2]}')
        self.assertEqual(json.loads(out), {"a": [1, 2]})
        code, out, _ = yield self.msrpc("call", *self.static(), "--kwargs", '{"a": 2, "b": 5}', "arith.mul")
        self.assertEqual(out, "10\n")

    @defer.inlineCallbacks
    def test_plain_words_are_strings(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("call", *self.static(), "echo.echo", "hello")
        self.assertEqual(out, '"hello"\n')

    @defer.inlineCallbacks
    def test_remote_error_exits_1_with_the_error(self):  # type: ignore[no-untyped-def]
        code, out, err = yield self.msrpc("call", *self.static(), "arith.add", "x", "1")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("BadRequest: [400]", err)

    @defer.inlineCallbacks
    def test_unknown_service_is_no_instances(self):  # type: ignore[no-untyped-def]
        code, _, err = yield self.msrpc("call", *self.static(), "nope.x")
        self.assertEqual(code, 1)
        self.assertIn("NoInstances", err)

    @defer.inlineCallbacks
    def test_ls_lists_instances(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("ls", *self.static(), "arith")
        self.assertEqual(code, 0)
        self.assertIn(f"arith\t127.0.0.1:{self.server.address.port}\tweight=10", out)

    @defer.inlineCallbacks
    def test_ls_without_a_service_lists_every_service(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("ls", *self.static())
        self.assertEqual(code, 0)
        self.assertEqual([line.split("\t")[0] for line in out.splitlines()], ["arith", "echo"])

    @defer.inlineCallbacks
    def test_usage_errors_exit_2(self):  # type: ignore[no-untyped-def]
        for argv in ([], ["call"], ["call", "nodot"], ["frobnicate"],
                     ["call", "--kwargs", "[1]", "a.b"]):
            code, _, err = yield self.msrpc(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("msrpc:", err)

    def test_arguments_parse_as_json_or_text(self) -> None:
        self.assertEqual([cli.parse_arg(a) for a in ("1", "1.5", "true", "[1]", "x y")],
                         [1, 1.5, True, [1], "x y"])

    @defer.inlineCallbacks
    def test_bench_runs_the_asked_number_of_calls_and_reports(self):  # type: ignore[no-untyped-def]
        code, out, err = yield self.msrpc("bench", *self.static(), "--calls", "200",
                                          "--concurrency", "8", "--duration", "60",
                                          "arith.add", "1", "2")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("calls 200  ok 200  failed 0", out)
        self.assertIn("p99 ", out)

    @defer.inlineCallbacks
    def test_bench_stops_at_once_when_the_first_call_fails(self):  # type: ignore[no-untyped-def]
        code, out, err = yield self.msrpc("bench", *self.static(), "--calls", "10",
                                          "arith.div", "1", "0")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("BadRequest", err)
