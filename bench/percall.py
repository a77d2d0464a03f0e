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
from typing import Any, Callable, NamedTuple, Sequence

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


class Session(NamedTuple):
    """One side, set up for ``batch`` calls per read.  ``prepare()`` makes the next
    round's input (not measured; it may be called several rounds ahead), ``run(input)``
    performs the round, ``check()`` raises unless every call run so far completed;
    ``transport`` is what the side writes to (msrpc servers)."""

    prepare: Callable[[], Any]
    run: Callable[[Any], None]
    check: Callable[[], None]
    transport: Any = None


class WallClock(Clock):
    """A ``Clock`` that reads the time as a reactor does (``time.time``, one C call), so
    the clock reads of the call path cost what they cost in production; its timers
    (30 s deadlines) never come due and are never run."""

    seconds = staticmethod(time.time)  # type: ignore[assignment]


def _timed(rounds: int, session: Session) -> float:
    """Seconds spent in ``session.run`` over ``rounds`` rounds (``prepare`` is not timed)."""
    total = 0.0
    now = clock
    prepare, run = session.prepare, session.run
    for _ in range(rounds):
        state = prepare()
        started = now()
        run(state)
        total += now() - started
    session.check()
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


def _check(condition: bool, problem: str) -> None:
    """A measurement of calls that did not complete would measure nothing: refuse it."""
    if not condition:
        raise RuntimeError(problem)


def _answered(replies: list[Any], batch: int, ok: Callable[[Any], bool], who: str) -> None:
    """Every round since the transport was last cleared was answered, each call once."""
    _check(bool(replies) and len(replies) % batch == 0 and all(map(ok, replies)),
           f"{who} did not answer every request")


def baseline_client_session(batch: int) -> Session:
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

    def check() -> None:
        _check(not client._pending, "baseline replies did not match its calls")

    return Session(prepare, run, check)


def _connected_client(observers: Sequence[Any]) -> tuple[Any, Any, StringTransport]:
    """An msrpc client whose one connection is a ``StringTransport``: its echo method,
    that connection's protocol and transport.  One call is made (resolving and
    connecting) and never answered: harmless."""
    held: dict[str, Any] = {}

    def connector(host: str, port: int, protocol: Any) -> "defer.Deferred[Any]":
        held["protocol"], held["transport"] = protocol, StringTransport()
        protocol.makeConnection(held["transport"])
        return defer.succeed(protocol)

    client = Client(WallClock(), StaticRegistry({"echo": ["127.0.0.1:1"]}), timeout=30.0,
                    connector=connector, observers=observers)
    echo = client.proxy("echo").echo
    echo(VALUE)
    return echo, held["protocol"], held["transport"]


def _bodies(data: bytes) -> list[bytes]:
    bodies: list[bytes] = []
    wire.FrameParser(lambda *frame: bodies.append(frame[-1])).feed(data)
    return bodies


def msrpc_request_body(observers: Sequence[Any] = ()) -> bytes:
    """The echo request as msrpc's client writes it, with ``observers`` on (a trace
    context, say): what the server side is fed."""
    return _bodies(_connected_client(observers)[2].value())[0]


def msrpc_reply_body() -> bytes:
    """The echo reply as msrpc's server writes it: what the client side is fed."""
    server = msrpc_server_session(1)
    server.run(server.prepare())
    return _bodies(server.transport.value())[-1]


def msrpc_client_session(batch: int, observers: Sequence[Any] = ()) -> Session:
    body = msrpc_reply_body()
    echo, protocol, transport = _connected_client(observers)
    next_rid = [protocol._next_rid]

    def prepare() -> list[bytes]:
        first = next_rid[0]
        next_rid[0] += batch
        transport.clear()
        return _reads(b"".join(wire.encode_frame(wire.RESPONSE, 1, 2, first + i, body)
                               for i in range(batch)))

    def run(replies: list[bytes]) -> None:
        for _ in range(batch):
            echo(VALUE)
        _feed(protocol, replies)

    def check() -> None:
        _check(protocol.outstanding == 1, "msrpc replies did not match its calls")  # warm-up

    return Session(prepare, run, check)


def baseline_server_session(batch: int) -> Session:
    server, transport = EchoServer(), StringTransport()
    server.makeConnection(transport)
    requests = _reads(_length_prefixed([msgpack.packb([i, VALUE]) for i in range(batch)]))

    def check() -> None:
        _answered(_split_length_prefixed(transport.value()), batch,
                  lambda reply: msgpack.unpackb(reply)[1] == VALUE, "baseline server")

    return Session(transport.clear, lambda _: _feed(server, requests), check)


def msrpc_server_session(batch: int, observers: Sequence[Any] = ()) -> Session:
    clock = WallClock()
    dispatcher = Dispatcher(clock, ServerLimits(rate=50_000_000, burst=1_000_000))
    dispatcher.add_service("echo", _Echo())
    factory = RpcServerFactory(dispatcher, ProtocolSettings(), Sweeper(clock, SERVER_KEEPALIVE))
    factory.observe(combine(observers))
    protocol, transport = factory.buildProtocol(None), StringTransport()
    protocol.makeConnection(transport)
    body = msrpc_request_body(observers)
    requests = _reads(b"".join(wire.encode_frame(wire.REQUEST, 1, 2, i + 1, body)
                               for i in range(batch)))

    def check() -> None:
        _answered(_bodies(transport.value()), batch,
                  lambda reply: CODEC.decode(reply)["code"] == 200, "msrpc server")

    return Session(transport.clear, lambda _: _feed(protocol, requests), check, transport)


def baseline_client(batch: int, rounds: int) -> float:
    return _timed(rounds, baseline_client_session(batch))


def msrpc_client(batch: int, rounds: int, observers: Sequence[Any] = ()) -> float:
    return _timed(rounds, msrpc_client_session(batch, observers))


def baseline_server(batch: int, rounds: int) -> float:
    return _timed(rounds, baseline_server_session(batch))


def msrpc_server(batch: int, rounds: int, observers: Sequence[Any] = ()) -> float:
    return _timed(rounds, msrpc_server_session(batch, observers))


SIDES = [("client", baseline_client, msrpc_client), ("server", baseline_server, msrpc_server)]


def _metrics() -> list[Any]:
    from msrpc.metrics import Metrics

    return [Metrics()]


def _w3c() -> list[Any]:
    from msrpc.tracecontext import TraceContextPropagation

    return [TraceContextPropagation()]


def _otel() -> list[Any]:
    """OpenTelemetry spans recorded by the SDK (sampled, attributes set) and sent to no
    exporter: msrpc's and the SDK's cost, without the export's."""
    from opentelemetry.sdk.trace import TracerProvider

    from msrpc.tracing import OpenTelemetryTracing

    return [OpenTelemetryTracing(tracer_provider=TracerProvider())]


#: ``--observe NAME``: msrpc again with these observers on (both sides).
OBSERVERS: dict[str, Callable[[], list[Any]]] = {"metrics": _metrics, "w3c": _w3c,
                                                 "otel": _otel}


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
                        "(repeatable): metrics (msrpc.metrics), w3c (msrpc.tracecontext), "
                        "otel (msrpc.tracing, SDK spans, no exporter)")
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
