"""
Blocking handlers on handler threads: throughput against the theory, and what a fast
method's callers see meanwhile.

    python -m bench.blocking                      # 10 ms sleeps, 64 in flight, 32 threads
    python -m bench.blocking --threads 16 --sleep-ms 20 --duration 3

One ``msrpc`` server process serves ``work.sleep`` (``time.sleep``, marked
``@expose(blocking=True)``), ``work.sleep_inline`` (the same, on the reactor) and
``work.fast`` (returns at once, on the reactor).  One client process (another CPU when
there are two) keeps ``--concurrency`` sleep calls in flight and, on the same
connection, one fast call at a time, whose latency it records.  Runs:

- ``fast alone``: the fast method with nothing else running (its normal latency);
- ``threads``: sleeps on the pool beside the fast probe; the theory is
  ``min(concurrency, threads) / sleep`` calls/s;
- ``inline``: the same sleeps on the reactor (what happens without threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.run import _env, _pick_cpus, _us
from bench.workload import HOST
from msrpc.service import expose


class Work:
    """The served methods; ``sleep`` is the blocking handler under test."""

    @expose(blocking=True)
    def sleep(self, ms: float) -> float:
        return self.sleep_inline(ms)

    def sleep_inline(self, ms: float) -> float:
        """Sleeps ``ms``; returns how long the sleep really took (a busy machine wakes
        threads late, which no pool can make up for)."""
        started = time.perf_counter()
        time.sleep(ms / 1000.0)
        return (time.perf_counter() - started) * 1000.0

    def fast(self) -> str:
        return "ok"


def serve(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from msrpc.server import Server
    from msrpc.threads import ThreadSettings

    server = Server(reactor, f"tcp:0:interface={HOST}", services={"work": Work()},
                    threads=ThreadSettings(size=args.threads, queue=args.concurrency * 4))

    def ready(address: Any) -> None:
        sys.stdout.write(f"READY {address.port}\n")
        sys.stdout.flush()

    server.ready.addCallback(ready)
    reactor.callWhenRunning(server.startService)
    reactor.run()


def load(args: argparse.Namespace) -> None:
    from twisted.internet import defer, task

    from msrpc.client import Client
    from msrpc.loadgen import closed_loop
    from msrpc.registry.static import StaticRegistry

    async def main(reactor: Any) -> None:
        client = Client(reactor, StaticRegistry({"work": [f"{HOST}:{args.port}"]}),
                        timeout=60)
        work = client.proxy("work")
        await work.fast()  # connect first

        slept: list[float] = []

        def busy(duration: float) -> "defer.Deferred[Any]":
            if not args.method:
                return task.deferLater(reactor, duration, lambda: None)
            method = getattr(work, args.method)

            def call() -> "defer.Deferred[Any]":
                return method(args.sleep_ms).addCallback(slept.append)

            return closed_loop(reactor, call, args.concurrency, duration)

        await defer.gatherResults([busy(args.warmup),
                                   closed_loop(reactor, work.fast, 1, args.warmup)])
        del slept[:]
        loaded, probe = await defer.gatherResults([
            busy(args.duration), closed_loop(reactor, work.fast, 1, args.duration)])
        out: dict[str, Any] = {
            "fast_p50_us": probe.percentile(50) * 1e6,
            "fast_p99_us": probe.percentile(99) * 1e6,
            "fast_calls": probe.calls,
            "errors": sum(probe.errors.values()),
        }
        if args.method:
            out["calls_per_s"] = len(loaded.latencies) / loaded.elapsed
            out["slept_ms"] = sum(slept) / len(slept) if slept else 0.0
            out["errors"] += sum(loaded.errors.values())
        print(json.dumps(out), flush=True)
        await client.close()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))


def _worker(role: str, cpu: int | None, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.blocking", role, *(
        ["--cpu", str(cpu)] if cpu is not None else []), *extra]


def drive(args: argparse.Namespace) -> int:
    server_cpu, client_cpu = _pick_cpus(not args.no_pin)
    common = ["--threads", str(args.threads), "--concurrency", str(args.concurrency),
              "--sleep-ms", str(args.sleep_ms), "--duration", str(args.duration),
              "--warmup", str(args.warmup)]
    server = subprocess.Popen(_worker("serve", server_cpu, *common), stdout=subprocess.PIPE,
                              env=_env(), start_new_session=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"server did not start: {line!r}")
        port = line.split()[1]
        rows = []
        for name, method in (("fast alone", ""), (f"threads (pool {args.threads})", "sleep"),
                             ("inline (no threads)", "sleep_inline")):
            done = subprocess.run(_worker("load", client_cpu, *common, "--port", port,
                                          "--method", method),
                                  capture_output=True, env=_env(),
                                  timeout=args.warmup + args.duration + 120)
            if done.returncode != 0:
                raise RuntimeError(f"{name} client failed:\n{done.stderr.decode()[-3000:]}")
            result = json.loads(done.stdout.decode().strip().splitlines()[-1])
            rows.append((name, result))
            print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(10)
    theory = min(args.concurrency, args.threads) / (args.sleep_ms / 1000.0)
    print(f"\nblocking handler: time.sleep({args.sleep_ms:g} ms) with {args.concurrency} calls "
          f"in flight and {args.threads} handler threads: theory {theory:,.0f} calls/s;\n"
          f"a fast method called one at a time on the same connection meanwhile;\n"
          f"{args.warmup:g}s warm-up + {args.duration:g}s per run; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    head = (f"{'run':<22} {'calls/s':>9} {'of theory':>10} {'sleep took':>11} "
            f"{'of possible':>12} {'fast p50':>10} {'fast p99':>10}")
    print(head + "\n" + "-" * len(head))
    for name, r in rows:
        rate = r.get("calls_per_s")
        cells = ["-"] * 4
        if rate:
            slots = min(args.concurrency, args.threads if "inline" not in name else 1)
            possible = slots / (r["slept_ms"] / 1000.0)
            cells = [f"{rate:,.0f}", f"{rate / theory:.2f}", f"{r['slept_ms']:.2f} ms",
                     f"{rate / possible:.2f}"]
        print(f"{name:<22} {cells[0]:>9} {cells[1]:>10} {cells[2]:>11} {cells[3]:>12} "
              f"{_us(r['fast_p50_us']):>10} {_us(r['fast_p99_us']):>10}"
              + (f"  ERRORS {r['errors']}" if r["errors"] else ""))
    print("\nsleep took: how long time.sleep really lasted in the handler (a busy machine "
          "wakes threads late);\nof possible: calls/s against what sleeps that long allow "
          "(threads / sleep took), the pool's own efficiency.")
    return 1 if any(r["errors"] for _, r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.blocking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", nargs="?", default="drive", choices=("drive", "serve", "load"))
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--sleep-ms", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--method", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.role == "serve":
        serve(args)
        return 0
    if args.role == "load":
        load(args)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
