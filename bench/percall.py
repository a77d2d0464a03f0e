"""
CPU per call of each side, without a network: where msrpc spends more than the baseline.

    python -m bench.percall                # batches of 64 calls, then 1 call per read
    python -m bench.percall --batch 64 --rounds 3000 --repeat 6
    python -m bench.percall --observe metrics --observe w3c --cpu-time

The loopback benchmark (``bench.run``) says *whether* msrpc keeps up; this says *which
side* costs what.  Each side's protocol is fed through a ``StringTransport``: the client
sends a batch of calls and gets their replies in one read; the server gets a batch of
requests in one read and answers them.  The figures are nanoseconds of CPU per call,
best of ``--repeat`` runs, msrpc (limiter, deadlines and resolver on, as in ``bench.run``)
next to the bare Twisted msgpack echo.
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

from bench.systems.baseline import EchoClient, EchoServer
from bench.workload import request
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


class _Echo:
    def echo(self, value: Any) -> Any:
        return value


#: What ``_timed`` reads: wall time, or this thread's CPU time (``--cpu-time``).
_clock: Callable[[], float] = time.perf_counter


def _timed(rounds: int, prepare: Callable[[], Any], run: Callable[[Any], None]) -> float:
    """Seconds spent in ``run`` over ``rounds`` rounds (``prepare`` is not timed)."""
    total = 0.0
    for _ in range(rounds):
        state = prepare()
        started = _clock()
        run(state)
        total += _clock() - started
    return total


def _length_prefixed(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack("!I", len(p)) + p for p in payloads)


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

    def prepare() -> bytes:
        first = next_id[0]
        next_id[0] += batch
        transport.clear()
        return _length_prefixed([msgpack.packb([first + i, VALUE]) for i in range(batch)])

    def run(replies: bytes) -> None:
        for _ in range(batch):
            client.call(VALUE)
        client.dataReceived(replies)

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

    def prepare() -> bytes:
        first = protocol._next_rid
        transport.clear()
        return b"".join(wire.encode_frame(wire.RESPONSE, 1, 2, first + i, body)
                        for i in range(batch))

    def run(replies: bytes) -> None:
        for _ in range(batch):
            echo(VALUE)
        protocol.dataReceived(replies)

    elapsed = _timed(rounds, prepare, run)
    _check(protocol.outstanding == 1, "msrpc replies did not match its calls")  # warm-up
    return elapsed


def baseline_server(batch: int, rounds: int) -> float:
    server, transport = EchoServer(), StringTransport()
    server.makeConnection(transport)
    requests = _length_prefixed([msgpack.packb([i, VALUE]) for i in range(batch)])
    elapsed = _timed(rounds, transport.clear, lambda _: server.dataReceived(requests))
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
    requests = b"".join(wire.encode_frame(wire.REQUEST, 1, 2, i + 1, body)
                        for i in range(batch))
    elapsed = _timed(rounds, transport.clear, lambda _: protocol.dataReceived(requests))
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
    parser = argparse.ArgumentParser(prog="python -m bench.percall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, action="append",
                        help="calls per read (repeatable; default 64 and 1)")
    parser.add_argument("--calls", type=int, default=200_000, help="calls per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="measurements; best is shown")
    parser.add_argument("--observe", action="append", choices=sorted(OBSERVERS), default=[],
                        help="also measure msrpc with these observers on (repeatable): "
                             "metrics (msrpc.metrics), w3c (msrpc.tracecontext)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="count this thread's CPU time instead of wall time (steadier "
                             "on a busy machine)")
    args = parser.parse_args(argv)
    global _clock
    _clock = time.thread_time if args.cpu_time else time.perf_counter
    extra = "".join(f"  {'+' + name:>10}  {'vs msrpc':>8}" for name in args.observe)
    print(f"{'side':6}  {'batch':>5}  {'baseline':>10}  {'msrpc':>10}  {'extra':>8}  ratio"
          + extra)
    for batch in args.batch or [64, 1]:
        rounds = max(1, args.calls // batch)
        for side, baseline, ours in SIDES:
            measures = [baseline, ours] + [
                functools.partial(ours, observers=OBSERVERS[name]()) for name in args.observe]
            best = [float("inf")] * len(measures)
            for _ in range(args.repeat):
                for slot, measure in enumerate(measures):
                    gc.collect()
                    best[slot] = min(best[slot], measure(batch, rounds) / (batch * rounds))
            base_ns, ours_ns, *observed = [b * 1e9 for b in best]
            print(f"{side:6}  {batch:5}  {base_ns:8.0f}ns  {ours_ns:8.0f}ns  "
                  f"{ours_ns - base_ns:+6.0f}ns  {ours_ns / base_ns:.2f}"
                  + "".join(f"  {ns:8.0f}ns  {ns / ours_ns:8.2f}" for ns in observed))


if __name__ == "__main__":
    main()
