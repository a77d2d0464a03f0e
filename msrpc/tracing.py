"""
OpenTelemetry spans for msrpc calls: the ``msrpc[otel]`` extra (opentelemetry-api).
Importing this module imports OpenTelemetry; nothing else in msrpc imports it unless
``--trace otel`` (or ``OpenTelemetryTracing``) is asked for.

One CLIENT span per call (every attempt included) and one SERVER span per request,
following OpenTelemetry's RPC semantic conventions: named ``{service}/{method}``, with
``rpc.system`` ("msrpc"), ``rpc.service``, ``rpc.method``, the peer's address, and the
outcome in ``rpc.msrpc.status_code`` (the wire code) and ``error.type``.  A client span
is an error for every failure; a server span only for the server's own failures (500,
503, 408), as gRPC's conventions do, not for the caller's mistakes (400, 401, 404, 700).

The trace context travels in the request meta through OpenTelemetry's propagator (W3C
``traceparent``/``tracestate`` by default), and the server makes its span current while
the handler runs, so the calls it makes (and the spans its own code starts) are children.
Times come from the reactor clock.  ``otlp_tracer_provider`` sets up the SDK exporting to
an OTLP/HTTP collector (Jaeger, the OpenTelemetry Collector...): the ``msrpc[otlp]`` extra.
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from zope.interface import implementer

from msrpc.observe import SERVER, CallInfo, ICallObserver
from msrpc.registry.instance import parse_address

RPC_SYSTEM = "msrpc"
#: Codes that make a server span an error: the server failed, not the caller.
SERVER_ERRORS = frozenset({408, 500, 503})
_SECONDS_TO_NS = 1_000_000_000


@implementer(ICallObserver)
class OpenTelemetryTracing:
    """Starts and ends the spans; pass a ``tracer_provider`` or use the global one."""

    contextual = True

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None,
                 propagator: Optional[TextMapPropagator] = None) -> None:
        from msrpc import __version__

        self.tracer = trace.get_tracer("msrpc", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator

    @property
    def propagator(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    def call_started(self, call: CallInfo) -> None:
        attributes: dict[str, Any] = {"rpc.system": RPC_SYSTEM, "rpc.service": call.service,
                                      "rpc.method": call.method}
        start = int(call.started * _SECONDS_TO_NS)
        name = f"{call.service}/{call.method}"
        if call.side == SERVER:
            meta = call.meta if call.meta.__class__ is dict else {}
            carrier = {k: v for k, v in meta.items() if isinstance(v, str)}
            parent = self.propagator.extract(carrier)
            _peer(attributes, "network.peer", call.peer)
            span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                          attributes=attributes, start_time=start)
            # The request runs in its own copy of the context (``contextual``): this stays
            # current while the handler runs, and goes with that copy.
            otel_context.attach(trace.set_span_in_context(span, parent))
        else:
            span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes,
                                          start_time=start)
            self.propagator.inject(call.meta, context=trace.set_span_in_context(span))
        call.span = span

    def call_finished(self, call: CallInfo) -> None:
        span = call.span
        if span is None:
            return  # a server call refused before its method was known: no span
        code = call.code
        if isinstance(code, int):
            span.set_attribute("rpc.msrpc.status_code", code)
        if call.side == SERVER:
            failed = code in SERVER_ERRORS
        else:
            failed = code != 200
            _peer(span, "server", call.peer)
        if failed:
            span.set_attribute("error.type", str(code))
            span.set_status(Status(StatusCode.ERROR, f"msrpc code {code}"))
        span.end(end_time=int((call.started + call.duration) * _SECONDS_TO_NS))


def _peer(target: Any, prefix: str, address: str) -> None:
    """``{prefix}.address`` and ``{prefix}.port`` from ``host:port`` (into a dict or span)."""
    try:
        host, port = parse_address(address)
    except ValueError:
        return
    if isinstance(target, dict):
        target[f"{prefix}.address"], target[f"{prefix}.port"] = host, port
    else:
        target.set_attribute(f"{prefix}.address", host)
        target.set_attribute(f"{prefix}.port", port)


def otlp_tracer_provider(endpoint: str, service_name: str) -> Any:
    """
    An SDK ``TracerProvider`` exporting in batches over OTLP/HTTP to ``endpoint`` (the
    collector's base URL, e.g. ``http://127.0.0.1:4318``), with ``service.name`` (the
    ``OTEL_*`` environment variables still apply).  Needs ``msrpc[otlp]``.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


__all__ = ["OpenTelemetryTracing", "otlp_tracer_provider", "RPC_SYSTEM", "SERVER_ERRORS"]
