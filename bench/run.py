"""
Run the side-by-side benchmark: every system's server in its own process,
one client process per measurement, alternating rounds, a table of medians.

    python -m bench.run [--duration S] [--warmup S] [--rounds N]
                        [--concurrency 1,64] [--systems baseline,amp,...]
                        [--payload 1k,64k,1m [--kind bytes,str]
                         [--compression none,gzip,zstd]]
                        [--json PATH|-]

See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from itertools import product
from pathlib import Path
from typing import IO, Any, NamedTuple

if __package__ in (None, ""):
    # Run as a script (python bench/run.py): import bench from the checkout,
    # not modules from bench/ as if they were top-level.
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[:1] = [_root]

from bench import reactors
from bench.systems import DEFAULT
from bench.workload import COMPRESSIONS, HOST, parse_size, size_label

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
NOISY_PCT = 15
#: Systems that carry every payload size and compression (amp: 64 KiB at most).
PAYLOAD_DEFAULT = ("baseline", "msrpc")


class Case(NamedTuple):
    """One workload: calls in flight, payload bytes (0: the small dict), its kind, and
    the compression both sides use."""

    concurrency: int
    payload: int = 0
    kind: str = "bytes"
    compression: str = "none"

    def workload_args(self) -> list[str]:
        return ["--payload", str(self.payload), "--kind", self.kind,
                "--compression", self.compression]


def case_of(run: dict[str, Any]) -> Case:
    return Case(run["concurrency"], run.get("payload_bytes", 0), run.get("kind", "bytes"),
                run.get("compression", "none"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _worker(role: str, system: str, cpu: int | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.worker", role, system, "--host", HOST]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    return cmd + list(extra)


def _tail(f: IO[bytes] | None, n: int = 2000) -> str:
    if f is None:
        return ""
    f.flush()
    f.seek(0)
    return f.read().decode(errors="replace")[-n:]


class Server:
    """
    One system's server process, started on a free port.
    """

    def __init__(self, system: str, cpu: int | None, workload: list[str] | None = None) -> None:
        self.system = system
        self.log = tempfile.TemporaryFile()
        # Own session: a Ctrl-C reaches the driver only, which stops us.
        # stdin stays open; when the driver dies it closes and we exit.
        self.proc = subprocess.Popen(
            _worker("server", system, cpu, "--port", "0", "--watch-stdin", *(workload or [])),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=_env(),
            start_new_session=True,
        )
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read()
            if chunk:
                buf += chunk
                for line in buf.splitlines():
                    if line.startswith(b"READY "):
                        return int(line.split()[1])
            elif self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(
            f"{self.system} server did not start:\n{_tail(self.log)}"
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float | None:
        """CPU seconds the server process has used so far (Linux), all threads."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.log.close()


def run_client(
    server: Server, case: Case, args: argparse.Namespace, cpu: int | None
) -> dict[str, Any]:
    """
    One measurement: a fresh client process, warm-up, then the window.
    """
    cmd = _worker(
        "client", server.system, cpu,
        "--port", str(server.port),
        "--concurrency", str(case.concurrency),
        "--duration", str(args.duration),
        "--warmup", str(args.warmup),
        "--max-calls", str(args.max_calls),
        *case.workload_args(),
    )  # fmt: skip
    timeout = args.warmup + args.duration + 60
    server_cpu0 = server.cpu_s()
    # subprocess.run kills the client on timeout or on any exception here.
    done = subprocess.run(
        cmd, capture_output=True, env=_env(), timeout=timeout,
        start_new_session=True,
    )  # fmt: skip
    server_cpu1 = server.cpu_s()
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{server.system} client ({describe(case)}) failed, "
            f"exit {done.returncode}:\n{done.stderr.decode()[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result.update(payload_bytes=case.payload, kind=case.kind, compression=case.compression)
    result["mb_per_s"] = result["calls_per_s"] * case.payload / 1e6
    if server_cpu0 is not None and server_cpu1 is not None:
        result["server_cpu_s"] = server_cpu1 - server_cpu0
    return result


def cpu_us_per_call(runs: list[dict[str, Any]], key: str) -> float | None:
    """CPU microseconds per call over whole client runs, the median over rounds: a busy
    machine moves it far less than calls/s, since waiting for a CPU costs no CPU."""
    per_call = [1e6 * r[key] / r["calls_total"] for r in runs
                if r.get(key) is not None and r.get("calls_total")]
    return statistics.median(per_call) if per_call else None


def describe(case: Case) -> str:
    if not case.payload:
        return f"c={case.concurrency}"
    return (f"{size_label(case.payload)} {case.kind} {case.compression} "
            f"c={case.concurrency}")


