"""
The ``msrpc`` command: call services and list instances through the same registry
options as ``twistd msrpc``, so no address is ever typed.

    msrpc call arith.add 1 2            → 3
    msrpc call echo.echo '{"a": [1, 2]}' --registry etcd --etcd http://127.0.0.1:2379
    msrpc ls arith
    msrpc bench echo.echo '{"a": 1}' --concurrency 64 --duration 5
    msrpc health arith                  → one line per instance: SERVING, NOT_SERVING...
    msrpc watch arith echo              → instance changes with timestamps, until Ctrl-C

Options go anywhere on the line (``msrpc.cmdline``).  Each subcommand is one row of
``COMMANDS``: to add one, write its options class (an ``InterspersedOptions``; add
``registry_parameters()`` and call ``check_registry_options`` if it reads a registry), an
``async def run_NAME(reactor, options, out) -> Optional[int]`` (None means exit 0), and a
``Command`` row.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from twisted.internet import defer, task
from twisted.python import usage

from msrpc import gob, version_text
from msrpc.auth import client_token
from msrpc.client import Client
from msrpc.cmdline import HelpRequested, InterspersedOptions, option_table, split_argv
from msrpc.codec import SERIALIZERS, TypeRegistry, make_codecs
from msrpc.errors import MsrpcError
from msrpc.loadgen import closed_loop
from msrpc.msgo import parse_dialect_option
from msrpc.protocol import ProtocolSettings
from msrpc.registry.options import check_registry_options, make_registry, registry_parameters
from msrpc.show import OUTPUTS
from msrpc.tls import TLSFiles


#: ``int64(7)``, ``uint8(3)``, ``float32(1.5)``...: a number as that Go type.
_GO_NUMBER = re.compile(r"(u?int(?:8|16|32|64)?|uintptr|float(?:32|64)|complex(?:64|128))"
                        r"\((.*)\)", re.S)


def parse_arg(text: str) -> Any:
    """JSON when it parses (``1``, ``"x"``, ``[1,2]``); a Go conversion of a number,
    ``int64(7)``, for Go msgo services, whose methods take exact Go types; else the text
    itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    go_number = _GO_NUMBER.fullmatch(text)
    if go_number is None:
        return text
    value_class = getattr(gob, go_number.group(1).capitalize())
    try:
        return value_class(json.loads(go_number.group(2)))
    except (ValueError, TypeError, OverflowError) as e:
        raise usage.UsageError(f"{text}: {e}") from None


#: What any command that calls servers needs: wire format, token, TLS.
CLIENT_PARAMETERS: list[list[Any]] = [
    ["serializer", None, "msgpack", "Wire serializer: msgpack or json."],
    ["token-file", None, None, "File holding the auth token to send (or set MSRPC_TOKEN)."],
    ["tls-ca", None, None, "Call over TLS, verifying servers against this CA (PEM)."],
    ["tls-cert", None, None, "Client certificate (PEM) for servers that require one."],
    ["tls-key", None, None, "Key of the client certificate (PEM)."],
]


