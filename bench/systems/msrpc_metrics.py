"""
msrpc with Prometheus metrics on (``msrpc.metrics``) in the server and in the client:
the ``msrpc`` system's code, observed.  Compare with ``msrpc`` in the same run.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from bench import twisted_harness
from bench.systems import msrpc as plain


def listen(reactor: Any, host: str, port: int) -> Deferred[int]:
    from msrpc.metrics import Metrics

    return plain.listen(reactor, host, port, observers=[Metrics()])


def connect(reactor: Any, host: str, port: int) -> Deferred[Callable[[Any], Deferred[Any]]]:
    from msrpc.metrics import Metrics

    return plain.connect(reactor, host, port, observers=[Metrics()])


serve, load = twisted_harness.entry_points(listen, connect)
