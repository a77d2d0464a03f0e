"""
Instructions per call of each side, counted by valgrind: the figure that does not move
when the machine is busy, so a change of 1 % reads as clearly as one of 30 %.

    python -m bench.instructions                      # msrpc next to the baseline
    python -m bench.instructions --observe metrics --observe w3c --observe otel
    python -m bench.instructions --batch 64 --calls 16384 --keep .cache/callgrind
    python -m bench.instructions --payload 1k --batch 16     # a 1 KiB bytes echo

Each cell (side, system, batch) runs ``bench.percall``'s session of that side in its
own process under ``valgrind --tool=callgrind``: it sets the side up, warms it up
(``--warmup`` calls), makes the input of every measured round, then runs the rounds
back to back.  Only those rounds are counted: callgrind zeroes its counters when the
process calls ``getppid()`` and dumps them when it calls ``getpgrp()``, two calls made
nowhere else.  Hash seeds and ``random`` are fixed, so a cell counts the same on every
run (to a few instructions per call).  Counts include the garbage collector's share,
and msrpc's clock reads (``time.time``), as in production; not the kernel's work.

``--keep DIR`` keeps each cell's callgrind file for ``callgrind_annotate`` (C functions:
msgpack, dict and Deferred internals, the interpreter loop).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Optional

#: Marks of the counted region (see the module docstring).
_START, _STOP = "getppid", "getpgrp"


def _session(side: str, system: str, batch: int) -> Any:
    from bench import percall

    if system == "baseline":
        return getattr(percall, f"baseline_{side}_session")(batch)
    observers = percall.OBSERVERS[system]() if system != "msrpc" else []
    return getattr(percall, f"msrpc_{side}_session")(batch, observers)


def run_cell(side: str, system: str, batch: int, calls: int, warmup: int,
             payload: int = 0, kind: str = "bytes") -> None:
    """In the process valgrind watches: set up, warm up, count ``calls`` calls."""
    from bench import percall, workload

    random.seed(0)
    workload.configure(payload or None, kind)
    percall.VALUE = workload.request(1)
    session = _session(side, system, batch)
    for _ in range(max(1, warmup // batch)):
        session.run(session.prepare())
    inputs = [session.prepare() for _ in range(max(1, calls // batch))]
    run = session.run
    gc.collect()
    os.getppid()  # callgrind: zero the counters
    for state in inputs:
        run(state)
    os.getpgrp()  # callgrind: dump them
    session.check()


def count(side: str, system: str, batch: int, calls: int, warmup: int,
          keep: Optional[str], payload: int = 0, kind: str = "bytes") -> float:
    """Instructions per call of one cell."""
    calls = max(1, calls // batch) * batch
    where = keep or tempfile.mkdtemp(prefix="msrpc-callgrind-")
    base = os.path.join(where, f"callgrind.{side}.{system}.{batch}.{payload}{kind[0]}")
    for stale in _parts(base):
        os.remove(stale)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={base}",
               f"--zero-before={_START}", f"--dump-before={_STOP}",
               sys.executable, "-m", "bench.instructions", "--cell", side, system,
               str(batch), str(calls), str(warmup), "--payload", str(payload), "--kind", kind]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    try:
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        dumped = [p for p in _parts(base) if p != base]
        if len(dumped) != 1:
            raise RuntimeError(f"expected one callgrind dump of the counted region, got "
                               f"{dumped}: were {_START}/{_STOP} called elsewhere?")
        return _summary(dumped[0]) / calls
    finally:
        if keep is None:
            shutil.rmtree(where, ignore_errors=True)


def _parts(base: str) -> list[str]:
    folder, name = os.path.split(base)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f == name or f.startswith(name + "."))


def _summary(path: str) -> int:
    with open(path) as f:
        for line in f:
            match = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if match:
                return int(match.group(1))
    raise RuntimeError(f"no instruction total in {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", nargs=5, metavar=("SIDE", "SYSTEM", "BATCH", "CALLS",
                                                    "WARMUP"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, action="append",
                        help="calls per read (repeatable; default 64 and 1)")
    parser.add_argument("--calls", type=int, default=8192, help="calls counted per cell")
    parser.add_argument("--warmup", type=int, default=2048,
                        help="calls run before counting (caches, the interpreter's "
                        "specialisation, metrics' first folds)")
    parser.add_argument("--side", action="append", choices=("client", "server"),
                        help="only this side (repeatable; default both)")
    parser.add_argument("--observe", action="append", default=[],
                        help="also count msrpc with these observers on, both sides "
                        "(repeatable; bench.percall --observe names: metrics, w3c, otel)")
    parser.add_argument("--payload", default="0", metavar="SIZE",
                        help="echo a payload of this size (1k, 64k) instead of the small dict")
    parser.add_argument("--kind", choices=("bytes", "str"), default="bytes",
                        help="the payload's type (with --payload)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="count msrpc only (the ratio column is then left out)")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the callgrind files in DIR (for callgrind_annotate)")
    args = parser.parse_args(argv)
    if args.cell:
        side, system, batch, calls, warmup = args.cell
        run_cell(side, system, int(batch), int(calls), int(warmup), int(args.payload),
                 args.kind)
        return
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    from bench import percall

    unknown = set(args.observe) - set(percall.OBSERVERS)
    if unknown:
        parser.error(f"unknown observer(s) {', '.join(sorted(unknown))}")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    from bench.workload import parse_size

    payload = parse_size(args.payload) if args.payload != "0" else 0
    systems = ([] if args.no_baseline else ["baseline"]) + ["msrpc"] + args.observe
    print(f"instructions per call (callgrind), {args.calls} calls per cell after "
          f"{args.warmup} warm-up calls"
          + (f", {args.payload} {args.kind} payload" if payload else ""))
    print(f"{'side':6}  {'batch':>5}  " + "  ".join(f"{name:>9}" for name in systems)
          + ("  ratio" if not args.no_baseline else "")
          + "".join(f"  {'+' + name:>9}" for name in args.observe), flush=True)
    for batch in args.batch or [64, 1]:
        for side in args.side or ["client", "server"]:
            counts = {name: count(side, name, batch, args.calls, args.warmup, args.keep,
                                  payload, args.kind)
                      for name in systems}
            line = f"{side:6}  {batch:5}  " + "  ".join(f"{counts[name]:9,.0f}"
                                                        for name in systems)
            if not args.no_baseline:
                line += f"  {counts['msrpc'] / counts['baseline']:5.2f}"
            line += "".join(f"  {counts[name] - counts['msrpc']:+9,.0f}"
                            for name in args.observe)
            print(line, flush=True)


if __name__ == "__main__":
    main()