class CallOptions(InterspersedOptions):
    synopsis = "Usage: msrpc call SERVICE.METHOD [ARG ...] [options]\n" \
               "Each ARG is JSON, or else a plain string; an ARG starting with '-' goes " \
               "after '--'."
    optParameters = [
        ["timeout", "t", 10.0, "Seconds to wait for the answer.", float],
        ["kwargs", "k", None, "Keyword arguments as a JSON object."],
        ["output", "o", "json", "How results print: json (readable JSON), tagged (the "
                                "JSON serializer's lossless form) or python (repr)."],
    ] + CLIENT_PARAMETERS + registry_parameters()

    def __init__(self) -> None:
        super().__init__()
        self["dialects"] = {}

    def opt_dialect(self, spec: str) -> None:
        """[SERVICE=]NAME  The protocol a service speaks when its instances do not say:
        msgo (a Go msgo service: one call per connection, gob) or msrpc (repeatable)."""
        try:
            service, name = parse_dialect_option(spec)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["dialects"][service] = name

    def parseArgs(self, target: str, *args: str) -> None:  # type: ignore[override]
        service, sep, method = target.rpartition(".")
        if not sep or not service or not method:
            raise usage.UsageError(f"expected SERVICE.METHOD, got {target!r}")
        self["service"], self["method"] = service, method
        self["args"] = [parse_arg(a) for a in args]

    def postOptions(self) -> None:
        check_registry_options(self)
        if self["kwargs"]:
            try:
                kwargs = json.loads(self["kwargs"])
            except ValueError as e:
                raise usage.UsageError(f"--kwargs is not JSON: {e}") from None
            if not isinstance(kwargs, dict):
                raise usage.UsageError("--kwargs must be a JSON object")
            self["kwargs"] = kwargs
        else:
            self["kwargs"] = {}
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be > 0")
        if self["serializer"] not in SERIALIZERS:
            raise usage.UsageError(f"--serializer must be one of: {', '.join(SERIALIZERS)}")
        if self["output"] not in OUTPUTS:
            raise usage.UsageError(f"--output must be one of: {', '.join(OUTPUTS)}")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")


