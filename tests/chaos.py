"""
Chaos run (``scripts/chaos``): three ``twistd msrpc`` servers registered in a real registry,
a client in this process driving a steady mixed load (``tests.servers.load``), while
servers are SIGKILLed and restarted, stopped gracefully and restarted, and the registry
itself is restarted:

- ``local``: the SQLite file is deleted (``rm registry.sqlite3*``) or replaced by an
  empty database, so registrations come back only through the servers' heartbeats;
- ``etcd``: the etcd process is stopped and, after a short outage, restarted on its data
  directory (same ports).

Everything runs on loopback with the registries' default timers.  At the end it prints
what became of the calls and exits non-zero if a call was lost (its Deferred never
fired), an idempotent call failed, a call finished past its deadline (plus slack), or a
call failed with an error outside DESIGN.md section 4.  Every child process is stopped on
the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import traceback
import unittest
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from twisted.internet import defer, task
from twisted.logger import (
    FileLogObserver, formatEventAsClassicLogText, globalLogBeginner, globalLogPublisher,
)

from msrpc.client import Client
from msrpc.registry.etcd import EtcdRegistry
from msrpc.registry.interface import IRegistry
from msrpc.registry.local import LocalRegistry, Store
from tests.servers import wait_for
from tests.servers.load import DEFAULT_SLACK, CallSpec, Load, Report
from tests.servers.msrpcd import MsrpcDaemon

SERVERS = 3
#: Services of the demo server (``twistd msrpc`` without ``--service``): echo and arith.
REGISTRATIONS = 2


def mixed_call(i: int) -> CallSpec:
    """Five in eight calls idempotent; sync and async (in flight for 20 ms) handlers."""
    kind = i % 8
    if kind in (0, 6):
        return CallSpec("arith", "slow_add", (i, 1), {"delay": 0.02})
    if kind == 4:
        return CallSpec("arith", "div", (i, 2))
    if kind == 3:
        return CallSpec("arith", "slow_add", (i, 2), {"delay": 0.02}, idempotent=True)
    if kind == 2:
        return CallSpec("arith", "add", (i, 3), idempotent=True)
    if kind == 7:
        return CallSpec("arith", "mul", (i, 2), idempotent=True)
    return CallSpec("echo", "echo", (f"value-{i}",), idempotent=True)


def sleep(reactor: Any, seconds: float) -> "defer.Deferred[None]":
    return task.deferLater(reactor, seconds, lambda: None)


class Backend(Protocol):
    name: str

    def server_args(self) -> list[str]: ...

    def client_registry(self) -> IRegistry: ...

    async def start(self) -> None: ...

    async def restart(self) -> str: ...

    async def stop(self) -> None: ...


class LocalBackend:
    """The SQLite file in the run's directory."""

    name = "local"

    def __init__(self, reactor: Any, workdir: Path) -> None:
        self.reactor = reactor
        self.path = workdir / "registry.sqlite3"
        self.restarts = 0

    def server_args(self) -> list[str]:
        return ["--registry", "local", "--local-path", str(self.path)]

    def client_registry(self) -> IRegistry:
        return LocalRegistry(self.reactor, self.path)

    async def start(self) -> None:
        pass

    async def restart(self) -> str:
        """Alternately delete the file, and replace it with an empty database."""
        self.restarts += 1
        self._remove()
        if self.restarts % 2:
            return f"deleted {self.path.name}* (rm)"
        fresh = self.path.with_name("fresh.sqlite3")
        store = Store(fresh)
        store.services(0.0)  # creates the schema, no rows
        store.close()
        os.replace(fresh, self.path)
        return f"replaced {self.path.name} with an empty database"

    def _remove(self) -> None:
        # The database first: every process notices the new file identity and reopens.
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass

    async def stop(self) -> None:
        pass


class EtcdBackend:
    """A single etcd member; restarts keep its data directory and ports."""

    name = "etcd"
    #: Seconds etcd stays down on each restart.
    outage = 2.0

    def __init__(self, reactor: Any, processes: "Processes", server: Any) -> None:
        self.reactor = reactor
        self.processes = processes
        self.server = server

    @classmethod
    def available(cls) -> Optional[str]:
        """The installed etcd version to use, or None."""
        from tests.servers.etcd import etcd_binaries

        for version in ("3.5", "3.4"):
            try:
                etcd_binaries(version)
                return version
            except (unittest.SkipTest, AssertionError):
                continue
        return None

    @classmethod
    def make(cls, reactor: Any, processes: "Processes", workdir: Path,
             version: str) -> "EtcdBackend":
        from tests.servers.etcd import EtcdServer

        return cls(reactor, processes, EtcdServer(reactor, version, workdir=workdir))

    def server_args(self) -> list[str]:
        return ["--registry", "etcd", "--etcd", self.server.url]

    def client_registry(self) -> IRegistry:
        return EtcdRegistry(self.reactor, self.server.url)

    async def start(self) -> None:
        await self.server.start()

    async def restart(self) -> str:
        await self.server.stop()
        await sleep(self.reactor, self.outage)
        self.processes.check_running()
        await self.server.start()
        return f"etcd stopped, down {self.outage:g}s, restarted on its data dir"

    async def stop(self) -> None:
        await self.server.stop()