def cpu_ms_per_mb(run: dict[str, Any], key: str) -> float | None:
    """CPU milliseconds per MB of payload echoed, over the whole client run."""
    cpu, moved = run.get(key), run.get("calls_total", 0) * run.get("payload_bytes", 0)
    if cpu is None or not moved:
        return None
    return 1000.0 * cpu / (moved / 1e6)


def _pick_cpus(pin: bool) -> tuple[int | None, int | None]:
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def variant_of(system: str, systems: list[str]) -> str | None:
    """
    The system ``system`` is a variant of, if it runs too: ``msrpc`` for
    ``msrpc_metrics`` (the same code with a feature switched on) and for
    ``msrpc@uvloop`` (the same code on another reactor).
    """
    plain, at, _ = system.partition("@")
    if at and plain in systems:
        return plain
    base, sep, _ = system.rpartition("_")
    while sep:
        if base in systems:
            return base
        base, sep, _ = base.rpartition("_")
    return None


def _paired_ratio(mine: list[dict[str, Any]], other: dict[int, dict[str, Any]]) -> float | None:
    """The median over rounds of mine(round r) / other(round r)."""
    ratios = [
        r["calls_per_s"] / other[r["round"]]["calls_per_s"]
        for r in mine
        if r["round"] in other and other[r["round"]]["calls_per_s"] > 0
    ]
    return statistics.median(ratios) if ratios else None


