"""The ``msrpc`` command against a real server on a loopback port."""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from twisted.internet import defer, reactor
from twisted.python import usage
from twisted.trial.unittest import TestCase

from msrpc import __version__, cli
from msrpc.codec import register
from msrpc.demo import default_services
from msrpc.server import Server


@register(name="tests.cli.Order")
@dataclass
class Order:
    sku: str
    quantity: int


@register(name="tests.cli.Color")
class Color(enum.Enum):
    RED = 1


class Shapes:
    """Results JSON has no type for; the command's process never registered Order."""

    def get(self, kind: str) -> Any:
        return {
            "bytes": b"hi\x00",
            "set": {3, 1, 2},
            "datetime": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
            "timedelta": dt.timedelta(seconds=90),
            "uuid": uuid.UUID(int=1),
            "decimal": Decimal("1.10"),
            "order": Order("a-1", 2),
            "color": Color.RED,
            "tuple_keys": {(1, 2): "x"},
        }[kind]


class CliCase(TestCase):
    """A real server on a loopback port, and the command run in-process against it."""

    def setUp(self) -> defer.Deferred:
        self.server = Server(reactor, "tcp:0:interface=127.0.0.1",
                             services={**default_services(reactor), "shapes": Shapes()},
                             grace=0)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        return self.server.ready

    def static(self) -> list[str]:
        port = self.server.address.port
        return ["--registry", "static", "--static",
                f"arith=127.0.0.1:{port};echo=127.0.0.1:{port};shapes=127.0.0.1:{port}"]

    def msrpc(self, *argv: str) -> "defer.Deferred[tuple[int, str, str]]":
        """Run the command in-process; its exit code and what it printed."""
        out, err = io.StringIO(), io.StringIO()

        async def run() -> tuple[int, str, str]:
            code = await cli.run(reactor, list(argv), out, err)
            return code, out.getvalue(), err.getvalue()

        return defer.Deferred.fromCoroutine(run())


class CliTests(CliCase):
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
        self.assertEqual([line.split("\t")[0] for line in out.splitlines()],
                         ["arith", "echo", "shapes"])

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

    def test_go_conversions_of_numbers_give_go_typed_arguments(self) -> None:
        parsed = [cli.parse_arg(a) for a in ("int64(7)", "uint8(255)", "float32(0.1)",
                                             "int(-1)", "int64", "myint64(7)")]
        self.assertEqual([(type(v).__name__, v) for v in parsed],
                         [("Int64", 7), ("Uint8", 255), ("Float32", 0.10000000149011612),
                          ("Int", -1), ("str", "int64"), ("str", "myint64(7)")])
        self.assertRaises(usage.UsageError, cli.parse_arg, "uint8(256)")
        self.assertRaises(usage.UsageError, cli.parse_arg, "int64(x)")

    def test_dialect_options_name_a_protocol_per_service_or_for_all(self) -> None:
        options = cli.CallOptions()
        options.parseOptions(["--dialect", "goods=msgo", "--dialect", "msrpc", "goods.Find"])
        self.assertEqual(options["dialects"], {"goods": "msgo", "*": "msrpc"})
        self.assertRaises(usage.UsageError, cli.CallOptions().parseOptions,
                          ["--dialect", "goods=grpc", "goods.Find"])

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


