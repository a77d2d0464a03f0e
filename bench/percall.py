"""
CPU per call of each side, without a network: where msrpc spends more than the baseline.

    python -m bench.percall                # batches of 64 calls, then 1 call per read
    python -m bench.percall --batch 64 --calls 100000 --repeat 6
    python -m bench.percall --payload 64k,1m --batch 1   # payload echoes, read 64 KiB a time
    python -m bench.percall --observe metrics --observe w3c --cpu-clock  # observers' cost

The loopback benchmark (``bench.run``) says *whether* msrpc keeps up; this says *which
side* costs what.  Each side's protocol is fed through a ``StringTransport``: the client
sends a batch of calls and gets their replies in one read; the server gets a batch of
requests in one read and answers them.  The figures are nanoseconds of CPU per call,
best of ``--repeat`` runs, msrpc (limiter, deadlines and resolver on, as in ``bench.run``)
next to the bare Twisted msgpack echo.  Bytes are fed in reads of at most 64 KiB, as
Twisted's TCP transport reads them, so large frames arrive in pieces.
"""

from __future__ import annotations

import argparse
import functools
import gc
import struct
import time
from typing import Any, Callable, Sequence

import msgpack
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench import workload
from bench.systems.baseline import EchoClient, EchoServer
from bench.workload import parse_size, request, size_label
from msrpc import wire
from msrpc.client import Client
from msrpc.codec import MsgpackCodec
from msrpc.observe import combine
from msrpc.protocol import ProtocolSettings
from msrpc.registry.static import StaticRegistry
from msrpc.server import Dispatcher, RpcServerFactory, ServerLimits
from msrpc.sweep import SERVER_KEEPALIVE, Sweeper

VALUE = request(1)
CODEC = MsgpackCodec()
#: What Twisted's TCP transport reads at once (abstract.FileDescriptor.bufferSize).
READ_SIZE = 65536


class _Echo:
    def echo(self, value: Any) -> Any:
        return value


#: The clock measurements read: wall time, or this thread's CPU time (``--cpu-clock``:
#: steadier on a busy machine, since time spent preempted does not count).
clock: Callable[[], float] = time.perf_counter


def _timed(rounds: int, prepare: Callable[[], Any], run: Callable[[Any], None]) -> float:
    """Seconds spent in ``run`` over ``rounds`` rounds (``prepare`` is not timed)."""
    total = 0.0
    now = clock
    for _ in range(rounds):
        state = prepare()
        started = now()
        run(state)
        total += now() - started
    return total


def _length_prefixed(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack("!I", len(p)) + p for p in payloads)


def _reads(data: bytes) -> list[bytes]:
    """``data`` as the transport would deliver it: reads of at most READ_SIZE bytes."""
    return [data[i:i + READ_SIZE] for i in range(0, len(data), READ_SIZE)]


def _feed(protocol: Any, reads: list[bytes]) -> None:
    for data in reads:
        protocol.dataReceived(data)


def _split_length_prefixed(data: bytes) -> list[bytes]:
    payloads, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from("!I", data, offset)
        payloads.append(data[offset + 4:offset + 4 + size])
        offset += 4 + size
    return payloads


def baseline_client(batch: int, rounds: int) -> float:
    client, transport = EchoClient(), StringTransport()
    client.makeConnection(transport)
    next_id = [0]

    def prepare() -> list[bytes]:
        first = next_id[0]
        next_id[0] += batch
        transport.clear()
        return _reads(_length_prefixed([msgpack.packb([first + i, VALUE])
                                        for i in range(batch)]))

    def run(replies: list[bytes]) -> None:
        for _ in range(batch):
            client.call(VALUE)
        _feed(client, replies)

    elapsed = _timed(rounds, prepare, run)
    _check(not client._pending, "baseline replies did not match its calls")
    return elapsed


def _check(condition: bool, problem: str) -> None:
    """A measurement of calls that did not complete would measure nothing: refuse it."""
    if not condition:
        raise RuntimeError(problem)


def msrpc_client(batch: int, rounds: int, observers: Sequence[Any] = ()) -> float:
    held: dict[str, Any] = {}

    def connector(host: str, port: int, protocol: Any) -> "defer.Deferred[Any]":
        held["protocol"], held["transport"] = protocol, StringTransport()
        protocol.makeConnection(held["transport"])
        return defer.succeed(protocol)

    client = Client(Clock(), StaticRegistry({"echo": ["127.0.0.1:1"]}), timeout=30.0,
                    connector=connector, observers=observers)
    echo = client.proxy("echo").echo
    echo(VALUE)  # resolves and connects; never answered, harmless
    protocol, transport = held["protocol"], held["transport"]
    body = CODEC.encode({"code": 200, "msg": "", "data": VALUE})

    def prepare() -> list[bytes]:
        first = protocol._next_rid
        transport.clear()
        return _reads(b"".join(wire.encode_frame(wire.RESPONSE, 1, 2, first + i, body)
                               for i in range(batch)))

    def run(replies: list[bytes]) -> None:
        for _ in range(batch):
            echo(VALUE)
        _feed(protocol, replies)

    elapsed = _timed(rounds, prepare, run)
    _check(protocol.outstanding == 1, "msrpc replies did not match its calls")  # warm-up
    return elapsed