def summarize(
    runs: list[dict[str, Any]], systems: list[str], cases: list[Case],
    baseline: str | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """
    Per (system, case): the median round, the spread, and the ratio
    to the baseline (the median of the per-round ratios: each system's round
    r divided by the baseline's round r, measured close together in time);
    for a variant (``msrpc_metrics``) also the ratio to the system it varies.
    """
    rows = []
    for case in cases:
        by_system: dict[str, dict[int, dict[str, Any]]] = {}
        for r in runs:
            if case_of(r) == case:
                by_system.setdefault(r["system"], {})[r["round"]] = r
        for s in systems:
            mine = sorted(by_system.get(s, {}).values(), key=lambda r: r["calls_per_s"])
            if not mine:
                continue
            rates = [r["calls_per_s"] for r in mine]
            median = mine[(len(mine) - 1) // 2]  # lower median: a real round
            plain = variant_of(s, systems)
            rows.append({
                "system": s,
                "concurrency": case.concurrency,
                "payload_bytes": case.payload,
                "kind": case.kind,
                "compression": case.compression,
                "rounds": len(mine),
                "calls_per_s": median["calls_per_s"],
                "mb_per_s": median["calls_per_s"] * case.payload / 1e6,
                "server_cpu_ms_per_mb": cpu_ms_per_mb(median, "server_cpu_s"),
                "client_cpu_ms_per_mb": cpu_ms_per_mb(median, "cpu_s"),
                "server_cpu_us_per_call": cpu_us_per_call(mine, "server_cpu_s"),
                "client_cpu_us_per_call": cpu_us_per_call(mine, "cpu_s"),
                "p50_us": median["p50_us"],
                "p99_us": median["p99_us"],
                "min_calls_per_s": rates[0],
                "max_calls_per_s": rates[-1],
                "spread_pct": 100.0 * (rates[-1] - rates[0]) / median["calls_per_s"]
                if median["calls_per_s"] else float("nan"),
                "ratio": _paired_ratio(mine, by_system.get(baseline or "", {})),
                "variant_of": plain,
                "variant_ratio": _paired_ratio(mine, by_system.get(plain, {}))
                if plain else None,
                "errors": sum(r["errors"] for r in mine),
            })  # fmt: skip
    return rows


def _us(v: float) -> str:
    """
    A latency in microseconds, readable: "95 µs", "2,633 µs", "13.3 ms".
    """
    return f"{v:,.0f} µs" if v < 10_000 else f"{v / 1000:,.1f} ms"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def table(rows: list[dict[str, Any]], baseline: str | None) -> str:
    payloads = any(r.get("payload_bytes") for r in rows)
    ratio = f"vs {baseline}" if baseline else "ratio"
    if payloads:
        head = ["system", "payload", "comp", "conc", "MB/s", "spread (min..max MB/s)",
                "p50", "p99", "srv ms/MB", "cli ms/MB", ratio]  # fmt: skip
    else:
        head = ["system", "conc", "calls/s", "spread (min..max)", "p50", "p99",
                "srv µs/call", "cli µs/call", ratio]
    variants = any(r.get("variant_of") for r in rows)
    if variants:
        head.append("vs plain")
    body = []
    for r in rows:
        spread = f"±{r['spread_pct'] / 2:.0f}%"
        if payloads:
            scale = r["payload_bytes"] / 1e6
            row = [
                r["system"], f"{size_label(r['payload_bytes'])} {r['kind']}",
                r["compression"], str(r["concurrency"]), f"{r['mb_per_s']:,.1f}",
                f"{spread} ({r['min_calls_per_s'] * scale:,.1f}.."
                f"{r['max_calls_per_s'] * scale:,.1f})",
                _us(r["p50_us"]), _us(r["p99_us"]),
                _ms(r["server_cpu_ms_per_mb"]), _ms(r["client_cpu_ms_per_mb"]),
            ]  # fmt: skip
        else:
            row = [
                r["system"], str(r["concurrency"]), f"{r['calls_per_s']:,.0f}",
                f"{spread} ({r['min_calls_per_s']:,.0f}..{r['max_calls_per_s']:,.0f})",
                _us(r["p50_us"]), _us(r["p99_us"]),
                _ms(r.get("server_cpu_us_per_call")), _ms(r.get("client_cpu_us_per_call")),
            ]  # fmt: skip
        row.append(f"{r['ratio']:.2f}" if r["ratio"] is not None else "-")
        if variants:
            variant = r.get("variant_ratio")
            row.append(f"{variant:.2f}" if variant is not None else "-")
        body.append(row + ([f"ERRORS {r['errors']}"] if r["errors"] else []))
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    left = {0, 1, 2} if payloads else {0}

    def fmt(row: list[str]) -> str:
        cells = [
            row[i].ljust(widths[i]) if i in left else row[i].rjust(widths[i])
            for i in range(len(head))
        ]
        return "  ".join(cells + row[len(head):]).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    prev = None
    for r, row in zip(rows, body):
        if prev is not None and case_of(r) != prev:
            lines.append("")
        prev = case_of(r)
        lines.append(fmt(row))
    return "\n".join(lines)


def _busy_cpu_s() -> float | None:
    """
    CPU seconds all processes of the machine have used so far (Linux).
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """
    CPU seconds of this driver and of its reaped children (all workers).
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("twisted", "msgpack", "grpcio"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Echo a small dict (or a payload, --payload) over loopback with "
        "each RPC system; compare calls/s and latency at each concurrency on one "
        "connection.",
    )
    p.add_argument("--duration", type=float, default=1.5,
                   help="measured seconds per run (default 1.5)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="discarded seconds at the start of each run (default 0.5)")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds; the median is reported (default 5)")
    p.add_argument("--concurrency", default=None,
                   help="calls in flight on the one connection, comma list (default 1,64; "
                   "with --payload 1,16)")
    p.add_argument("--systems", default=None,
                   help=f"comma list of bench/systems modules, each optionally NAME@REACTOR "
                   f"({', '.join(reactors.INSTALLERS)}; e.g. msrpc@uvloop) "
                   f"(default {','.join(DEFAULT)}; with --payload {','.join(PAYLOAD_DEFAULT)})")
    p.add_argument("--payload", default=None, metavar="SIZES",
                   help="echo a payload of each size instead of the small dict, comma "
                   "list: 1k,64k,1m; reports MB/s and CPU per MB")
    p.add_argument("--kind", default="bytes",
                   help="payload type, comma list of bytes, str (default bytes)")
    p.add_argument("--compression", default="none",
                   help=f"comma list of {', '.join(COMPRESSIONS)}: both sides compress "
                   "bodies of 4 KiB and more (default none)")
    p.add_argument("--baseline", default=DEFAULT[0],
                   help=f"system the ratios are relative to (default {DEFAULT[0]})")
    p.add_argument("--max-calls", type=int, default=1_000_000,
                   help="cap on calls per run, warm-up included (default 1000000)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin servers and clients to separate CPUs")
    p.add_argument("--json", metavar="PATH",
                   help="also write all results as JSON to PATH ('-': stdout, "
                   "the table then goes to stderr)")
    args = p.parse_args(argv)
    payload_mode = args.payload is not None
    if args.systems is None:
        args.systems = ",".join(PAYLOAD_DEFAULT if payload_mode else DEFAULT)
    if args.concurrency is None:
        args.concurrency = "1,16" if payload_mode else "1,64"
    args.systems = [s for s in args.systems.split(",") if s]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    try:
        sizes = [parse_size(v) for v in args.payload.split(",") if v] if payload_mode \
            else [0]
    except ValueError as e:
        p.error(str(e))
    kinds = [k for k in args.kind.split(",") if k]
    compressions = [c for c in args.compression.split(",") if c]
    if not set(kinds) <= {"bytes", "str"} or not kinds:
        p.error("--kind takes bytes, str or both")
    if not set(compressions) <= set(COMPRESSIONS) or not compressions:
        p.error(f"--compression takes {', '.join(COMPRESSIONS)}")
    if not payload_mode and (kinds != ["bytes"] or compressions != ["none"]):
        p.error("--kind and --compression go with --payload")
    args.compressions = compressions
    args.cases = [Case(c, size, kind, comp) for kind, size, comp, c
                  in product(kinds, sizes, compressions, args.concurrency)]
    for name in args.systems:
        system, reactor = reactors.split(name)
        if not system.isidentifier() or find_spec(f"bench.systems.{system}") is None:
            p.error(f"no system {system!r}: expected a module bench/systems/{system}.py")
        if reactor is not None and reactor not in reactors.INSTALLERS:
            p.error(f"no reactor {reactor!r}: choose one of {', '.join(reactors.INSTALLERS)}")
    if args.baseline not in args.systems:
        args.baseline = None
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or not args.systems:
        p.error("need rounds >= 1, duration > 0, warmup >= 0 and some systems")
    if any(c < 1 for c in args.concurrency) or not args.concurrency:
        p.error("concurrency values must be >= 1")
    return args


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    server_cpu, client_cpu = _pick_cpus(args.pin)
    out = sys.stderr if args.json == "-" else sys.stdout

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    payloads = sorted({case.payload for case in args.cases})
    if payloads[-1]:
        workload = (f"echo of {', '.join(size_label(b) for b in payloads)} payloads "
                    f"({'/'.join(sorted({c.kind for c in args.cases}))}, text-like) in a "
                    "msgpack dict, one connection per client")
    else:
        workload = "echo of a small dict (msgpack), one connection per client"
    meta = {
        "workload": workload,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "cases": [case._asdict() for case in args.cases],
        "systems": args.systems,
        "baseline": args.baseline,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "cpus": os.cpu_count(),
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    started = time.monotonic()
    busy0, own0 = _busy_cpu_s(), _own_cpu_s()
    # One server per system and compression (a server's replies use its setting).
    servers: dict[tuple[str, str], Server] = {}
    runs: list[dict[str, Any]] = []
    try:
        for s, comp in product(args.systems, args.compressions):
            # The largest payload, so a system that cannot carry it says so now.
            largest = Case(1, payloads[-1], "bytes", comp)
            servers[s, comp] = server = Server(s, server_cpu, largest.workload_args())
            progress(f"{s}: server on {HOST}:{server.port}"
                     + (f" ({comp})" if comp != "none" else ""))
        for rnd in range(args.rounds):
            # ABC CBA ABC ...: every system gets early and late slots alike.
            order = args.systems if rnd % 2 == 0 else args.systems[::-1]
            for case in args.cases:
                for s in order:
                    server = servers[s, case.compression]
                    if not server.alive():
                        raise RuntimeError(f"{s} server died:\n{_tail(server.log)}")
                    result = run_client(server, case, args, client_cpu)
                    result["round"] = rnd
                    runs.append(result)
                    rate = (f"{result['mb_per_s']:>10,.1f} MB/s" if case.payload
                            else f"{result['calls_per_s']:>10,.0f} calls/s")
                    progress(
                        f"round {rnd + 1}/{args.rounds} {describe(case):<10} {s:<10} "
                        f"{rate}  "
                        f"p50 {_us(result['p50_us'])}  p99 {_us(result['p99_us'])}"
                        + (f"  ERRORS {result['errors']}: {result['first_error']}"
                           if result["errors"] else "")
                    )  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()

    wall = time.monotonic() - started
    meta["wall_s"] = round(wall, 1)
    busy1 = _busy_cpu_s()
    # Noise indicator: the CPU the rest of the machine took from our cores.
    other = None
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0)) / wall
    meta["other_cpu_load"] = other
    rows = summarize(runs, args.systems, args.cases, args.baseline)
    facts = [
        f"{workload} over {HOST}",
        f"{args.rounds} alternating rounds of {args.warmup:g}s warm-up + "
        f"{args.duration:g}s, median round shown",
        f"server on cpu {server_cpu}, client on cpu {client_cpu}"
        if server_cpu is not None else "not pinned to CPUs",
    ]  # fmt: skip
    if other is not None:
        facts.append(f"other processes used {other:.0%} of a CPU meanwhile")
    if payloads[-1]:
        facts.append("MB/s: payload megabytes echoed per second (each goes both ways); "
                     "ms/MB: CPU milliseconds per echoed MB, server and client process")
    facts.append(f"{meta['wall_s']}s")
    print("\n" + ";\n".join(facts) + "\n", file=out)
    print(table(rows, args.baseline), file=out)
    noisy = [r for r in rows if r["spread_pct"] / 2 > NOISY_PCT]
    if noisy:
        print(
            f"\nnote: {len(noisy)} of {len(rows)} rows vary more than "
            f"±{NOISY_PCT}% between rounds; the ratios (paired per round) are "
            "steadier than the absolute numbers; more --rounds narrow the median.",
            file=out,
        )
    if args.json:
        doc = json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=2)
        if args.json == "-":
            print(doc)
        else:
            Path(args.json).write_text(doc + "\n")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
