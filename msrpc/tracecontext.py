"""
W3C Trace Context (``traceparent``, ``tracestate``) carried in request meta, with no
tracing library: a call made while a handler runs continues the trace of the call that
handler is serving, so every hop of a request shares one trace id (for logs, and for
tracers further down the line).

``TraceContextPropagation`` does it (``--trace w3c``), as an ``ICallContext``: it sees
only the request meta, never a call.  On the server it reads the request's trace
context into a context variable for the duration of the handler (each request runs in
its own copy of the context, so nothing leaks between requests; ``async def`` handlers
keep it across awaits).  On the client it writes the current one into the call's meta,
unchanged: msrpc records no spans of its own, so the caller's span stays the parent of
whatever the next service records.  A call made outside any trace starts one (new
random ids, "sampled" flag off: nobody recorded it).  With OpenTelemetry, use
``msrpc.tracing`` instead: it propagates the same headers and records spans.
"""

from __future__ import annotations

import contextvars
import random
import re
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Optional

from zope.interface import implementer

from msrpc.observe import ICallContext

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Longer tracestate values are dropped rather than carried (W3C: at most 32 members;
#: 512 characters is what implementations must be able to propagate).
MAX_TRACESTATE = 512

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
#: What a version-00 traceparent (55 ASCII characters, dashes where ``_TRACEPARENT``
#: puts them, three in all) is made of: the common case, checked by deleting these
#: bytes (in C, a table lookup per byte) instead of running the regex.
_HEX_AND_DASHES = b"0123456789abcdef-"
_new_tuple = tuple.__new__
_random_bits = random.getrandbits
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16
_NO_TRACE_PREFIX = f"00-{_NO_TRACE}"
_NO_SPAN_FIELD = f"-{_NO_SPAN}-"


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
        return _new_tuple(cls, (new_traceparent("01" if sampled else "00"), ""))

    @classmethod
    def parse(cls, traceparent: Any, tracestate: Any = None) -> Optional["TraceContext"]:
        """The context a peer sent, or None when its traceparent is missing or invalid
        (W3C: an invalid one is ignored, never passed on)."""
        if not isinstance(traceparent, str):
            return None
        if (len(traceparent) == 55 and traceparent[2] == "-" and traceparent[35] == "-"
                and traceparent[52] == "-" and traceparent.count("-") == 3
                and traceparent.isascii()
                and not traceparent.encode().translate(None, _HEX_AND_DASHES)):
            # Version 00's exact form (what every peer sends today): the fields are
            # where the dashes say, lowercase hex; only the reserved values remain.
            if (traceparent[:2] == "ff" or traceparent[3:35] == _NO_TRACE
                    or traceparent[36:52] == _NO_SPAN):
                return None
        else:
            match = _TRACEPARENT.fullmatch(traceparent)
            if match is None:
                return None
            version, trace_id, parent_id, _, rest = match.groups()
            if version == "ff" or trace_id == _NO_TRACE or parent_id == _NO_SPAN:
                return None
            if version == "00" and rest:
                return None  # version 00 has exactly four fields
            traceparent = traceparent[:55]
        if tracestate is None:
            return _new_tuple(cls, (traceparent, ""))
        if not isinstance(tracestate, str) or len(tracestate) > MAX_TRACESTATE:
            tracestate = ""
        return _new_tuple(cls, (traceparent, tracestate.strip()))

    def to_meta(self, meta: dict[str, Any]) -> None:
        meta[TRACEPARENT] = self.traceparent
        if self.tracestate:
            meta[TRACESTATE] = self.tracestate


def new_traceparent(flags: str = "00") -> str:
    """A ``traceparent`` starting a new trace (random trace and parent ids)."""
    # One draw: 16 bytes of trace id, then 8 of parent id, hexed with the dash between
    # (``bytes.hex`` places it: no slicing).  All-zero ids are invalid: draw again.
    while True:
        traceparent = f"00-{_random_bits(192).to_bytes(24, 'big').hex('-', -16)}-{flags}"
        if not (traceparent.startswith(_NO_TRACE_PREFIX) or _NO_SPAN_FIELD in traceparent):
            return traceparent


#: The current trace context; or, in a request's own context until something reads it,
#: the request's meta (a dict), parsed on first use: a handler that makes no call and
#: never asks costs no parsing.
_current: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "msrpc_trace_context", default=None)


def current() -> Optional[TraceContext]:
    """The trace context of the request being handled (or set with ``use``), if any."""
    context = _current.get()
    if context.__class__ is dict:
        context = TraceContext.parse(context.get(TRACEPARENT), context.get(TRACESTATE))
        _current.set(context)  # in the request's context: parsed once
    return context  # type: ignore[no-any-return]


@contextmanager
def use(context: Optional[TraceContext]) -> Iterator[None]:
    """Make ``context`` current in this block: calls made inside continue that trace
    (e.g. one taken from an incoming HTTP request's headers)."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


@implementer(ICallContext)
class TraceContextPropagation:
    """Carries W3C trace context from each request to the calls its handler makes."""

    def __init__(self, start_traces: bool = True) -> None:
        #: Whether a call made outside any trace starts a new one.
        self.start_traces = start_traces

    def incoming(self, meta: Any) -> None:
        # In the request's own copy of the context.  The meta is kept as it is and
        # parsed (validated) when first read (``current``); a request without trace
        # context, served where none is current, costs a lookup.
        if meta.__class__ is dict and TRACEPARENT in meta:
            _current.set(meta)
        elif _current.get() is not None:
            _current.set(None)

    def outgoing(self, meta: dict[str, Any]) -> None:
        if TRACEPARENT in meta:
            return  # the caller passed one explicitly (invoke(meta=...))
        context = current()
        if context is None:
            if self.start_traces:
                meta[TRACEPARENT] = new_traceparent()
            return
        context.to_meta(meta)


__all__ = ["TraceContext", "TraceContextPropagation", "current", "use", "new_traceparent",
           "TRACEPARENT", "TRACESTATE"]
