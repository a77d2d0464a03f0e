"""
Tracing end to end against a real Jaeger: this process calls ``relay`` on one real
``twistd msrpc --trace otel`` which calls ``whoami`` on another; all three export their
spans over OTLP/HTTP, and the whole trace is then found through Jaeger's query API.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from msrpc.client import Client
from msrpc.registry.local import LocalRegistry
from msrpc.tracing import OpenTelemetryTracing
from tests.servers import run, wait_for
from tests.servers.jaeger import start_jaeger
from tests.servers.msrpcd import start_daemon, workdir


class JaegerTests(TestCase):
    timeout = 120

    @run
    async def test_a_two_hop_call_is_one_trace_in_jaeger(self) -> None:
        jaeger = await start_jaeger(self, reactor)
        directory = workdir(self)
        registry_args = ["--registry", "local", "--local-path", str(directory / "r.sqlite3")]

        def traced(name: str) -> list[str]:
            return ["--trace", "otel", "--otlp-endpoint", jaeger.otlp_url,
                    "--otel-service-name", name, "--grace", "0.2"]

        await start_daemon(self, reactor, directory,
                           [*registry_args, *traced("msrpc-b"),
                            "--service", "whoami=tests.e2e_service:Whoami"],
                           registered=1, name="b")
        await start_daemon(self, reactor, directory,
                           [*registry_args, *traced("msrpc-a"),
                            "--service", "relay=tests.e2e_service:Relay"],
                           registered=1, name="a")

        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "msrpc-test"}))
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=jaeger.otlp_url + "/v1/traces")))
        registry = LocalRegistry(reactor, directory / "r.sqlite3")
        client = Client(reactor, registry, timeout=10.0,
                        observers=[OpenTelemetryTracing(tracer_provider=provider)])
        self.addCleanup(registry.close)
        self.addCleanup(client.close)
        with provider.get_tracer("test").start_as_current_span("test root") as root:
            d = client.call("relay", "relay", "whoami", "greet", "jaeger")
        self.assertEqual(await d, "hello, jaeger")
        await threads.deferToThread(provider.shutdown)  # export what is still pending
        trace_id = format(root.get_span_context().trace_id, "032x")

        found: dict[str, Any] = {}

        async def complete() -> bool:
            code, body = await jaeger.get(f"/api/traces/{trace_id}")
            if code != 200 or not body.get("data"):
                return False
            [trace] = body["data"]
            found["trace"] = trace
            return len(trace["spans"]) >= 5

        await wait_for(reactor, complete, 30, f"trace {trace_id} in jaeger", interval=0.25)
        trace = found["trace"]
        services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
        spans = {}
        for span in trace["spans"]:
            tags = {t["key"]: t["value"] for t in span["tags"]}
            key = (services[span["processID"]], tags.get("span.kind", "internal"),
                   span["operationName"])
            spans[key] = span
            self.assertEqual(span["traceID"], trace_id)
        chain = [spans[("msrpc-test", "internal", "test root")],
                 spans[("msrpc-test", "client", "relay/relay")],
                 spans[("msrpc-a", "server", "relay/relay")],
                 spans[("msrpc-a", "client", "whoami/greet")],
                 spans[("msrpc-b", "server", "whoami/greet")]]
        for parent, child in zip(chain, chain[1:]):
            refs = [r["spanID"] for r in child["references"] if r["refType"] == "CHILD_OF"]
            self.assertEqual(refs, [parent["spanID"]])
        tags = {t["key"]: t["value"] for t in chain[-1]["tags"]}
        self.assertEqual((tags["rpc.system"], tags["rpc.service"], tags["rpc.method"]),
                         ("msrpc", "whoami", "greet"))
        self.assertEqual(tags["rpc.msrpc.status_code"], 200)
