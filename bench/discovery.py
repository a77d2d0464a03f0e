"""
How soon a watching client learns of registry changes, per registry backend.

    python -m bench.discovery [--registries local,etcd,nacos] [--rounds 5] [--seed N]

For each registry a watcher in this process uses the public ``IRegistry.watch`` on the
``echo`` service, built from the same options as ``twistd msrpc``.  Each round starts a real
``twistd msrpc`` process (the demo services), stops it gracefully (SIGTERM), starts another
and SIGKILLs it, measuring:

appear
    from the server's own "registered echo at ..." log line (timestamped to the
    microsecond by ``precise_log``) to the first watch callback that lists it (slightly
    negative when the watcher saw the registration before the server got to log it);
graceful stop
    from the SIGTERM to the first callback without it (signal handling and the
    deregistration itself included);
kill -9
    from the SIGKILL to the first callback without it (bounded by the registry's TTL).

Before every start and stop the bench waits a random part of the registry's poll period, so
the events fall anywhere in the poll cycle and the figures are not biased by its phase.
Servers: the ones the tests use (``tests/servers``, installed by ``scripts/install-servers``):
etcd 3.5 and Nacos 2.3.2 on free loopback ports, the local registry in a temporary file.
Each cell prints median / p99 / max in seconds (nearest rank).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path[:1] = [str(Path(__file__).resolve().parent.parent)]

from twisted.internet import defer, task
from twisted.logger import (FileLogObserver, ILogObserver, formatEventAsClassicLogText,
                            globalLogBeginner)
from twisted.python import usage

from msrpc.loadgen import nearest_rank
from msrpc.registry.interface import IRegistry
from msrpc.registry.options import make_registry, registry_parameters
from tests.servers.msrpcd import MsrpcDaemon

REGISTRIES = ("local", "etcd", "nacos")
SERVICE = "echo"
#: Longest wait for any single event (a Nacos start, a kill seen after a 15 s timeout...).
EVENT_TIMEOUT = 60.0


def precise_log() -> ILogObserver:
    """``twistd --logger=bench.discovery.precise_log``: the usual text log, but stamped with
    epoch seconds to the microsecond, so the bench can tell when a server registered."""
    return FileLogObserver(sys.stdout, lambda event: formatEventAsClassicLogText(
        event, formatTime=lambda when: f"{when:.6f}"))


class PreciseDaemon(MsrpcDaemon):
    """A ``twistd msrpc`` process logging through ``precise_log``."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv.insert(argv.index("msrpc"), "--logger=bench.discovery.precise_log")
        return argv

    def registered_at(self) -> float:
        """When the server logged its ``echo`` registration (epoch seconds)."""
        pattern = re.compile(r"^(\d+\.\d+) \[msrpc\.server\.Server#info\] registered "
                             rf"{SERVICE} at {re.escape(self.address)} ", re.M)
        match = pattern.search(self.log_text())
        if match is None:
            raise RuntimeError(f"no registration line in {self.log_path}")
        return float(match.group(1))


class RegistryOptions(usage.Options):
    optParameters = registry_parameters()


@dataclass
class Backend:
    """One registry under test: how daemons and the watcher reach it, and its settings."""

    name: str
    args: list[str]
    cleanup: Callable[[], Awaitable[Any]]
    options: RegistryOptions = field(init=False)

    def __post_init__(self) -> None:
        self.options = RegistryOptions()
        self.options.parseOptions(self.args)

    @property
    def poll_period(self) -> float:
        """The watch's poll period (the spread of the jitter): its refresh option."""
        return float(self.options.get(f"{self.name}-refresh") or 1.0)

    @property
    def ttl(self) -> str:
        """The configured time a killed instance stays listed."""
        value = self.options.get(f"{self.name}-ttl")
        if value is not None:
            return f"{float(value):g} s"
        return "15 s (server)" if self.name == "nacos" else "?"


class Watcher:
    """Records every watch callback (when, which addresses) and wakes whoever waits."""

    def __init__(self, reactor: Any, registry: IRegistry) -> None:
        self.reactor = reactor
        self.history: list[tuple[float, frozenset[str]]] = []
        self._waiters: list[tuple[Callable[[frozenset[str]], bool], defer.Deferred[float]]] = []
        self.watch = registry.watch(SERVICE, self._seen)

    def _seen(self, instances: Sequence[Any]) -> None:
        now = self.reactor.seconds()
        addresses = frozenset(i.address for i in instances)
        self.history.append((now, addresses))
        for waiter in list(self._waiters):
            if waiter[0](addresses):
                self._waiters.remove(waiter)
                waiter[1].callback(now)

    def first(self, since: float, test: Callable[[frozenset[str]], bool],
              what: str) -> "defer.Deferred[float]":
        """When a callback at or after ``since`` first satisfied ``test`` (maybe already)."""
        for when, addresses in self.history:
            if when >= since and test(addresses):
                return defer.succeed(when)
        d: defer.Deferred[float] = defer.Deferred()
        self._waiters.append((test, d))

        def timed_out(failure: Any) -> Any:
            failure.trap(defer.TimeoutError)
            raise RuntimeError(f"the watch did not see {what} within {EVENT_TIMEOUT:g}s")

        return d.addTimeout(EVENT_TIMEOUT, self.reactor).addErrback(timed_out)


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.samples:
            return "-"
        ordered = sorted(self.samples)
        median = nearest_rank(ordered, 50)
        return (f"{median:.3f} / {nearest_rank(ordered, 99):.3f} / {ordered[-1]:.3f}")


