"""
msrpc: the full call path, nothing stripped.

The server runs with its token-bucket limiter on (a rate far above what the machine can
reach, so it never refuses, but every call pays for the check), per-connection and
per-server in-flight limits, and deadline checks.  The client resolves the service
through a registry into its cache, lets the weighted-random balancer pick, and gives
every call a deadline (sent to the server, and tracked by the client's shared timer).
With ``bench.run --compression``, both sides compress bodies of 4 KiB and more.
The ``msrpc_*`` variants run this same code with observers installed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred

from bench import twisted_harness, workload
from msrpc import compress
from msrpc.client import Client
from msrpc.protocol import ProtocolSettings
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server, ServerLimits

COMPRESSIONS = workload.COMPRESSIONS


class Echo:
    def echo(self, value: Any) -> Any:
        return value


class WorkingEcho:
    """The echo after a fixed amount of work (``bench.workers --work-kib``)."""

    def __init__(self) -> None:
        self._work = workload.worker(workload.work_kib())

    def echo(self, value: Any) -> Any:
        self._work()
        return value


def listen(reactor: Any, host: str, port: int,
           observers: Sequence[Any] = ()) -> Deferred[int]:
    server = Server(reactor, f"tcp:{port}:interface={host}", services={"echo": Echo()},
                    limits=ServerLimits(rate=50_000_000, burst=1_000_000),
                    settings=ProtocolSettings(
                        compression=compress.parse_name(workload.compression())),
                    observers=observers)
    server.startService()
    return server.ready.addCallback(lambda address: address.port)


def connect(reactor: Any, host: str, port: int,
            observers: Sequence[Any] = ()) -> Deferred[Callable[[Any], Deferred[Any]]]:
    registry = StaticRegistry({"echo": [f"{host}:{port}"]})
    client = Client(reactor, registry, timeout=30.0, compression=workload.compression(),
                    observers=observers)
    echo = client.proxy("echo").echo
    # The first call resolves the service and opens the connection; calls after it take
    # the cached path the benchmark measures.
    return echo({"warm": True}).addCallback(lambda _: echo)


serve, load = twisted_harness.entry_points(listen, connect)
