"""
Many connections: N idle client connections to one server, held by several client
processes, msrpc next to the bare-Twisted baseline.

    python -m bench.connections                          # 10,000 from 4 processes
    python -m bench.connections --connections 2000 --clients 2 --idle 8

For each system: the server process's resident memory before and after the N
connections (the difference divided by N: memory per idle connection), its CPU while they
stay idle (for msrpc: the one sweep that checks keepalive, idle, frame and write
timeouts, every 7.5 s with the defaults), and a fresh client's latency at one call in
flight (p50/p99), first alone, then while the N connections are open.

Each held connection has made one echo call and then stays silent, as a client that
called once and keeps its connection.  Every process raises its own descriptor limit
(RLIMIT_NOFILE) to what it needs, up to the hard limit; msrpc itself never does.  The
msrpc server runs with ``--max-connections`` above N (the default is 10,000).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[:1] = [str(Path(__file__).resolve().parent.parent)]

from bench.run import _busy_cpu_s, _env, _own_cpu_s, _us
from bench.workload import HOST, request

READY_TIMEOUT = 60.0


def raise_descriptor_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


# ------------------------------------------------------------------------ the server


def serve(system: str, connections: int) -> None:
    raise_descriptor_limit(connections + 1000)
    from twisted.internet import reactor

    def ready(port: int) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    if system == "msrpc":
        from bench.systems.msrpc import Echo
        from msrpc.server import Server, ServerLimits

        server = Server(reactor, f"tcp:0:interface={HOST}", services={"echo": Echo()},
                        limits=ServerLimits(max_connections=connections + 100))
        server.startService()
        server.ready.addCallback(lambda address: ready(address.port))
    elif system == "baseline":
        from bench.systems import baseline

        baseline.listen(reactor, HOST, 0).addCallback(ready)
    else:
        raise SystemExit(f"bench.connections runs msrpc and baseline, not {system}")
    reactor.run()


# ------------------------------------------------------------------------ the held connections


def _call_frame(system: str, i: int) -> bytes:
    if system == "msrpc":
        from msrpc.codec import MsgpackCodec
        from msrpc.wire import REQUEST, encode_frame

        body = MsgpackCodec().encode({"service": "echo", "method": "echo",
                                      "args": [request(i)], "meta": {"deadline": 30_000}})
        return encode_frame(REQUEST, 1, 2, 1, body)
    import msgpack

    body = msgpack.packb([i, request(i)])
    return struct.pack("!I", len(body)) + body


def _read_reply(sock: socket.socket, system: str) -> None:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data

    if system == "msrpc":
        header = exactly(17)
        exactly(struct.unpack_from(">I", header, 2)[0] - 17)
    else:
        exactly(struct.unpack("!I", exactly(4))[0])


def hold(system: str, port: int, count: int) -> None:
    """Open ``count`` connections, one echo call on each, then hold them until stdin
    closes (the driver is done or gone)."""
    raise_descriptor_limit(count + 100)
    held = []
    for i in range(count):
        sock = socket.create_connection((HOST, port), timeout=30)
        sock.sendall(_call_frame(system, i))
        _read_reply(sock, system)
        held.append(sock)
    sys.stdout.write(f"HELD {len(held)}\n")
    sys.stdout.flush()
    while os.read(0, 4096):
        pass


# ------------------------------------------------------------------------ the driver


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.connections", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=tempfile.TemporaryFile(), env=_env(),
                            start_new_session=True)


def _expect(proc: subprocess.Popen[bytes], word: bytes) -> bytes:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(word):
        proc.kill()
        raise RuntimeError(f"expected {word!r}, got {line!r}")
    return line


def probe(system: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh client process, one call in flight, as bench.run measures c=1."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.worker", "client", system, "--host", HOST, "--port",
         str(port), "--concurrency", "1", "--duration", str(args.probe), "--warmup", "0.5"],
        capture_output=True, env=_env(), timeout=args.probe + 60)
    if done.returncode != 0:
        raise RuntimeError(f"probe failed: {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def measure(system: str, args: argparse.Namespace) -> dict[str, Any]:
    server = _spawn("serve", system, "--connections", str(args.connections))
    holders: list[subprocess.Popen[bytes]] = []
    try:
        port = int(_expect(server, b"READY").split()[1])
        alone = probe(system, port, args)  # also warms the server's code paths up
        time.sleep(1.0)
        rss0 = _rss_kib(server.pid)
        share = [args.connections // args.clients + (i < args.connections % args.clients)
                 for i in range(args.clients)]
        started = time.monotonic()
        holders = [_spawn("hold", system, "--port", str(port), "--count", str(n))
                   for n in share if n]
        for holder in holders:
            _expect(holder, b"HELD")
        connect_s = time.monotonic() - started
        time.sleep(args.settle)
        rss1 = _rss_kib(server.pid)
        cpu0, t0 = _cpu_s(server.pid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu = (_cpu_s(server.pid) - cpu0) / (time.monotonic() - t0)
        loaded = probe(system, port, args)
        return {"system": system, "connections": args.connections, "connect_s": connect_s,
                "rss_before_kib": rss0, "rss_after_kib": rss1,
                "per_connection_kib": (rss1 - rss0) / args.connections,
                "idle_cpu": idle_cpu, "alone": alone, "loaded": loaded}
    finally:
        for proc in holders + [server]:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
        for proc in holders + [server]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def table(rows: list[dict[str, Any]]) -> str:
    head = ["system", "connections", "RSS before", "RSS after", "per connection",
            "idle CPU", "p50 alone", "p99 alone", "p50 loaded", "p99 loaded"]
    body = [[r["system"], f"{r['connections']:,}", f"{r['rss_before_kib'] / 1024:,.1f} MiB",
             f"{r['rss_after_kib'] / 1024:,.1f} MiB", f"{r['per_connection_kib']:.1f} KiB",
             f"{100 * r['idle_cpu']:.2f}%", _us(r["alone"]["p50_us"]),
             _us(r["alone"]["p99_us"]), _us(r["loaded"]["p50_us"]),
             _us(r["loaded"]["p99_us"])] for r in rows]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", nargs="?", choices=("serve", "hold"), help=argparse.SUPPRESS)
    p.add_argument("system", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--systems", default="baseline,msrpc")
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=4, help="processes holding them")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds after the last connection before reading memory")
    p.add_argument("--idle", type=float, default=16.0,
                   help="seconds of idle CPU measured (msrpc sweeps every 7.5 s)")
    p.add_argument("--probe", type=float, default=3.0, help="seconds of each probe")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.role == "serve":
        serve(args.system, args.connections)
        return 0
    if args.role == "hold":
        hold(args.system, args.port, args.count)
        return 0
    busy0, own0, started = _busy_cpu_s(), _own_cpu_s(), time.monotonic()
    rows = []
    for system in args.systems.split(","):
        row = measure(system, args)
        rows.append(row)
        print(f"{system}: {row['connections']:,} connections in {row['connect_s']:.1f}s, "
              f"{row['per_connection_kib']:.1f} KiB each, idle CPU "
              f"{100 * row['idle_cpu']:.2f}%, fresh client p99 "
              f"{_us(row['loaded']['p99_us'])}", file=sys.stderr, flush=True)
    wall = time.monotonic() - started
    busy1 = _busy_cpu_s()
    other = (max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0)) / wall
             if busy0 is not None and busy1 is not None else None)
    print(f"\n{args.connections:,} idle connections to one server over {HOST}, held by "
          f"{args.clients} processes (one echo call each); idle CPU over {args.idle:g}s; "
          f"fresh client at c=1 for {args.probe:g}s, alone and with them open"
          + (f"; other processes used {other:.0%} of a CPU meanwhile" if other is not None
             else "") + f"; {wall:.0f}s\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