class ChaosRun:
    """One run against one registry backend."""

    def __init__(self, reactor: Any, backend: Backend, workdir: Path,
                 args: argparse.Namespace, processes: "Processes") -> None:
        self.reactor = reactor
        self.backend = backend
        self.workdir = workdir
        self.args = args
        self.processes = processes
        self.random = random.Random(args.seed)
        self.servers: list[MsrpcDaemon] = []
        self.count = 0
        self.load: Optional[Load] = None
        self.client: Optional[Client] = None

    def say(self, text: str) -> None:
        at = f"+{self.load.elapsed():5.1f}s " if self.load is not None else "        "
        print(f"[{self.backend.name}] {at}{text}", flush=True)

    async def start_server(self) -> MsrpcDaemon:
        self.processes.check_running()
        self.count += 1
        server = MsrpcDaemon(self.reactor, self.workdir, self.backend.server_args(),
                             name=f"server{self.count}")
        self.processes.add(server)
        await server.start(registered=REGISTRATIONS)
        self.servers.append(server)
        return server

    async def run(self) -> Report:
        await self.backend.start()
        self.processes.add_backend(self.backend)
        await defer.gatherResults([defer.Deferred.fromCoroutine(self.start_server())
                                   for _ in range(SERVERS)], consumeErrors=True)
        registry = self.backend.client_registry()
        self.client = client = Client(self.reactor, registry, timeout=self.args.timeout)
        self.processes.closing(registry.close)
        self.processes.closing(client.close)  # before the registry's
        await self.listed(registry)
        self.say(f"{SERVERS} servers up ({', '.join(s.address for s in self.servers)}); "
                 f"load: {self.args.rate:g} calls/s for {self.args.duration:g}s, "
                 f"deadline {self.args.timeout:g}s, at most {self.args.in_flight} in flight")
        self.load = Load(self.reactor, client, mixed_call, rate=self.args.rate,
                         timeout=self.args.timeout, max_in_flight=self.args.in_flight,
                         duration=self.args.duration, slack=self.args.slack)
        running = self.load.run()
        await self.chaos()
        report = await running
        self.say("load over")
        return report

    async def listed(self, registry: IRegistry) -> None:
        ports = sorted(s.port for s in self.servers)  # type: ignore[type-var]

        async def check() -> bool:
            return sorted(i.port for i in await registry.lookup("arith")) == ports

        await wait_for(self.reactor, check, 30.0, f"{SERVERS} servers in the registry")

    async def chaos(self) -> None:
        """One action every ``interval`` seconds, none in the last seconds of the load."""
        assert self.load is not None
        actions: list[Callable[[], Any]] = [self.kill, self.restart_registry, self.kill,
                                            self.graceful]
        step = 0
        while True:
            at = (step + 1) * self.args.interval
            if at > self.args.duration - 3.0:
                return
            await sleep(self.reactor, max(0.0, at - self.load.elapsed()))
            await actions[step % len(actions)]()
            step += 1

    async def kill(self) -> None:
        victim = self.random.choice(self.servers)
        self.servers.remove(victim)
        pid = victim.process.pid if victim.process else "?"
        self.say(f"SIGKILL {victim.log_path.stem} (pid {pid}, {victim.address})")
        await victim.kill()
        replacement = await self.start_server()
        self.say(f"  restarted as {replacement.log_path.stem} on {replacement.address}")

    async def graceful(self) -> None:
        victim = self.random.choice(self.servers)
        self.servers.remove(victim)
        started = self.reactor.seconds()
        self.say(f"SIGTERM {victim.log_path.stem} ({victim.address})")
        await victim.terminate()
        took = self.reactor.seconds() - started
        replacement = await self.start_server()
        self.say(f"  exited after {took:.1f}s; restarted as {replacement.log_path.stem} on "
                 f"{replacement.address}")

    async def restart_registry(self) -> None:
        self.say("registry restart")
        what = await self.backend.restart()
        self.say(f"  {what}")

    def print_report(self, report: Report) -> list[str]:
        """Print the numbers; return the problems (empty when the run is clean)."""
        idempotent = [o for o in report.outcomes if o.spec.idempotent]
        by_class = ", ".join(f"{name}={n}"
                             for name, n in sorted(report.failed_by_class.items())) or "-"
        plain_failed = [o for o in report.failures if not o.spec.idempotent]
        stats = dict(sorted(self.client.stats.items())) if self.client else {}
        lines = [
            f"=== chaos summary: {self.backend.name} registry, {self.args.duration:g}s at "
            f"{self.args.rate:g} calls/s, deadline {self.args.timeout:g}s ===",
            f"calls made               {report.made} (idempotent {len(idempotent)}, "
            f"non-idempotent {report.made - len(idempotent)})",
            f"succeeded                {report.succeeded}",
            f"failed                   {len(report.failures)} by class: {by_class}",
            f"  non-idempotent failed  {len(plain_failed)}",
            f"  idempotent failed      {len(report.idempotent_failures)}",
            f"retried                  {report.retries}",
            f"max latency              {report.max_latency * 1000:.1f} ms "
            f"(p50 {report.percentile(50) * 1000:.1f} ms, p99 "
            f"{report.percentile(99) * 1000:.1f} ms)",
            f"past deadline (+{report.slack:g}s)  {len(report.late)}",
            f"lost (never fired)       {len(report.lost)}",
            f"undocumented errors      {len(report.undocumented)}",
            f"client.stats             {stats}",
        ]
        problems = report.problems()
        lines.append(f"verdict                  {'FAIL' if problems else 'OK'}")
        lines.extend(f"  - {p}" for p in problems)
        print("\n".join(lines), flush=True)
        return problems