@dataclass
class Result:
    backend: str
    ttl: str
    appear: Cell = field(default_factory=Cell)
    graceful: Cell = field(default_factory=Cell)
    killed: Cell = field(default_factory=Cell)
    error: Optional[str] = None


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class Bench:
    def __init__(self, reactor: Any, rounds: int, rng: random.Random, out: IO[str]) -> None:
        self.reactor = reactor
        self.rounds = rounds
        self.rng = rng
        self.out = out
        self.workdir = Path(tempfile.mkdtemp(prefix="msrpc-discovery-"))

    # ------------------------------------------------------------------ registries

    async def backend(self, name: str) -> Backend:
        if name == "local":
            path = self.workdir / "registry.sqlite3"
            return Backend(name, ["--registry", "local", "--local-path", str(path)],
                           cleanup=lambda: defer.succeed(None))
        if name == "etcd":
            from tests.servers.etcd import EtcdServer

            etcd = EtcdServer(self.reactor, "3.5")
            await etcd.start()

            async def stop_etcd() -> None:
                await etcd.stop()
                shutil.rmtree(etcd.workdir, ignore_errors=True)

            return Backend(name, ["--registry", "etcd", "--etcd", etcd.url], stop_etcd)
        if name == "nacos":
            from tests.servers.nacos import NacosServer

            nacos = NacosServer(self.reactor)
            await nacos.start()
            return Backend(name, ["--registry", "nacos", "--nacos", nacos.url],
                           nacos.cleanup)
        raise usage.UsageError(f"unknown registry {name!r}; choose from {REGISTRIES}")

    # ------------------------------------------------------------------ one registry

    async def measure(self, name: str) -> Result:
        try:
            backend = await self.backend(name)
        except unittest.SkipTest as e:  # not installed here
            return Result(name, "?", error=str(e))
        result = Result(name, backend.ttl)
        registry = make_registry(self.reactor, backend.options)
        watcher = Watcher(self.reactor, registry)
        try:
            for round_no in range(1, self.rounds + 1):
                await self.one_round(backend, watcher, result, round_no)
                self.out.write(f"  {name} round {round_no}/{self.rounds}: "
                               f"appear {result.appear.samples[-1]:.3f}s, graceful "
                               f"{result.graceful.samples[-1]:.3f}s, kill -9 "
                               f"{result.killed.samples[-1]:.3f}s\n")
                self.out.flush()
        except Exception as e:
            result.error = f"{type(e).__name__}: {e}"
        finally:
            watcher.watch.stop()
            await registry.close()
            await backend.cleanup()
        return result

    async def jitter(self, backend: Backend) -> None:
        await _sleep(self.reactor, self.rng.uniform(0, backend.poll_period))

    async def start(self, backend: Backend, watcher: Watcher, result: Result,
                    label: str) -> PreciseDaemon:
        await self.jitter(backend)
        daemon = PreciseDaemon(self.reactor, self.workdir, backend.args,
                               name=f"{backend.name}-{label}")
        await daemon.start(registered=2)
        registered = daemon.registered_at()
        address = daemon.address
        seen = await watcher.first(registered - 1.0, lambda a: address in a,
                                   f"{address} appear")
        result.appear.samples.append(seen - registered)
        return daemon

    async def gone(self, backend: Backend, watcher: Watcher, daemon: PreciseDaemon,
                   stop: Callable[[], Any]) -> float:
        await self.jitter(backend)
        address = daemon.address
        stopped_at = self.reactor.seconds()
        stopping = stop()
        seen = await watcher.first(stopped_at, lambda a: address not in a,
                                   f"{address} disappear")
        await stopping
        return seen - stopped_at

    async def one_round(self, backend: Backend, watcher: Watcher, result: Result,
                        round_no: int) -> None:
        for label, cell, how in (("graceful", result.graceful, "terminate"),
                                 ("killed", result.killed, "kill")):
            daemon = await self.start(backend, watcher, result, f"{round_no}-{label}")
            stop = getattr(daemon, how)
            try:
                cell.samples.append(await self.gone(backend, watcher, daemon, stop))
            finally:
                await stop()  # already gone: returns at once

    # ------------------------------------------------------------------ all of them

    async def run(self, names: Sequence[str]) -> list[Result]:
        results = []
        try:
            for name in names:
                self.out.write(f"{name}: starting\n")
                self.out.flush()
                results.append(await self.measure(name))
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return results


def table(results: Sequence[Result], rounds: int) -> str:
    head = ("registry", "ttl", "appear", "graceful stop", "kill -9")
    rows = [head] + [(r.backend, r.ttl, str(r.appear), str(r.graceful), str(r.killed))
                     for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"seconds until a watcher sees the change: median / p99 / max over {rounds} "
             f"rounds (appear: {2 * rounds} samples)"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for r in results:
        if r.error:
            lines.append(f"{r.backend}: {r.error}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registries", default=",".join(REGISTRIES),
                        help="comma-separated: local, etcd, nacos (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per registry (>= 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the jitter")
    args = parser.parse_args(argv)
    args.registries = [name.strip() for name in args.registries.split(",") if name.strip()]
    unknown = set(args.registries) - set(REGISTRIES)
    if unknown or not args.registries:
        parser.error(f"--registries: choose from {', '.join(REGISTRIES)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


async def main(reactor: Any, argv: Sequence[str]) -> int:
    args = parse_args(argv)
    bench = Bench(reactor, args.rounds, random.Random(args.seed), sys.stderr)
    results = await bench.run(args.registries)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(table(results, args.rounds))
    print(f"load average: {load}")
    return 1 if any(r.error for r in results) else 0


def run(argv: Sequence[str]) -> None:
    """Under ``task.react``; exits 1 if a registry could not be measured."""
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)  # the watcher's chatter

    async def go(reactor: Any) -> None:
        raise SystemExit(await main(reactor, argv))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    run(sys.argv[1:])
