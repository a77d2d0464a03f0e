"""
msgo interop, measured: the gob codec against msgpack, and calls/s msgo's way.

    python -m bench.gob                          # both parts, about 40 s
    python -m bench.gob --part codec             # gob vs msgpack only
    python -m bench.gob --part calls --concurrency 1,8 --duration 3

Part 1, codec: encode + decode of msgo's request and response shapes (``MsRpcRequest``,
``MsRpcResponse`` with Go-typed args and registered structs) with ``msrpc.gob``, next to
msgpack (``msrpc.codec.MsgpackCodec``) on msrpc's own bodies holding the same data, and
gob followed by gzip, which msgo always applies.  Best of ``--repeat`` runs, microseconds
per encode+decode, and sizes.

Part 2, calls: closed loops of N callers, one connection per call (msgo's way), against
the Go peer's server (``tests/msgo_peer``, built with the machine's Go): a Go client (the
baseline) and an msrpc Python client speaking msgo; then a Go client against a
``twistd msrpc`` serving the same method in Python.  calls/s and the ratio to Go → Go.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from msrpc import compress, gob
from msrpc.codec import MsgpackCodec, TypeRegistry
from msrpc.gob import Int64, Int16
from msrpc.msgo.messages import MsRpcRequest, MsRpcResponse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.gob_models import REGISTRY as GOB_TYPES, Goods, Result  # noqa: E402

#: The same classes for msgpack, under msrpc names.
MSGPACK_TYPES = TypeRegistry()
MSGPACK_TYPES.register(Goods, name="model.Goods")
MSGPACK_TYPES.register(Result, name="model.Result")


def _goods(i: int) -> Goods:
    return Goods(Int64(i), f"goods-{i}", 9.5, ["new", "sale"], None)


#: (name, msgo's message, msrpc's body with the same data)
SHAPES: list[tuple[str, Any, dict[str, Any]]] = [
    ("request calc.Add(2, 3)",
     MsRpcRequest(Int64(1), "calc", "Add", [2, 3]),
     {"service": "calc", "method": "Add", "args": [2, 3]}),
    ("request goods.Save(*Goods)",
     MsRpcRequest(Int64(1), "goods", "Save", [_goods(3)]),
     {"service": "goods", "method": "Save", "args": [_goods(3)]}),
    ("response int",
     MsRpcResponse(Int64(1), Int16(200), Data=5),
     {"code": 200, "msg": "", "data": 5}),
    ("response *Result{*Goods}",
     MsRpcResponse(Int64(1), Int16(200), Data=Result(200, "success", _goods(7))),
     {"code": 200, "msg": "", "data": Result(200, "success", _goods(7))}),
    ("response []*Goods x100",
     MsRpcResponse(Int64(1), Int16(200), Data=gob.typed(
         [_goods(i) for i in range(100)], gob.slice_of(GOB_TYPES.struct_for(Goods)))),
     {"code": 200, "msg": "", "data": [_goods(i) for i in range(100)]}),
]


def best_of(repeat: int, rounds: int, work: Callable[[], Any]) -> float:
    """Seconds per call of ``work``: the best of ``repeat`` runs of ``rounds`` calls."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        for _ in range(rounds):
            work()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best