class Processes:
    """Everything to stop on the way out, whatever happens (children, client, registry)."""

    def __init__(self) -> None:
        self.daemons: list[MsrpcDaemon] = []
        self.backends: list[Backend] = []
        self.closers: list[Callable[[], Any]] = []
        self.workdir: Optional[Path] = None
        self.stopping = False

    def check_running(self) -> None:
        """Start nothing new once stopping (interrupted)."""
        if self.stopping:
            raise RuntimeError("interrupted")

    def add(self, daemon: MsrpcDaemon) -> None:
        self.daemons.append(daemon)

    def add_backend(self, backend: Backend) -> None:
        self.backends.append(backend)

    def closing(self, close: Callable[[], Any]) -> None:
        self.closers.append(close)

    async def stop_all(self) -> None:
        daemons, self.daemons = self.daemons, []
        running = [d for d in daemons if d.process is not None and d.process.running]
        await defer.DeferredList([d.terminate(grace=5.0) for d in running],
                                 consumeErrors=True)
        closers, self.closers = self.closers, []
        for close in reversed(closers):
            try:
                await defer.maybeDeferred(close)
            except Exception:
                traceback.print_exc()
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                await backend.stop()
            except Exception:
                traceback.print_exc()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/chaos",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", choices=("all", "local", "etcd"), default="all",
                        help="registry to run against (all: local, then etcd when installed)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of load per registry (default 60)")
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline of each call")
    parser.add_argument("--in-flight", type=int, default=32, help="most calls in flight")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between two chaos actions")
    parser.add_argument("--slack", type=float, default=DEFAULT_SLACK,
                        help="seconds past its deadline a call may finish")
    parser.add_argument("--seed", type=int, default=1, help="which servers get killed")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directories (logs); kept anyway on failure")
    return parser.parse_args(argv)


async def main(reactor: Any, args: argparse.Namespace, processes: Processes) -> int:
    backends: list[tuple[str, Callable[[Path], Backend]]] = []
    if args.registry in ("all", "local"):
        backends.append(("local", lambda d: LocalBackend(reactor, d)))
    if args.registry in ("all", "etcd"):
        version = EtcdBackend.available()
        if version is not None:
            backends.append(("etcd", lambda d: EtcdBackend.make(reactor, processes, d,
                                                                version)))
        elif args.registry == "etcd":
            print("chaos: etcd is not installed (scripts/install-etcd)", file=sys.stderr)
            return 2
        else:
            print("chaos: etcd is not installed (scripts/install-etcd): local registry only",
                  flush=True)
    failed = False
    for name, make in backends:
        workdir = processes.workdir = Path(tempfile.mkdtemp(prefix=f"msrpc-chaos-{name}-"))
        log = open(workdir / "client.log", "w")
        observer = FileLogObserver(log, formatEventAsClassicLogText)
        globalLogPublisher.addObserver(observer)
        run = ChaosRun(reactor, make(workdir), workdir, args, processes)
        problems: list[str] = ["did not finish"]
        try:
            report = await run.run()
            problems = run.print_report(report)
        finally:
            await processes.stop_all()
            globalLogPublisher.removeObserver(observer)
            log.close()
            if problems or args.keep:
                print(f"[{name}] logs kept in {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        failed = failed or bool(problems)
    return 1 if failed else 0


def run(argv: list[str]) -> int:
    """Run under ``task.react``; the exit status of ``main``, or 130 if interrupted."""
    args = parse_args(argv)
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)  # each run logs to a file
    processes = Processes()
    finished = False

    def shutting_down() -> "defer.Deferred[None]":
        # Also on Ctrl-C or SIGTERM: stop every child before the reactor goes.
        processes.stopping = True
        return defer.Deferred.fromCoroutine(processes.stop_all())

    async def go(reactor: Any) -> None:
        nonlocal finished
        reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
        try:
            status = await main(reactor, args, processes)
        except Exception:
            if processes.stopping:
                return  # interrupted: the error is the interruption's
            traceback.print_exc()
            status = 2
        finished = True
        raise SystemExit(status)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    except SystemExit as exit:
        if finished:
            return int(exit.code or 0)
    print(f"chaos: interrupted; child processes stopped; logs in {processes.workdir}",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
