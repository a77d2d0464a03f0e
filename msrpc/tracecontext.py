"""
W3C Trace Context (``traceparent``, ``tracestate``) carried in request meta, with no
tracing library: a call made while a handler runs continues the trace of the call that
handler is serving, so every hop of a request shares one trace id (for logs, and for
tracers further down the line).

``TraceContextPropagation`` is the observer that does it (``--trace w3c``).  On the
server it reads the request's trace context into a context variable for the duration of
the handler (each request runs in its own copy of the context, so nothing leaks between
requests; ``async def`` handlers keep it across awaits).  On the client it writes the
current one into the call's meta, unchanged: msrpc records no spans of its own, so the
caller's span stays the parent of whatever the next service records.  A call made
outside any trace starts one (new random ids, "sampled" flag off: nobody recorded it).
With OpenTelemetry, use ``msrpc.tracing`` instead: it propagates the same headers and
records spans.
"""

from __future__ import annotations

import contextvars
import random
import re
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Optional

from zope.interface import implementer

from msrpc.observe import SERVER, CallInfo, ICallObserver

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Longer tracestate values are dropped rather than carried (W3C: at most 32 members;
#: 512 characters is what implementations must be able to propagate).
MAX_TRACESTATE = 512

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_random_bytes = random.randbytes
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


class TraceContext(NamedTuple):
    """One valid ``traceparent`` and its ``tracestate`` ("" when there is none).  A tuple:
    made once per call when propagation is on, so it must be cheap."""

    traceparent: str
    tracestate: str = ""

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def sampled(self) -> bool:
        return bool(int(self.traceparent[53:55], 16) & 1)

    @classmethod
    def new(cls, sampled: bool = False) -> "TraceContext":
        """A new trace (random trace and parent ids)."""
        ids = _random_bytes(24).hex()  # one draw: 16 bytes of trace id, 8 of parent id
        while ids[:32] == _NO_TRACE or ids[32:] == _NO_SPAN:
            ids = _random_bytes(24).hex()
        return cls(f"00-{ids[:32]}-{ids[32:]}-{'01' if sampled else '00'}")

    @classmethod
    def parse(cls, traceparent: Any, tracestate: Any = None) -> Optional["TraceContext"]:
        """The context a peer sent, or None when its traceparent is missing or invalid
        (W3C: an invalid one is ignored, never passed on)."""
        if not isinstance(traceparent, str) or len(traceparent) < 55:
            return None
        match = _TRACEPARENT.fullmatch(traceparent)
        if match is None:
            return None
        version, trace_id, parent_id, _, rest = match.groups()
        if version == "ff" or trace_id == _NO_TRACE or parent_id == _NO_SPAN:
            return None
        if version == "00" and rest:
            return None  # version 00 has exactly four fields
        if not isinstance(tracestate, str) or len(tracestate) > MAX_TRACESTATE:
            tracestate = ""
        return cls(traceparent[:55], tracestate.strip())

    def to_meta(self, meta: dict[str, Any]) -> None:
        meta[TRACEPARENT] = self.traceparent
        if self.tracestate:
            meta[TRACESTATE] = self.tracestate


_current: contextvars.ContextVar[Optional[TraceContext]] = contextvars.ContextVar(
    "msrpc_trace_context", default=None)


def current() -> Optional[TraceContext]:
    """The trace context of the request being handled (or set with ``use``), if any."""
    return _current.get()


@contextmanager
def use(context: Optional[TraceContext]) -> Iterator[None]:
    """Make ``context`` current in this block: calls made inside continue that trace
    (e.g. one taken from an incoming HTTP request's headers)."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


@implementer(ICallObserver)
class TraceContextPropagation:
    """Carries W3C trace context from each request to the calls its handler makes."""

    contextual = True

    def __init__(self, start_traces: bool = True) -> None:
        #: Whether a call made outside any trace starts a new one.
        self.start_traces = start_traces

    def call_started(self, call: CallInfo) -> None:
        meta = call.meta
        if call.side == SERVER:
            if meta.__class__ is dict:
                _current.set(TraceContext.parse(meta.get(TRACEPARENT), meta.get(TRACESTATE)))
            return
        if TRACEPARENT in meta:
            return  # the caller passed one explicitly (invoke(meta=...))
        context = _current.get()
        if context is None:
            if not self.start_traces:
                return
            context = TraceContext.new()
        context.to_meta(meta)

    def call_finished(self, call: CallInfo) -> None:
        pass


__all__ = ["TraceContext", "TraceContextPropagation", "current", "use", "TRACEPARENT",
           "TRACESTATE"]
