"""
Big registries: a client facing 1,000 services x 3 instances, per registry backend.

    python -m bench.registries [--registries etcd,nacos-v1,nacos-v3] [--services 1000]
                               [--instances 3] [--steady 45]

For each registry a real server (the tests' own, from ``tests/servers``: etcd 3.5, Nacos
2.3.2 for the v1 API and 3.1.0 with its v1 switch off for v3) is started on loopback and
seeded through its HTTP API directly (32 requests in flight; Nacos instances carry a 1 h
heartbeat timeout so that nobody has to beat for them).  Then:

baseline
    the same lookups as bare treq requests, 16 in flight, nothing done with the answers:
    the floor for listing every service once;
cold resolve
    a fresh ``Client`` on a fresh registry resolves every service at once, as the first
    call to each would (its resolver looks each up, then watches it); seconds until all are
    ready, and whether each has every instance;
memory
    what the client and its registry hold afterwards (tracemalloc, a second fresh client:
    tracing slows the timed one down);
steady
    HTTP requests per second that the watching client sends to the registry over
    ``--steady`` seconds after the resolve, also per 10 watched services, and its sockets;
change seen
    one more instance registered for one service at steady state: seconds until the
    client's cache lists it.

Figures are for this machine at this moment (``load average`` is printed); the table also
gives cold resolve / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path[:1] = [str(Path(__file__).resolve().parent.parent)]

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner

from msrpc.client import Client
from msrpc.registry.etcd_api import b64, prefix_end
from msrpc.registry.http import make_http_client, make_pool
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistry

REGISTRIES = ("etcd", "nacos-v1", "nacos-v3")
SEED_IN_FLIGHT = 32
BASELINE_IN_FLIGHT = 16
#: Nacos instances seeded for the bench never beat: a 1 h timeout keeps them healthy.
QUIET = {"preserved.heart.beat.interval": "3600000",
         "preserved.heart.beat.timeout": "3600000",
         "preserved.ip.delete.timeout": "3600000"}


class CountingHTTP:
    """A treq-like client that counts the requests it sends (etcd posts, Nacos requests)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent = 0

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        return self.inner.request(*args, **kwargs)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        return self.inner.post(*args, **kwargs)


@dataclass
class Row:
    registry: str
    services: int
    instances: int
    seed_s: float = 0.0
    baseline_s: float = 0.0
    resolve_s: float = 0.0
    resolve_cpu_s: float = 0.0
    complete: bool = False
    memory_mib: float = 0.0
    steady_rps: float = 0.0
    sockets: int = 0
    change_s: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_10(self) -> float:
        return self.steady_rps / (self.services / 10)


async def bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], in_flight: int) -> None:
    """Run ``jobs`` with at most ``in_flight`` at a time; the first failure fails all."""
    semaphore = defer.DeferredSemaphore(in_flight)
    await defer.gatherResults([semaphore.run(lambda job=job: defer.Deferred.fromCoroutine(
        job())) for job in jobs], consumeErrors=True)


