"""
OpenTelemetry spans (msrpc.tracing), collected by the SDK's in-memory exporter over
in-memory servers and clients on a Clock.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from msrpc.client import Client, RetryPolicy
from msrpc.observe import ICallObserver
from msrpc.testing import MemoryNetwork
from msrpc.tracing import OpenTelemetryTracing


class Backend:
    def __init__(self, net: MemoryNetwork, tracer: Any) -> None:
        self.net = net
        self.tracer = tracer

    def work(self) -> "defer.Deferred[str]":
        with self.tracer.start_as_current_span("inner work"):  # the handler's own span
            pass
        return deferLater(self.net.clock, 0.25, lambda: "done")

    def boom(self) -> None:
        raise ValueError("backend failed")

    def add(self, a: int, b: int) -> int:
        return a + b


class Frontend:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def relay(self) -> Any:
        return await self.client.call("backend", "work")


class SpanTests(TestCase):
    def setUp(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = OpenTelemetryTracing(tracer_provider=provider)
        self.net = MemoryNetwork()
        self.net.clock.advance(1_000_000.0)
        self.net.server({"backend": Backend(self.net, provider.get_tracer("app"))},
                        observers=[self.tracing], address="10.0.0.2:7002")
        inner = self.net.client(observers=[self.tracing], retry=RetryPolicy(max_attempts=1))
        self.net.server({"frontend": Frontend(inner)}, observers=[self.tracing],
                        address="10.0.0.1:7001")
        self.client = self.net.client(observers=[self.tracing],
                                      retry=RetryPolicy(max_attempts=1))

    def spans(self) -> dict[str, Any]:
        """Finished spans by ``kind name`` (``CLIENT frontend/relay``...)."""
        return {f"{s.kind.name} {s.name}": s for s in self.exporter.get_finished_spans()}

    def test_the_observer_keeps_the_contract(self) -> None:
        verifyObject(ICallObserver, self.tracing)

    def test_two_hops_make_one_trace_of_linked_client_and_server_spans(self) -> None:
        d = self.client.call("frontend", "relay")
        self.net.advance(0.25)
        self.assertEqual(self.successResultOf(d), "done")
        spans = self.spans()
        chain = [spans["CLIENT frontend/relay"], spans["SERVER frontend/relay"],
                 spans["CLIENT backend/work"], spans["SERVER backend/work"],
                 spans["INTERNAL inner work"]]
        self.assertEqual(len({s.context.trace_id for s in chain}), 1)
        self.assertIsNone(chain[0].parent)
        for parent, child in zip(chain, chain[1:]):
            self.assertEqual(child.parent.span_id, parent.context.span_id)

    def test_spans_follow_the_rpc_semantic_conventions(self) -> None:
        d = self.client.call("backend", "add", 1, 2)
        self.net.flush()
        self.successResultOf(d)
        spans = self.spans()
        client, server = spans["CLIENT backend/add"], spans["SERVER backend/add"]
        self.assertEqual((client.kind, server.kind), (SpanKind.CLIENT, SpanKind.SERVER))
        for span in (client, server):
            self.assertEqual(span.attributes["rpc.system"], "msrpc")
            self.assertEqual(span.attributes["rpc.service"], "backend")
            self.assertEqual(span.attributes["rpc.method"], "add")
            self.assertEqual(span.attributes["rpc.msrpc.status_code"], 200)
            self.assertEqual(span.status.status_code, StatusCode.UNSET)
        self.assertEqual((client.attributes["server.address"],
                          client.attributes["server.port"]), ("10.0.0.2", 7002))
        self.assertEqual(server.attributes["network.peer.address"], "127.0.0.1")

    def test_times_come_from_the_reactor_clock(self) -> None:
        d = self.client.call("backend", "work")
        self.net.advance(0.25)
        self.successResultOf(d)
        server = self.spans()["SERVER backend/work"]
        self.assertEqual(server.start_time, 1_000_000 * 10**9)
        self.assertEqual(server.end_time - server.start_time, 250_000_000)

    def test_a_handler_failure_is_an_error_on_both_sides(self) -> None:
        d = self.client.call("backend", "boom")
        self.net.flush()
        self.failureResultOf(d)
        self.flushLoggedErrors(ValueError)
        spans = self.spans()
        for key in ("CLIENT backend/boom", "SERVER backend/boom"):
            self.assertEqual(spans[key].status.status_code, StatusCode.ERROR)
            self.assertEqual(spans[key].attributes["error.type"], "500")

    def test_a_callers_mistake_is_an_error_for_the_caller_only(self) -> None:
        d = self.client.call("backend", "add", "one", 2)
        self.net.flush()
        self.failureResultOf(d)
        spans = self.spans()
        self.assertEqual(spans["CLIENT backend/add"].status.status_code, StatusCode.ERROR)
        self.assertEqual(spans["SERVER backend/add"].status.status_code, StatusCode.UNSET)
        self.assertEqual(spans["SERVER backend/add"].attributes["rpc.msrpc.status_code"], 400)

    def test_unknown_methods_get_no_server_span(self) -> None:
        d = self.client.call("backend", "nope")
        self.net.flush()
        self.failureResultOf(d)
        self.assertEqual(sorted(self.spans()), ["CLIENT backend/nope"])

    def test_client_side_failures_name_their_error_type(self) -> None:
        d = self.client.call("nowhere", "x")
        self.net.flush()
        self.failureResultOf(d)
        span = self.spans()["CLIENT nowhere/x"]
        self.assertEqual(span.attributes["error.type"], "NoInstances")

    def test_the_callers_current_span_is_the_parent(self) -> None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        with provider.get_tracer("test").start_as_current_span("request") as outer:
            d = self.client.call("backend", "add", 1, 2)
        self.net.flush()
        self.successResultOf(d)
        client = self.spans()["CLIENT backend/add"]
        self.assertEqual(client.parent.span_id, outer.get_span_context().span_id)
