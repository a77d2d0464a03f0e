"""
The access log (``twistd msrpc --access-log``): one structured ``twisted.logger`` event
per call a server answered, in the ``msrpc.access`` namespace, with the fields
``service``, ``method``, ``code``, ``duration`` (seconds), ``peer``, ``bytes_in``,
``bytes_out``, ``refused`` (why the handler did not run, or "") and ``trace_id`` (from
the request's ``traceparent``, or "").  Observers of the global log publisher (JSON
file logs, ``twistd --logger``) get the fields as they are; the text form reads

    echo.echo 200 0.142ms from 127.0.0.1:50312 in=61 out=40
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger
from zope.interface import implementer

from msrpc.observe import CallInfo, ICallObserver
from msrpc.tracecontext import TRACEPARENT, TraceContext


@implementer(ICallObserver)
class AccessLog:
    """Logs every finished server call (client calls are not logged)."""

    contextual = False

    def __init__(self, log: Optional[Logger] = None) -> None:
        self.log = log if log is not None else Logger(namespace="msrpc.access")

    def call_started(self, call: CallInfo) -> None:
        pass

    def call_finished(self, call: CallInfo) -> None:
        if call.side != "server":
            return
        meta = call.meta
        context = (TraceContext.parse(meta.get(TRACEPARENT)) if meta.__class__ is dict
                   else None)
        self.log.info(
            "{service}.{method} {code} {duration_ms:.3f}ms from {peer} in={bytes_in} "
            "out={bytes_out}{why}",
            service=call.service, method=call.method, code=call.code,
            duration=call.duration, duration_ms=call.duration * 1000.0, peer=call.peer,
            bytes_in=call.bytes_in, bytes_out=call.bytes_out, refused=call.refused,
            why=f" refused: {call.refused}" if call.refused else "",
            trace_id=context.trace_id if context is not None else "")


__all__ = ["AccessLog"]
