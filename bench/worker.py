"""
One benchmark process: a server or a client of one system.

    python -m bench.worker server NAME[@REACTOR] [--port 0] [--cpu N]
        prints "READY <port>" on stdout once accepting, then serves until
        killed or until its stdin closes (the driver died).
    python -m bench.worker client NAME --port P --concurrency C
        --duration S --warmup S --max-calls N [--cpu N]
        prints one JSON object (bench.stats.Recorder.summary) on stdout.
    Both take --payload BYTES --kind bytes|str and --compression none|gzip|zstd
    (bench.workload.configure); a system that cannot carry them exits with an error.
        A client stops by itself: after its run, and in any case (SIGALRM)
        a while after its run should have ended.

Started by bench/run.py; usable by hand to debug one system.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading

from bench.workload import HOST


def _pin(cpu: int | None) -> None:
    # Before the system is imported, so every thread it starts inherits it.
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _exit_when_stdin_closes() -> None:
    def watch() -> None:
        # os.read on the raw descriptor: no buffered-reader lock that could
        # stall interpreter shutdown.
        try:
            while os.read(0, 4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    # Nobody reads stdout after the ready line: send stray output to stderr
    # rather than risk blocking on a full pipe.
    os.dup2(2, 1)


def _check_supported(system: object, name: str, payload: int, compression: str) -> None:
    """Refuse, before any measurement, a workload the system cannot carry."""
    max_payload = getattr(system, "MAX_PAYLOAD", None)
    if max_payload is not None and payload > max_payload:
        sys.exit(f"{name} cannot carry a {payload}-byte payload (at most {max_payload})")
    if compression not in getattr(system, "COMPRESSIONS", ("none",)):
        sys.exit(f"{name} does not support --compression {compression}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("system")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-calls", type=int, default=1_000_000)
    parser.add_argument("--watch-stdin", action="store_true")
    parser.add_argument("--payload", type=int, default=0)
    parser.add_argument("--kind", choices=("bytes", "str"), default="bytes")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--connections", type=int, default=1,
                        help="client: connections the calls are spread over")
    parser.add_argument("--reuse-port", action="store_true",
                        help="server: bind with SO_REUSEPORT (several servers, one port)")
    args = parser.parse_args(argv)

    _pin(args.cpu)
    if args.watch_stdin:
        _exit_when_stdin_closes()

    from bench import reactors, workload
    from bench.systems import load_system

    name, reactor = reactors.split(args.system)
    reactors.install(reactor)
    workload.configure(args.payload, args.kind, args.compression)
    workload.REUSE_PORT = args.reuse_port
    system = load_system(name)
    _check_supported(system, name, args.payload, args.compression)
    if args.role == "server":
        system.serve(args.host, args.port, _ready)
        return

    from bench.stats import Recorder

    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # default action: terminate
    signal.alarm(math.ceil(args.warmup + args.duration) + 60)
    rec = Recorder(args.warmup, args.duration, args.max_calls)
    extra = {"connections": args.connections} if args.connections > 1 else {}
    system.load(args.host, args.port, rec, args.concurrency, **extra)
    signal.alarm(0)
    summary = rec.summary()
    summary.update(system=args.system, concurrency=args.concurrency)
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
