"""
msrpc with W3C trace-context propagation on (``msrpc.tracecontext``) in the server and
in the client: every call starts a trace, carries its traceparent in the request meta,
and the server makes it current while the handler runs.  Compare with ``msrpc``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from bench import twisted_harness
from bench.systems import msrpc as plain


def listen(reactor: Any, host: str, port: int) -> Deferred[int]:
    from msrpc.tracecontext import TraceContextPropagation

    return plain.listen(reactor, host, port, observers=[TraceContextPropagation()])


def connect(reactor: Any, host: str, port: int) -> Deferred[Callable[[Any], Deferred[Any]]]:
    from msrpc.tracecontext import TraceContextPropagation

    return plain.connect(reactor, host, port, observers=[TraceContextPropagation()])


serve, load = twisted_harness.entry_points(listen, connect)
