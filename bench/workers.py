"""
More than one core: calls/s of ``twistd msrpc --workers N`` under several client
processes, next to N bare-Twisted echo processes sharing one port (SO_REUSEPORT).

    python -m bench.workers                       # N = 1, 2; 4 clients x 4 connections
    python -m bench.workers --workers 1,2,4 --clients 8 --rounds 5

Every call costs the server a fixed amount of work (``--work-kib``: SHA-256 over 64 KiB,
about 50-100 µs), as real handlers do, so that the servers and not the clients sharing
the machine are the bottleneck; ``--work-kib 0`` measures the bare framework.

Each run starts the server side (msrpc: one supervisor and its N workers; baseline: N
processes under a parent that only waits; each in one session of its own, see below), then ``--clients`` client processes at once, each with ``--connections``
connections and ``--concurrency`` calls in flight over them, for ``--warmup`` +
``--duration`` seconds.  Reported per (system, N): the calls/s of all clients together,
the CPU the server processes used (in cores: 1.0 is one core busy), calls per server CPU
second (per-core efficiency), the speed-up over N = 1 of the same system, and the ratio to
the baseline with the same N.  Clients run on the same machine and take CPU too: on a
2-core machine, N = 2 leaves the clients no core of their own.

Two more columns tell a slow server from a starved one: "waited cores", the time the
server processes spent runnable but waiting for a CPU (schedstat; well above 0, the
machine is busy and the figures are the scheduler's, not the server's), and each round's
established connections per server process (``9/7``: how ``SO_REUSEPORT``'s hash spread
the clients' connections).  Both systems' servers run in one session each because Linux's
autogroup scheduling (``kernel.sched_autogroup_enabled``) shares CPU between sessions: N
baseline processes in N sessions got N shares of a busy machine where msrpc's N workers,
in their supervisor's session, got one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[:1] = [str(Path(__file__).resolve().parent.parent)]

from bench.run import _busy_cpu_s, _env, _own_cpu_s
from bench.workload import HOST, WORK_ENV

ROOT = Path(__file__).resolve().parent.parent
_SERVING = re.compile(rb"msrpc serving .* on .*port=(\d+)")
_ALL_LISTENING = re.compile(rb"\d+ workers listening on")


def _group_members(groups: set[int]) -> dict[int, list[str]]:
    """The live processes of these process groups: pid -> fields of /proc/<pid>/stat
    after the command name."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) in groups:  # field 5 of stat: the process group
            members[int(entry)] = fields
    return members