def baseline_server(batch: int, rounds: int) -> float:
    server, transport = EchoServer(), StringTransport()
    server.makeConnection(transport)
    requests = _reads(_length_prefixed([msgpack.packb([i, VALUE]) for i in range(batch)]))
    elapsed = _timed(rounds, transport.clear, lambda _: _feed(server, requests))
    replies = _split_length_prefixed(transport.value())
    _check(len(replies) == batch and msgpack.unpackb(replies[-1])[1] == VALUE,
           "baseline server did not answer every request")
    return elapsed


def msrpc_server(batch: int, rounds: int, observers: Sequence[Any] = ()) -> float:
    clock = Clock()
    clock.advance(time.time())
    dispatcher = Dispatcher(clock, ServerLimits(rate=50_000_000, burst=1_000_000))
    dispatcher.add_service("echo", _Echo())
    factory = RpcServerFactory(dispatcher, ProtocolSettings(), Sweeper(clock, SERVER_KEEPALIVE))
    factory.observe(combine(observers))
    protocol, transport = factory.buildProtocol(None), StringTransport()
    protocol.makeConnection(transport)
    body = CODEC.encode({"service": "echo", "method": "echo", "args": [VALUE],
                         "meta": {"deadline": 30_000}})
    requests = _reads(b"".join(wire.encode_frame(wire.REQUEST, 1, 2, i + 1, body)
                               for i in range(batch)))
    elapsed = _timed(rounds, transport.clear, lambda _: _feed(protocol, requests))
    replies: list[bytes] = []
    wire.FrameParser(lambda *frame: replies.append(frame[-1])).feed(transport.value())
    _check(len(replies) == batch and CODEC.decode(replies[-1])["code"] == 200,
           "msrpc server did not answer every request")
    return elapsed


SIDES = [("client", baseline_client, msrpc_client), ("server", baseline_server, msrpc_server)]


def _metrics() -> list[Any]:
    from msrpc.metrics import Metrics

    return [Metrics()]


def _w3c() -> list[Any]:
    from msrpc.tracecontext import TraceContextPropagation

    return [TraceContextPropagation()]


#: ``--observe NAME``: msrpc again with these observers on (both sides).
OBSERVERS: dict[str, Callable[[], list[Any]]] = {"metrics": _metrics, "w3c": _w3c}


def main(argv: list[str] | None = None) -> None:
    global VALUE, clock
    parser = argparse.ArgumentParser(prog="python -m bench.percall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, action="append",
                        help="calls per read (repeatable; default 64 and 1)")
    parser.add_argument("--calls", type=int, default=200_000, help="calls per measurement "
                        "(with --payload: at most 64 MiB of payload)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements; best is shown")
    parser.add_argument("--payload", default=None, metavar="SIZES",
                        help="echo payloads of these sizes (1k,64k,1m) instead of the small "
                        "dict; adds MB/s of CPU per side")
    parser.add_argument("--kind", choices=("bytes", "str"), default="bytes")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time with this thread's CPU clock instead of the wall clock "
                        "(steadier on a busy machine; each reading costs a system call)")
    parser.add_argument("--observe", action="append", choices=sorted(OBSERVERS), default=[],
                        help="also measure msrpc with these observers on, both sides "
                        "(repeatable): metrics (msrpc.metrics), w3c (msrpc.tracecontext)")
    args = parser.parse_args(argv)
    clock = time.thread_time if args.cpu_clock else time.perf_counter
    sizes = [parse_size(v) for v in args.payload.split(",")] if args.payload else [0]
    print(f"{'payload':>12}  {'side':6}  {'batch':>5}  {'baseline':>10}  {'msrpc':>10}  "
          f"{'extra':>10}  ratio"
          + "".join(f"  {'+' + name:>10}  vs msrpc" for name in args.observe)
          + ("  MB/s of CPU (baseline, msrpc)" if args.payload else ""))
    for size in sizes:
        workload.configure(size, args.kind)
        VALUE = request(1)
        calls = min(args.calls, (64 << 20) // size) if size else args.calls
        label = f"{size_label(size)} {args.kind}" if size else "small dict"
        for batch in args.batch or ([1, 16] if size else [64, 1]):
            rounds = max(1, calls // batch)
            for side, baseline, ours in SIDES:
                measures = [baseline, ours] + [
                    functools.partial(ours, observers=OBSERVERS[name]())
                    for name in args.observe]
                best = [float("inf")] * len(measures)
                for _ in range(args.repeat):
                    for slot, measure in enumerate(measures):
                        gc.collect()
                        best[slot] = min(best[slot],
                                         measure(batch, rounds) / (batch * rounds))
                base_ns, ours_ns, *observed = [b * 1e9 for b in best]
                line = (f"{label:>12}  {side:6}  {batch:5}  {_ns(base_ns)}  {_ns(ours_ns)}  "
                        f"{_ns(ours_ns - base_ns, '+')}  {ours_ns / base_ns:.2f}"
                        + "".join(f"  {_ns(ns)}  {ns / ours_ns:8.2f}" for ns in observed))
                if size:
                    line += f"  {size / base_ns * 1e3:,.0f}, {size / ours_ns * 1e3:,.0f}"
                print(line)
    workload.configure(None)
    VALUE = request(1)


def _ns(ns: float, sign: str = "") -> str:
    """Nanoseconds, switching to microseconds when they get long."""
    if abs(ns) < 100_000:
        return f"{ns:{sign}8.0f}ns"
    return f"{ns / 1000:{sign}8.0f}us"


if __name__ == "__main__":
    main()