def sockets() -> int:
    """Open sockets of this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def service_names(count: int) -> list[str]:
    return [f"bench-{i:04d}" for i in range(count)]


def instance(service: str, s: int, i: int) -> ServiceInstance:
    return ServiceInstance(service, f"10.{i}.{s // 250}.{s % 250 + 1}", 9000 + i,
                           metadata=dict(QUIET))


# --------------------------------------------------------------------------- backends


class Backend:
    """One server: seed it, look it up bare, and make msrpc registries on it."""

    name = ""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.pool = make_pool(reactor)
        self.http = make_http_client(reactor, pool=self.pool)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        await self.pool.closeCachedConnections()

    async def add(self, inst: ServiceInstance) -> None:
        raise NotImplementedError

    async def bare_lookup(self, service: str) -> None:
        raise NotImplementedError

    def registry(self, http: Any) -> IRegistry:
        raise NotImplementedError

    async def close_registry(self, registry: IRegistry) -> None:
        await registry.close()


async def _ok(response: Any, what: str) -> bytes:
    import treq

    body: bytes = await treq.content(response)
    if response.code != 200:
        raise RuntimeError(f"{what}: HTTP {response.code}: {body[:200]!r}")
    return body


class Etcd(Backend):
    name = "etcd"

    async def start(self) -> None:
        from tests.servers.etcd import EtcdServer

        self.server = EtcdServer(self.reactor, "3.5")
        await self.server.start()
        self.url = self.server.url

    async def stop(self) -> None:
        import shutil

        await super().stop()
        await self.server.stop()
        shutil.rmtree(self.server.workdir, ignore_errors=True)

    async def add(self, inst: ServiceInstance) -> None:
        key = f"/msrpc/services/{inst.service}/{inst.instance_id}"
        body = json.dumps({"key": b64(key), "value": b64(inst.to_json())}).encode()
        await _ok(await self.http.post(self.url + "/v3/kv/put", data=body), "put")

    async def bare_lookup(self, service: str) -> None:
        prefix = f"/msrpc/services/{service}/".encode()
        body = json.dumps({"key": b64(prefix), "range_end": b64(prefix_end(prefix))}).encode()
        await _ok(await self.http.post(self.url + "/v3/kv/range", data=body), "range")

    def registry(self, http: Any) -> IRegistry:
        from msrpc.registry.etcd import EtcdRegistry

        return EtcdRegistry(self.reactor, self.url, http=http)


class Nacos(Backend):
    def __init__(self, reactor: Any, dialect: str) -> None:
        super().__init__(reactor)
        self.dialect = dialect
        self.name = f"nacos-{dialect}"

    async def start(self) -> None:
        from tests.servers.nacos import CONFIGS, NacosServer

        self.server = NacosServer(self.reactor,
                                  config=CONFIGS["2.3.2" if self.dialect == "v1" else "3.1.0"])
        await self.server.start()
        self.base = self.server.api

    async def stop(self) -> None:
        await super().stop()
        await self.server.cleanup()

    async def add(self, inst: ServiceInstance) -> None:
        path = "/v1/ns/instance" if self.dialect == "v1" else "/v3/client/ns/instance"
        form = {"serviceName": inst.service, "ip": inst.host, "port": str(inst.port),
                "ephemeral": "true", "metadata": json.dumps(dict(inst.metadata))}
        await _ok(await self.http.post(self.base + path, data=form), "register")

    async def bare_lookup(self, service: str) -> None:
        path = "/v1/ns/instance/list" if self.dialect == "v1" else "/v3/client/ns/instance/list"
        await _ok(await self.http.get(self.base + path, params={"serviceName": service}),
                  "list")

    def registry(self, http: Any) -> IRegistry:
        from msrpc.registry.nacos import NacosRegistry

        return NacosRegistry(self.reactor, self.server.url, http=http, api=self.dialect)


def backend(reactor: Any, name: str) -> Backend:
    if name == "etcd":
        return Etcd(reactor)
    return Nacos(reactor, name.split("-", 1)[1])


# --------------------------------------------------------------------------- measuring


async def resolve_all(client: Client, services: Sequence[str]) -> list[Any]:
    resolver = client._resolver  # what every first call goes through
    return list(await defer.gatherResults([resolver.resolve(s) for s in services],
                                          consumeErrors=True))


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def measure(reactor: Any, back: Backend, services: list[str], instances: int,
                  steady: float, out: Any) -> Row:
    row = Row(back.name, len(services), instances)
    say = lambda text: (out.write(f"{back.name}: {text}\n"), out.flush())  # noqa: E731
    await back.start()
    try:
        started = time.perf_counter()
        await bounded([lambda s=s, n=n, i=i: back.add(instance(s, n, i))
                       for n, s in enumerate(services) for i in range(instances)],
                      SEED_IN_FLIGHT)
        row.seed_s = time.perf_counter() - started
        say(f"seeded {len(services)} x {instances} in {row.seed_s:.1f} s")
        await _sleep(reactor, 2.0)  # Nacos refreshes its lists half a second after a change

        started = time.perf_counter()
        await bounded([lambda s=s: back.bare_lookup(s) for s in services], BASELINE_IN_FLIGHT)
        row.baseline_s = time.perf_counter() - started

        http = CountingHTTP(make_http_client(reactor, pool=(pool := make_pool(reactor))))
        registry = back.registry(http)
        client = Client(reactor, registry)
        started, cpu = time.perf_counter(), time.process_time()
        views = await resolve_all(client, services)
        row.resolve_s = time.perf_counter() - started
        row.resolve_cpu_s = time.process_time() - cpu
        row.complete = all(len(v.instances) == instances for v in views)
        say(f"resolved cold in {row.resolve_s:.2f} s, {row.resolve_cpu_s:.2f} s of our CPU "
            f"(bare lookups {row.baseline_s:.2f} s)")

        await _sleep(reactor, 5.0)  # let the watches' first polls and streams settle
        sent, started = http.sent, time.perf_counter()
        await _sleep(reactor, steady)
        row.steady_rps = (http.sent - sent) / (time.perf_counter() - started)
        row.sockets = sockets()
        say(f"steady: {row.steady_rps:.1f} requests/s, {row.sockets} sockets")

        target = services[len(services) // 2]
        view = client._resolver.views[target]
        started = time.perf_counter()
        await back.add(instance(target, len(services) // 2, instances))
        while len(view.instances) <= instances and time.perf_counter() - started < 60:
            await _sleep(reactor, 0.005)
        if len(view.instances) > instances:
            row.change_s = time.perf_counter() - started
        await client.close()
        await back.close_registry(registry)
        await pool.closeCachedConnections()
        await _sleep(reactor, 0.5)
        row.sockets -= sockets()  # what the watching client held

        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        http2 = CountingHTTP(make_http_client(reactor, pool=(pool := make_pool(reactor))))
        registry = back.registry(http2)
        client = Client(reactor, registry)
        await resolve_all(client, services)
        row.memory_mib = (tracemalloc.get_traced_memory()[0] - before) / 2 ** 20
        tracemalloc.stop()
        await client.close()
        await back.close_registry(registry)
        await pool.closeCachedConnections()
    finally:
        await back.stop()
    return row


def table(rows: Sequence[Row]) -> str:
    head = ("registry", "services", "cold resolve", "its CPU", "bare lookups", "ratio", "memory",
            "steady req/s", "per 10 svc", "sockets", "change seen")
    lines = [head]
    for r in rows:
        lines.append((
            r.registry, f"{r.services}x{r.instances}",
            f"{r.resolve_s:.2f} s" + ("" if r.complete else " (incomplete!)"),
            f"{r.resolve_cpu_s:.2f} s", f"{r.baseline_s:.2f} s",
            f"{r.resolve_s / r.baseline_s:.2f}" if r.baseline_s else "-",
            f"{r.memory_mib:.1f} MiB", f"{r.steady_rps:.1f}", f"{r.per_10:.2f}",
            str(r.sockets), f"{r.change_s:.3f} s" if r.change_s is not None else "not seen"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.registries", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registries", default=",".join(REGISTRIES),
                        help=f"comma-separated: {', '.join(REGISTRIES)} (default: all)")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--steady", type=float, default=45.0,
                        help="seconds of steady state to count requests over")
    args = parser.parse_args(argv)
    args.registries = [n.strip() for n in args.registries.split(",") if n.strip()]
    if not args.registries or set(args.registries) - set(REGISTRIES):
        parser.error(f"--registries: choose from {', '.join(REGISTRIES)}")
    if args.services < 1 or args.instances < 1 or args.steady <= 0:
        parser.error("--services, --instances and --steady must be positive")
    return args


async def main(reactor: Any, argv: Sequence[str]) -> int:
    args = parse_args(argv)
    services = service_names(args.services)
    rows = []
    for name in args.registries:
        rows.append(await measure(reactor, backend(reactor, name), services, args.instances,
                                  args.steady, sys.stderr))
    print(table(rows))
    print("load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0 if all(r.complete for r in rows) else 1


def run(argv: Sequence[str]) -> None:
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)  # registry chatter

    async def go(reactor: Any) -> None:
        try:
            code = await main(reactor, argv)
        except Exception:
            import traceback

            traceback.print_exc()
            code = 2
        raise SystemExit(code)

    random.seed(0)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    run(sys.argv[1:])