class BenchOptions(CallOptions):
    synopsis = "Usage: msrpc bench SERVICE.METHOD [ARG ...] [options]\n" \
               "Calls it in a closed loop; prints calls/s and latency percentiles."
    optParameters = [
        ["concurrency", "c", 16, "Calls in flight.", int],
        ["duration", "d", 5.0, "Seconds to run.", float],
        ["calls", "n", 0, "Stop after this many calls (0: run for --duration).", int],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["concurrency"] < 1 or self["duration"] <= 0 or self["calls"] < 0:
            raise usage.UsageError("--concurrency must be >= 1, --duration > 0, --calls >= 0")


class LsOptions(InterspersedOptions):
    synopsis = "Usage: msrpc ls [SERVICE ...] [options]"
    optParameters = registry_parameters()

    def parseArgs(self, *services: str) -> None:
        self["services"] = list(services)

    def postOptions(self) -> None:
        check_registry_options(self)


class HealthOptions(InterspersedOptions):
    synopsis = "Usage: msrpc health SERVICE [options]\n" \
               "Asks every instance of SERVICE (msrpc.health.check); exit 0 only if all " \
               "serve."
    optParameters = [
        ["timeout", "t", 5.0, "Seconds each instance has to answer.", float],
    ] + CLIENT_PARAMETERS + registry_parameters()

    def parseArgs(self, service: str) -> None:  # type: ignore[override]
        self["service"] = service

    def postOptions(self) -> None:
        check_registry_options(self)
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be > 0")


class WatchOptions(InterspersedOptions):
    synopsis = "Usage: msrpc watch SERVICE [SERVICE ...] [options]\n" \
               "Prints the instances (added), then every change, with UTC timestamps, " \
               "until interrupted."
    optParameters = [
        ["duration", "d", 0.0, "Stop after this many seconds (0: until interrupted).",
         float],
    ] + registry_parameters()

    def parseArgs(self, *services: str) -> None:
        if not services:
            raise usage.UsageError("name the services to watch")
        self["services"] = list(services)

    def postOptions(self) -> None:
        check_registry_options(self)
        if self["duration"] < 0:
            raise usage.UsageError("--duration must be >= 0")


def client_settings(options: usage.Options) -> ProtocolSettings:
    """What the command's client speaks.  Its codecs keep types this process never
    registered (the services' classes) as inert ``UnknownObject`` values, so it can show
    any result; nothing is imported or instantiated by name."""
    return ProtocolSettings(codecs=make_codecs(TypeRegistry(keep_unknown=True)),
                            serializer=SERIALIZERS[options["serializer"]])


def make_client(reactor: Any, registry: Any, options: usage.Options,
                **extra: Any) -> Client:
    """The client the options describe (a UsageError for unreadable token or TLS files)."""
    try:
        return Client(reactor, registry, timeout=options["timeout"],
                      settings=client_settings(options),
                      token=client_token(options["token-file"]),
                      tls=TLSFiles(options["tls-ca"], options["tls-cert"], options["tls-key"]),
                      dialect=options.get("dialects") or None,
                      gob_registry=gob.GobRegistry(keep_unknown=True), **extra)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


async def with_client(reactor: Any, options: usage.Options,
                      use: Callable[[Client], Awaitable[None]]) -> None:
    """Build the registry and client the options describe, use them, close them."""
    registry = make_registry(reactor, options)
    try:
        client = make_client(reactor, registry, options)
    except usage.UsageError:
        await registry.close()
        raise
    try:
        await use(client)
    finally:
        await client.close()
        await registry.close()


async def run_call(reactor: Any, options: usage.Options, out: Any) -> None:
    show = OUTPUTS[options["output"]]

    async def call(client: Client) -> None:
        result = await client.invoke(options["service"], options["method"], options["args"],
                                     options["kwargs"])
        out.write(show(result) + "\n")

    await with_client(reactor, options, call)


async def run_bench(reactor: Any, options: usage.Options, out: Any) -> None:
    async def bench(client: Client) -> None:
        target = options["service"], options["method"], options["args"], options["kwargs"]
        await client.invoke(*target)  # resolve and connect before the clock starts
        result = await closed_loop(reactor, lambda: client.invoke(*target),
                                   options["concurrency"], options["duration"],
                                   options["calls"] or None)
        out.write(f"{options['service']}.{options['method']}  concurrency "
                  f"{options['concurrency']}\n{result.report()}\n")

    await with_client(reactor, options, bench)


async def run_ls(reactor: Any, options: usage.Options, out: Any) -> None:
    registry = make_registry(reactor, options)
    try:
        services = options["services"]
        if not services:
            list_services = getattr(registry, "services", None)
            if list_services is None:
                raise usage.UsageError(f"the {registry.name} registry cannot list services; "
                                       "name the ones to show")
            services = await list_services()
        for service in services:
            instances = await registry.lookup(service)
            if not instances:
                out.write(f"{service}\t(no live instances)\n")
            for i in instances:
                meta = " ".join(f"{k}={v}" for k, v in sorted(i.metadata.items()))
                out.write(f"{service}\t{i.address}\tweight={i.weight:g}\tid={i.instance_id}"
                          f"{chr(9) + meta if meta else ''}\n")
    finally:
        await registry.close()


async def run_health(reactor: Any, options: usage.Options, out: Any) -> int:
    from msrpc.client import RetryPolicy
    from msrpc.healthcheck import check_instances

    service = options["service"]
    registry = make_registry(reactor, options)
    try:
        make_client(reactor, registry, options)  # bad token or TLS files: a usage error now
        instances = await registry.lookup(service)
        if not instances:
            out.write(f"{service}\t(no live instances)\n")
            return 1
        answers = await check_instances(
            reactor, instances,
            lambda static: make_client(reactor, static, options,
                                       retry=RetryPolicy(max_attempts=1)),
            options["timeout"])
        for answer in answers:
            out.write(answer.line() + "\n")
        return 0 if all(a.serving for a in answers) else 1
    finally:
        await registry.close()


async def run_watch(reactor: Any, options: usage.Options, out: Any) -> None:
    from msrpc.watching import watch_services

    registry = make_registry(reactor, options)
    until: defer.Deferred[None] = defer.Deferred()
    closed: defer.Deferred[None] = defer.Deferred()

    def stop() -> None:
        if not until.called:
            until.callback(None)

    def interrupted() -> "defer.Deferred[None]":
        stop()
        return closed  # Ctrl-C stops the reactor: let the registry close first

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    timer = reactor.callLater(options["duration"], stop) if options["duration"] else None
    try:
        await watch_services(reactor, registry, options["services"], out, until)
    finally:
        if timer is not None and timer.active():
            timer.cancel()
        await registry.close()
        closed.callback(None)
        if reactor.running:
            reactor.removeSystemEventTrigger(trigger)


Runner = Callable[[Any, usage.Options, Any], Awaitable[Optional[int]]]


@dataclass(frozen=True)
class Command:
    """One ``msrpc`` subcommand: its options, what it runs, and its line in ``--help``."""

    name: str
    options: type[usage.Options]
    run: Runner
    summary: str


COMMANDS: dict[str, Command] = {command.name: command for command in [
    Command("call", CallOptions, run_call,
            "Call SERVICE.METHOD with JSON arguments; print the result."),
    Command("ls", LsOptions, run_ls,
            "List the live instances of services (all, if the registry can list them)."),
    Command("bench", BenchOptions, run_bench,
            "Load a live service: calls/s and latency percentiles as its callers see them."),
    Command("health", HealthOptions, run_health,
            "Ask every instance of a service whether it serves (msrpc.health)."),
    Command("watch", WatchOptions, run_watch,
            "Print the instance changes of services as they happen, until interrupted."),
]}


class MainOptions(usage.Options):
    synopsis = "Usage: msrpc COMMAND [ARG ...] [options]\n" \
               "Options go anywhere on the line; '--' ends them."
    optFlags = [["version", None, "Print msrpc's version and exit."]]

    def __init__(self) -> None:
        super().__init__()
        self.subCommands = [[c.name, None, c.options, c.summary] for c in COMMANDS.values()]

    def opt_help(self) -> None:
        """Display this help and exit."""
        raise HelpRequested(str(self))

    opt_h = opt_help

    def opt_version(self) -> None:
        """Print msrpc's version and exit."""
        raise HelpRequested(version_text())


def parse(argv: Sequence[str]) -> tuple[Command, usage.Options]:
    """The subcommand and its parsed options.  Options before the command's name are the
    command's too (``msrpc --registry etcd ls``), except ``--help`` and ``--version``."""
    main = MainOptions()
    table = option_table(main)
    for command in COMMANDS.values():
        table.update(option_table(command.options()))
    leading, rest = split_argv(argv, table, stop_at_argument=True)
    main.parseOptions([o for o in leading if o in ("--help", "-h", "--version")])
    if not rest:
        raise usage.UsageError(f"choose a command: {', '.join(COMMANDS)}")
    if rest[0] not in COMMANDS:
        raise usage.UsageError(f"unknown command {rest[0]!r}; choose one of: "
                               f"{', '.join(COMMANDS)}")
    command = COMMANDS[rest[0]]
    options = command.options()
    options.parseOptions([o for o in leading if o not in ("--help", "-h", "--version")]
                         + rest[1:])
    return command, options


async def run(reactor: Any, argv: Sequence[str], out: Any = None, err: Any = None) -> int:
    """Run one command line; the exit status: 0 ok, 1 the command failed, 2 usage error."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        command, options = parse(argv)
    except HelpRequested as e:
        out.write(e.text.rstrip("\n") + "\n")
        return 0
    except usage.UsageError as e:
        err.write(f"msrpc: {e}\n(msrpc --help lists the commands, msrpc COMMAND --help "
                  "their options)\n")
        return 2
    started = time.monotonic()
    try:
        return await command.run(reactor, options, out) or 0
    except usage.UsageError as e:
        err.write(f"msrpc: {e}\n")
        return 2
    except MsrpcError as e:
        err.write(f"msrpc: {type(e).__name__}: {e} "
                  f"({time.monotonic() - started:.3f}s)\n")
        return 1


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)

    def start(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            code = await run(reactor, args)
            if code:
                raise SystemExit(code)

        return defer.Deferred.fromCoroutine(go())

    task.react(start)


if __name__ == "__main__":
    main()