class CommandLineTests(CliCase):
    """Options anywhere, as with git and etcdctl; ``--`` ends them."""

    @defer.inlineCallbacks
    def test_options_after_the_arguments_are_options(self):  # type: ignore[no-untyped-def]
        code, out, err = yield self.msrpc("call", "arith.add", "1", "2", *self.static(),
                                          "--timeout", "5")
        self.assertEqual((code, out, err), (0, "3\n", ""))

    @defer.inlineCallbacks
    def test_options_between_arguments_and_before_the_command(self):  # type: ignore[no-untyped-def]
        registry, static = self.static()[:2], self.static()[2:]
        code, out, err = yield self.msrpc(*registry, "call", "arith.add", "1", *static, "2")
        self.assertEqual((code, out, err), (0, "3\n", ""))

    @defer.inlineCallbacks
    def test_double_dash_ends_the_options(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("call", *self.static(), "echo.echo", "--", "--timeout")
        self.assertEqual((code, out), (0, '"--timeout"\n'))

    @defer.inlineCallbacks
    def test_negative_numbers_are_arguments(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("call", "arith.add", "-1", "-2.5", *self.static())
        self.assertEqual((code, out), (1, ""))  # -2.5 is not an int: the server says 400
        code, out, _ = yield self.msrpc("call", "arith.add", "-1", "-2", *self.static())
        self.assertEqual((code, out), (0, "-3\n"))

    @defer.inlineCallbacks
    def test_an_unknown_option_is_a_usage_error_never_an_argument(self):  # type: ignore[no-untyped-def]
        for word in ("--frobnicate", "--frobnicate=1", "-Z"):
            code, out, err = yield self.msrpc("call", *self.static(), "echo.echo", word)
            self.assertEqual((code, out), (2, ""), word)
            self.assertIn(f"unknown option {word.split('=')[0]}", err)

    @defer.inlineCallbacks
    def test_a_missing_option_value_is_a_usage_error(self):  # type: ignore[no-untyped-def]
        code, _, err = yield self.msrpc("call", *self.static(), "echo.echo", "1", "--timeout")
        self.assertEqual(code, 2)
        self.assertIn("--timeout needs a value", err)

    @defer.inlineCallbacks
    def test_another_registrys_option_is_a_usage_error(self):  # type: ignore[no-untyped-def]
        code, _, err = yield self.msrpc("call", "arith.add", "1", "2",
                                        "--etcd", "http://127.0.0.1:1")
        self.assertEqual(code, 2)
        self.assertIn("--etcd is an option of the etcd registry, but the registry is local",
                      err)

    @defer.inlineCallbacks
    def test_bench_options_after_its_arguments(self):  # type: ignore[no-untyped-def]
        # The README's own form: options after SERVICE.METHOD and its arguments.
        code, out, err = yield self.msrpc("bench", "echo.echo", '{"a": 1}', "--concurrency",
                                          "4", "--duration", "60", "--calls", "40",
                                          *self.static())
        self.assertEqual((code, err), (0, ""))
        self.assertIn("concurrency 4", out)
        self.assertIn("calls 40  ok 40  failed 0", out)

    @defer.inlineCallbacks
    def test_version_is_msrpcs_own(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("--version")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith(f"msrpc {__version__} (Twisted "), out)

    @defer.inlineCallbacks
    def test_version_after_a_command_is_msrpcs_own_too(self):  # type: ignore[no-untyped-def]
        # Options go anywhere, --version too: never Twisted's "Twisted version: ...".
        for argv in (("call", "arith.add", "1", "2", "--version"), ("ls", "--version"),
                     ("bench", "echo.echo", "--version")):
            code, out, _ = yield self.msrpc(*argv)
            self.assertEqual(code, 0, argv)
            self.assertTrue(out.startswith(f"msrpc {__version__} (Twisted "), (argv, out))

    @defer.inlineCallbacks
    def test_help_prints_usage_and_exits_0(self):  # type: ignore[no-untyped-def]
        code, out, _ = yield self.msrpc("--help")
        self.assertEqual(code, 0)
        for command in cli.COMMANDS:
            self.assertIn(command, out)
        code, out, _ = yield self.msrpc("call", "--help")
        self.assertEqual(code, 0)
        self.assertIn("Usage: msrpc call SERVICE.METHOD", out)
        self.assertIn("--registry", out)


class ResultDisplayTests(CliCase):
    """Results JSON cannot hold print as README's table says (``msrpc.show``)."""

    def shown(self, kind: str, *output: str) -> "defer.Deferred[str]":
        d = self.msrpc("call", *self.static(), "shapes.get", kind, *output)

        def check(result: tuple[int, str, str]) -> str:
            code, out, err = result
            self.assertEqual((code, err), (0, ""))
            return out.rstrip("\n")

        return d.addCallback(check)

    @defer.inlineCallbacks
    def test_json_output_is_plain_readable_json(self):  # type: ignore[no-untyped-def]
        expected = {
            "bytes": '"aGkA"',
            "set": "[1, 2, 3]",
            "datetime": '"2024-05-01T12:00:00+00:00"',
            "timedelta": "90.0",
            "uuid": '"00000000-0000-0000-0000-000000000001"',
            "decimal": '"1.10"',
            "order": '{"$type": "tests.cli.Order", "sku": "a-1", "quantity": 2}',
            "color": "1",
            "tuple_keys": '{"[1, 2]": "x"}',
        }
        for kind, text in expected.items():
            self.assertEqual((yield self.shown(kind)), text, kind)

    @defer.inlineCallbacks
    def test_tagged_output_is_the_lossless_json_form(self):  # type: ignore[no-untyped-def]
        self.assertEqual((yield self.shown("bytes", "--output", "tagged")), '{"$bytes": "aGkA"}')
        self.assertEqual((yield self.shown("order", "-o", "tagged")),
                         '{"$type": "tests.cli.Order", "$fields": {"sku": "a-1", "quantity": 2}}')

    @defer.inlineCallbacks
    def test_python_output_is_the_repr(self):  # type: ignore[no-untyped-def]
        self.assertEqual((yield self.shown("bytes", "-o", "python")), "b'hi\\x00'")
        self.assertEqual((yield self.shown("set", "-o", "python")), "{1, 2, 3}")
        self.assertEqual((yield self.shown("order", "-o", "python")),
                         "tests.cli.Order(sku='a-1', quantity=2)")
        self.assertEqual((yield self.shown("color", "-o", "python")), "tests.cli.Color(1)")

    @defer.inlineCallbacks
    def test_an_unknown_output_is_a_usage_error(self):  # type: ignore[no-untyped-def]
        code, _, err = yield self.msrpc("call", *self.static(), "echo.echo", "1", "-o", "xml")
        self.assertEqual(code, 2)
        self.assertIn("--output must be one of: json, tagged, python", err)
