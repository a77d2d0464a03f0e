"""
The ``msrpc`` command: call services and list instances through the same registry
options as ``twistd msrpc``, so no address is ever typed.

    msrpc call arith.add 1 2            → 3
    msrpc call echo.echo '{"a": [1, 2]}'
    msrpc ls arith
    msrpc bench echo.echo '{"a": 1}' --concurrency 64 --duration 5
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Awaitable, Callable, Optional, Sequence

from twisted.internet import defer, task
from twisted.python import usage

from msrpc.auth import client_token
from msrpc.client import Client
from msrpc.codec import JsonCodec
from msrpc.errors import MsrpcError
from msrpc.loadgen import closed_loop
from msrpc.registry.options import make_registry, registry_parameters
from msrpc.tls import TLSFiles


def parse_arg(text: str) -> Any:
    """JSON when it parses (``1``, ``"x"``, ``[1,2]``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class CallOptions(usage.Options):
    synopsis = "SERVICE.METHOD [ARG ...]  (each ARG is JSON, or a plain string)"
    optParameters = [
        ["timeout", "t", 10.0, "Seconds to wait for the answer.", float],
        ["kwargs", "k", None, "Keyword arguments as a JSON object."],
        ["serializer", None, "msgpack", "Wire serializer: msgpack or json."],
        ["token-file", None, None, "File holding the auth token to send "
                                   "(or set MSRPC_TOKEN)."],
        ["tls-ca", None, None, "Call over TLS, verifying servers against this CA (PEM)."],
        ["tls-cert", None, None, "Client certificate (PEM) for servers that require one."],
        ["tls-key", None, None, "Key of the client certificate (PEM)."],
    ] + registry_parameters()

    def parseArgs(self, target: str, *args: str) -> None:  # type: ignore[override]
        service, sep, method = target.rpartition(".")
        if not sep or not service or not method:
            raise usage.UsageError(f"expected SERVICE.METHOD, got {target!r}")
        self["service"], self["method"] = service, method
        self["args"] = [parse_arg(a) for a in args]

    def postOptions(self) -> None:
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


class BenchOptions(CallOptions):
    synopsis = "SERVICE.METHOD [ARG ...]  (calls it in a closed loop; prints calls/s, latency)"
    optParameters = [
        ["concurrency", "c", 16, "Calls in flight.", int],
        ["duration", "d", 5.0, "Seconds to run.", float],
        ["calls", "n", 0, "Stop after this many calls (0: run for --duration).", int],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["concurrency"] < 1 or self["duration"] <= 0 or self["calls"] < 0:
            raise usage.UsageError("--concurrency must be >= 1, --duration > 0, --calls >= 0")


class LsOptions(usage.Options):
    synopsis = "SERVICE [SERVICE ...]"
    optParameters = registry_parameters()

    def parseArgs(self, *services: str) -> None:
        self["services"] = list(services)


class MainOptions(usage.Options):
    synopsis = "call|ls [options] ..."
    subCommands = [
        ["call", None, CallOptions, "Call SERVICE.METHOD with JSON arguments; print JSON."],
        ["ls", None, LsOptions, "List the live instances of services (all, if the "
                                "registry can list them)."],
        ["bench", None, BenchOptions, "Load a live service: calls/s and latency "
                                      "percentiles as its callers see them."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command: call, ls or bench")


def to_json(value: Any) -> str:
    """Results as JSON; types JSON lacks come out tagged, as the JSON codec sends them."""
    return json.dumps(json.loads(JsonCodec().encode(value)), ensure_ascii=False)


async def with_client(reactor: Any, options: usage.Options,
                      use: Callable[[Client], Awaitable[None]]) -> None:
    """Build the registry and client the options describe, use them, close them."""
    registry = make_registry(reactor, options)
    client = Client(reactor, registry, timeout=options["timeout"],
                    serializer=options["serializer"],
                    token=client_token(options["token-file"]),
                    tls=TLSFiles(options["tls-ca"], options["tls-cert"], options["tls-key"]))
    try:
        await use(client)
    finally:
        await client.close()
        await registry.close()


async def run_call(reactor: Any, options: usage.Options, out: Any) -> None:
    async def call(client: Client) -> None:
        result = await client.invoke(options["service"], options["method"], options["args"],
                                     options["kwargs"])
        out.write(to_json(result) + "\n")

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


COMMANDS = {"call": run_call, "ls": run_ls, "bench": run_bench}


async def run(reactor: Any, argv: Sequence[str], out: Any = None, err: Any = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    options = MainOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        err.write(f"{options}\nmsrpc: {e}\n")
        return 2
    sub = options.subOptions
    started = time.monotonic()
    try:
        await COMMANDS[str(options.subCommand)](reactor, sub, out)
    except usage.UsageError as e:
        err.write(f"msrpc: {e}\n")
        return 2
    except MsrpcError as e:
        err.write(f"msrpc: {type(e).__name__}: {e} "
                  f"({time.monotonic() - started:.3f}s)\n")
        return 1
    return 0


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