def _run_queue_s(pid: int) -> float:
    """Seconds this process has spent runnable but waiting for a CPU (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def _established_inodes(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "01" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def _sockets_of(pid: int, inodes: set[int]) -> int:
    """How many of these sockets process ``pid`` holds."""
    held = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            held += 1
    return held


class ServerSide:
    """The server processes of one system with N processes, in process groups of their own."""

    def __init__(self, system: str, workers: int, work_kib: int) -> None:
        self.system = system
        self.workers = workers
        self.env = {**_env(), WORK_ENV: str(work_kib)}
        self.log = tempfile.TemporaryFile()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._reserved: socket.socket | None = None
        if system == "msrpc":
            self.port = self._start_msrpc()
        elif system == "baseline":
            self.port = self._start_baseline()
        else:
            raise SystemExit(f"bench.workers runs msrpc and baseline, not {system}")

    def _start_msrpc(self) -> int:
        cmd = [sys.executable, "-m", "twisted", "--log-format=text", "msrpc",
               "--workers", str(self.workers), "--listen", f"tcp:0:interface={HOST}",
               "--registry", "static", "--service", "echo=bench.systems.msrpc:WorkingEcho",
               "--grace", "0", "--drain-timeout", "1"]
        self.procs.append(subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.log.seek(0)
            text = self.log.read()
            match = _SERVING.search(text)
            if match and (self.workers == 1 or _ALL_LISTENING.search(text)):
                return int(match.group(1))
            if self.procs[0].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"msrpc --workers {self.workers} did not start:\n"
                           f"{text.decode(errors='replace')[-3000:]}")

    def _start_baseline(self) -> int:
        # Hold the port as msrpc's supervisor does; each process binds it with SO_REUSEPORT.
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((HOST, 0))
        self._reserved = held
        port = held.getsockname()[1]
        # The N processes share one session and process group under a parent that only
        # waits, as msrpc's workers do under their supervisor.  This matters: with the
        # kernel's autogroup scheduling (kernel.sched_autogroup_enabled, on by default in
        # most distributions) CPU is shared fairly between sessions, so on a busy machine
        # N processes in N sessions get N shares where N workers in one session get one.
        server = [sys.executable, "-m", "bench.worker", "server", "baseline", "--host",
                  HOST, "--port", str(port), "--reuse-port"]
        # The parent reaps them when stopped (SIGTERM reaches the whole group).
        script = (f'trap "wait; exit 0" TERM; for i in $(seq {self.workers}); '
                  'do "$@" & done; wait')
        launcher = ["sh", "-c", script, "sh", *server]
        self.procs.append(subprocess.Popen(launcher, stdout=subprocess.PIPE,
                                           stderr=self.log, env=self.env,
                                           start_new_session=True))
        stdout = self.procs[0].stdout
        assert stdout is not None
        for _ in range(self.workers):
            line = stdout.readline()
            if not line.startswith(b"READY"):
                raise RuntimeError(f"baseline did not start: {line!r}")
        return port

    @property
    def groups(self) -> set[int]:
        """Its process groups (msrpc's workers are in their supervisor's)."""
        return {proc.pid for proc in self.procs}

    def sample(self) -> tuple[float, float]:
        """CPU seconds used so far by all its processes, and seconds its processes have
        spent waiting for a CPU while runnable (the sign of CPU contention)."""
        members = _group_members(self.groups)
        ticks = sum(int(fields[11]) + int(fields[12]) for fields in members.values())
        return (ticks / os.sysconf("SC_CLK_TCK"),
                sum(_run_queue_s(pid) for pid in members))

    def connections(self) -> list[int]:
        """Established connections held by each server process (supervisor excluded),
        most first: how the kernel spread the clients' connections."""
        inodes = _established_inodes(self.port)
        members = set(_group_members(self.groups))
        servers = members - self.groups or members  # msrpc --workers 1: no supervisor
        return sorted((_sockets_of(pid, inodes) for pid in servers), reverse=True)

    def _signal(self, signum: int) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._signal(signal.SIGKILL)  # msrpc's workers, should the supervisor be gone first
        if self._reserved is not None:
            self._reserved.close()
        self.log.close()