def codec_part(repeat: int, rounds: int, out: Any) -> None:
    msgpack_codec = MsgpackCodec(MSGPACK_TYPES)
    out.write("gob (msrpc.gob) vs msgpack (msrpc.codec) on msgo's message shapes: "
              "encode+decode, best of runs\n")
    out.write(f"{'shape':28} {'gob':>9} {'msgpack':>9} {'ratio':>6} {'gob+gzip':>9} "
              f"{'bytes gob/msgpack/gob+gzip':>28}\n")
    for name, message, body in SHAPES:
        struct = GOB_TYPES.struct_for(type(message))
        gob_data = gob.encode(message, registry=GOB_TYPES)
        zipped = compress.compress(compress.GZIP, gob_data)
        packed = msgpack_codec.encode(body)
        assert gob.decode(gob_data, struct, registry=GOB_TYPES) == message or \
            name.endswith("x100")
        n = max(1, rounds // (20 if name.endswith("x100") else 1))
        t_gob = best_of(repeat, n, lambda: gob.decode(
            gob.encode(message, registry=GOB_TYPES), struct, registry=GOB_TYPES))
        t_msgpack = best_of(repeat, n, lambda: msgpack_codec.decode(
            msgpack_codec.encode(body)))
        t_zip = best_of(repeat, n, lambda: gob.decode(compress.decompress(
            compress.GZIP, compress.compress(compress.GZIP, gob.encode(
                message, registry=GOB_TYPES))), struct, registry=GOB_TYPES))
        out.write(f"{name:28} {t_gob * 1e6:8.1f}us {t_msgpack * 1e6:8.1f}us "
                  f"{t_gob / t_msgpack:6.1f} {t_zip * 1e6:8.1f}us "
                  f"{len(gob_data):>12}/{len(packed)}/{len(zipped)}\n")


# --------------------------------------------------------------------------- calls/s


def build_peer() -> Path:
    """The Go peer, built as the test suite builds it (``tests/servers/msgo.py``)."""
    from tests.servers.msgo import BUILD_DIR, PEER_SOURCE, _source_digest, go_command, go_env

    target = BUILD_DIR / f"msgo-peer-{_source_digest()}"
    if not target.exists():
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([go_command(), "build", "-o", str(target), "."], cwd=PEER_SOURCE,
                       env=go_env(), check=True)
    return target


def start(argv: list[str], ready: str, env: Optional[dict[str, str]] = None
          ) -> tuple[subprocess.Popen[str], str]:
    """Start a server process; wait for the line matching ``ready``; its first group."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=REPO)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    for line in process.stdout:
        match = re.search(ready, line)
        if match:
            return process, match.group(1)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError(f"{argv[0]} did not start")


def go_client(peer: Path, address: str, concurrency: int, duration: float) -> float:
    output = subprocess.run(
        [str(peer), "bench", "-c", str(concurrency), "-d", f"{duration}s", address,
         "calc", "Add", "1", "2"], capture_output=True, text=True, check=True).stdout
    result = json.loads(output)
    if result["failures"]:
        raise RuntimeError(f"Go client: {result['failures']} failed calls")
    return float(result["calls"] / result["seconds"])


def python_client(address: str, concurrency: int, duration: float) -> float:
    """An msrpc Client speaking msgo, in a process of its own, one connection per call."""
    output = subprocess.run(
        [sys.executable, "-m", "bench.gob", "--python-client", address,
         "--concurrency", str(concurrency), "--duration", str(duration)],
        capture_output=True, text=True, check=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    return float(output.strip().splitlines()[-1])


def _python_client_process(address: str, concurrency: int, duration: float) -> None:
    from twisted.internet import defer, task

    from msrpc.client import Client
    from msrpc.loadgen import closed_loop
    from msrpc.registry.static import StaticRegistry

    async def main(reactor: Any) -> None:
        client = Client(reactor, StaticRegistry({"calc": [address]}), dialect="msgo")
        await client.call("calc", "Add", 1, 2)
        result = await closed_loop(reactor, lambda: client.call("calc", "Add", 1, 2),
                                   concurrency, duration)
        await client.close()
        if result.errors:
            raise SystemExit(f"Python client: failures {dict(result.errors)}")
        print(result.calls / result.elapsed)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))


def calls_part(concurrencies: list[int], duration: float, out: Any) -> None:
    peer = build_peer()
    go_server, go_address = start([str(peer), "serve", "127.0.0.1:0"], r"serving on (\S+)")
    twistd = Path(sys.executable).parent / "twistd"
    py_server, py_port = start(
        [str(twistd), "-n", "--pidfile=", "--logfile=-", "msrpc", "--registry", "static",
         "--listen", "tcp:0:interface=127.0.0.1", "--service",
         "calc=tests.msgo_service:CalcService"], r"msrpc serving .* port=(\d+)",
        env={**os.environ, "PYTHONPATH": str(REPO)})
    py_address = f"127.0.0.1:{py_port}"
    try:
        out.write(f"\ncalc.Add(1, 2), one connection per call (msgo's way), {duration:g}s "
                  "per row; load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
                  + "\n")
        out.write(f"{'client -> server':34} {'N':>3} {'calls/s':>9} {'ratio':>6}\n")
        for concurrency in concurrencies:
            baseline = go_client(peer, go_address, concurrency, duration)
            rows = [("Go msgo -> Go msgo (baseline)", baseline),
                    ("msrpc Python -> Go msgo", python_client(go_address, concurrency,
                                                             duration)),
                    ("Go msgo -> twistd msrpc (Python)", go_client(peer, py_address,
                                                                   concurrency, duration))]
            for name, rate in rows:
                out.write(f"{name:34} {concurrency:>3} {rate:9,.0f} {rate / baseline:6.2f}\n")
    finally:
        for process in (go_server, py_server):
            process.terminate()
            process.wait(10)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gob", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["codec", "calls", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5, help="codec: runs, best kept")
    parser.add_argument("--rounds", type=int, default=2000, help="codec: calls per run")
    parser.add_argument("--concurrency", default="1,8", help="calls: callers, e.g. 1,8")
    parser.add_argument("--duration", type=float, default=3.0, help="calls: seconds a row")
    parser.add_argument("--python-client", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.python_client:
        _python_client_process(args.python_client, concurrencies[0], args.duration)
        return 0
    if args.part in ("codec", "both"):
        codec_part(args.repeat, args.rounds, sys.stdout)
    if args.part in ("calls", "both"):
        calls_part(concurrencies, args.duration, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