def run_clients(server: ServerSide, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.worker", "client", server.system, "--host", HOST,
           "--port", str(server.port), "--concurrency", str(args.concurrency),
           "--connections", str(args.connections), "--duration", str(args.duration),
           "--warmup", str(args.warmup), "--max-calls", "100000000"]
    clients = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_env(), start_new_session=True)
               for _ in range(args.clients)]
    # The servers' CPU, sampled while the clients run, read over their common window.
    samples: list[tuple[float, float, float]] = []
    splits: list[tuple[float, list[int]]] = []  # every 0.5 s: it is dearer to read
    deadline = time.monotonic() + args.warmup + args.duration + 60
    while any(c.poll() is None for c in clients) and time.monotonic() < deadline:
        samples.append((time.time(), *server.sample()))
        if not splits or samples[-1][0] - splits[-1][0] >= 0.5:
            splits.append((time.time(), server.connections()))
        time.sleep(0.05)
    results = []
    for client in clients:
        out, err = client.communicate(timeout=max(1.0, deadline - time.monotonic()))
        if client.returncode != 0:
            raise RuntimeError(f"{server.system} client failed:\n{err.decode()[-2000:]}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    start = max(r["window"][0] for r in results)
    end = min(r["window"][1] for r in results)
    inside = [sample for sample in samples if start <= sample[0] <= end]
    span = inside[-1][0] - inside[0][0] if len(inside) > 1 else 0.0
    cores, waiting = ((inside[-1][i] - inside[0][i]) / span if span > 0 else float("nan")
                      for i in (1, 2))
    middle = (start + end) / 2
    split = min(splits, key=lambda s: abs(s[0] - middle))[1] if splits else []
    calls = sum(r["calls_per_s"] for r in results)
    errors = sum(r["errors"] for r in results)
    return {"system": server.system, "workers": server.workers, "calls_per_s": calls,
            "server_cores": cores, "cpu_wait_cores": waiting, "connections": split,
            "errors": errors, "p99_us": max(r["p99_us"] for r in results)}


def summarize(runs: list[dict[str, Any]], systems: list[str],
              workers: list[int]) -> list[dict[str, Any]]:
    rows = []
    for system in systems:
        for n in workers:
            mine = [r for r in runs if r["system"] == system and r["workers"] == n]
            if not mine:
                continue
            rate = statistics.median(r["calls_per_s"] for r in mine)
            cores = statistics.median(r["server_cores"] for r in mine)
            per_core = statistics.median(r["calls_per_s"] / r["server_cores"] for r in mine
                                         if r["server_cores"] > 0)
            ones = [r["calls_per_s"] for r in runs if r["system"] == system
                    and r["workers"] == workers[0]]
            base = [r["calls_per_s"] for r in runs if r["system"] == "baseline"
                    and r["workers"] == n]
            waits = [r["cpu_wait_cores"] for r in mine if "cpu_wait_cores" in r]
            rows.append({"system": system, "workers": n, "calls_per_s": rate,
                         "server_cores": cores,
                         "cpu_wait_cores": statistics.median(waits) if waits else None,
                         "connections": [r.get("connections", []) for r in mine],
                         "calls_per_core_s": per_core,
                         "scaling": rate / statistics.median(ones) if ones else None,
                         "vs_baseline": rate / statistics.median(base) if base else None,
                         "errors": sum(r["errors"] for r in mine)})
    return rows


def _split(connections: list[int]) -> str:
    """``9/7``: one round's connections per server process."""
    return "/".join(map(str, connections)) or "?"


def table(rows: list[dict[str, Any]], first: int) -> str:
    head = ["system", "N", "calls/s", "server cores", "waited cores", "calls/core-s",
            f"vs N={first}", "vs baseline", "connections per process"]
    body = [[r["system"], str(r["workers"]), f"{r['calls_per_s']:,.0f}",
             f"{r['server_cores']:.2f}",
             f"{r['cpu_wait_cores']:.2f}" if r.get("cpu_wait_cores") is not None else "-",
             f"{r['calls_per_core_s']:,.0f}" if r["calls_per_core_s"] else "-",
             f"{r['scaling']:.2f}" if r["scaling"] else "-",
             f"{r['vs_baseline']:.2f}" if r["vs_baseline"] else "-",
             " ".join(_split(c) for c in r.get("connections", [])) or "-"]
            + ([f"ERRORS {r['errors']}"] if r["errors"] else []) for r in rows]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) + (
                 "  " + " ".join(row[len(head):]) if len(row) > len(head) else "")
             for row in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="server processes, comma list")
    p.add_argument("--systems", default="baseline,msrpc")
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--connections", type=int, default=4, help="connections per client")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight per client")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work-kib", type=int, default=64,
                   help="KiB each server hashes per call (SHA-256, tens of µs), so that the "
                   "servers, not the clients on the same machine, are the bottleneck; 0: "
                   "the bare framework (default 64)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    workers = [int(n) for n in args.workers.split(",")]
    systems = args.systems.split(",")
    busy0, own0, started = _busy_cpu_s(), _own_cpu_s(), time.monotonic()
    runs = []
    for rnd in range(args.rounds):
        order = systems if rnd % 2 == 0 else systems[::-1]
        for n in workers:
            for system in order:
                server = ServerSide(system, n, args.work_kib)
                try:
                    result = run_clients(server, args)
                finally:
                    server.stop()
                result["round"] = rnd
                runs.append(result)
                print(f"round {rnd + 1}/{args.rounds} {system:<9} N={n}: "
                      f"{result['calls_per_s']:>9,.0f} calls/s, server "
                      f"{result['server_cores']:.2f} cores (waited "
                      f"{result['cpu_wait_cores']:.2f}), connections "
                      f"{_split(result['connections'])}", file=sys.stderr, flush=True)
    wall = time.monotonic() - started
    busy1 = _busy_cpu_s()
    other = None
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0)) / wall
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\necho of a small dict after {args.work_kib} KiB of SHA-256 per call, over "
          f"{HOST}: {args.clients} client processes x "
          f"{args.connections} connections, {args.concurrency} calls in flight each; "
          f"{args.rounds} rounds of {args.warmup:g}s + {args.duration:g}s, median shown; "
          f"{cpus} CPUs" + (f"; other processes used {other:.0%} of a CPU meanwhile"
                            if other is not None else "") + f"; {wall:.0f}s\n")
    rows = summarize(runs, systems, workers)
    print(table(rows, workers[0]))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": rows, "runs": runs}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
