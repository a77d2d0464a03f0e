"""
Prometheus metrics (msrpc.metrics): every family, read back the way Prometheus reads it
(prometheus_client's own text parser), over in-memory servers and clients on a Clock.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from msrpc import wire
from msrpc.codec import MsgpackCodec
from msrpc.errors import RegistryUnavailable
from msrpc.health import EjectionPolicy
from msrpc.metrics import BUCKETS, METRIC_NAMES, Metrics
from msrpc.observe import ICallTallies, IClientObserver, IRegistryObserver
from msrpc.registry.polling import PollingWatch
from msrpc.registry.static import StaticRegistry
from msrpc.server import ServerLimits
from msrpc.testing import MemoryNetwork
from tests.servers import REPO_ROOT


class Shop:
    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net

    def echo(self, value: Any) -> Any:
        return value

    def add(self, a: int, b: int) -> int:
        return a + b

    def slow(self, seconds: float) -> "defer.Deferred[str]":
        return deferLater(self.net.clock, seconds, lambda: "done")

    def boom(self) -> None:
        raise ValueError("no")


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, as Prometheus would parse it."""
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class ServerMetricsTests(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.metrics = Metrics()
        self.server = self.net.server({"shop": Shop(self.net)}, observers=[self.metrics],
                                      tokens=None)
        self.metrics.watch_server(self.server)
        self.client = self.net.client(timeout=5.0, retry=_NO_RETRY)

    def call(self, method: str, *args: Any, service: str = "shop") -> Any:
        d = self.client.call(service, method, *args)
        d.addErrback(lambda f: f.value)
        self.net.flush()
        return self.successResultOf(d)

    def test_the_metrics_object_provides_every_observer_interface(self) -> None:
        verifyObject(ICallTallies, self.metrics)
        verifyObject(IClientObserver, self.metrics)
        verifyObject(IRegistryObserver, self.metrics)

    def test_calls_are_counted_by_service_method_and_code(self) -> None:
        self.call("add", 1, 2)
        self.call("add", 3, 4)
        self.call("boom")
        self.call("add", "x", 1)  # wrong type: 400, refused before the handler ran
        self.flushLoggedErrors(ValueError)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_server_calls_total", service="shop",
                               method="add", code="200"), 2)
        self.assertEqual(value(samples, "msrpc_server_calls_total", service="shop",
                               method="boom", code="500"), 1)
        self.assertEqual(value(samples, "msrpc_server_calls_total", service="shop",
                               method="add", code="400"), 1)
        self.assertEqual(value(samples, "msrpc_server_rejected_total", reason="bad_request"),
                         1)

    def test_unknown_names_are_labelled_other_so_callers_cannot_add_series(self) -> None:
        self.call("nope")
        self.call("x", service="no-such-service")
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_server_calls_total", service="other",
                               method="other", code="404"), 1)
        self.assertEqual(value(samples, "msrpc_server_rejected_total", reason="not_found"), 1)
        names = {dict(labels).get("method") for (_, labels) in samples}
        self.assertNotIn("nope", names)

    def test_duration_histogram_has_sub_millisecond_buckets(self) -> None:
        self.assertEqual(BUCKETS[0], 0.000025)
        d = self.client.call("shop", "slow", 0.003)
        self.net.advance(0.003)
        self.assertEqual(self.successResultOf(d), "done")
        samples = scrape(self.metrics)
        bucket = "msrpc_server_call_duration_seconds_bucket"
        self.assertEqual(value(samples, bucket, service="shop", method="slow", le="0.0025"), 0)
        self.assertEqual(value(samples, bucket, service="shop", method="slow", le="0.005"), 1)
        self.assertEqual(value(samples, bucket, service="shop", method="slow", le="+Inf"), 1)
        self.assertEqual(value(samples, "msrpc_server_call_duration_seconds_count",
                               service="shop", method="slow"), 1)
        self.assertAlmostEqual(value(samples, "msrpc_server_call_duration_seconds_sum",
                                     service="shop", method="slow"), 0.003, places=6)

    def test_bytes_in_and_out_are_the_frames_on_the_wire(self) -> None:
        self.call("echo", "hello")
        codec = MsgpackCodec()
        request = codec.encode({"service": "shop", "method": "echo", "args": ["hello"],
                                "meta": {"deadline": 5000}})
        response = codec.encode({"code": 200, "data": "hello"})
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_server_received_bytes_total", service="shop",
                               method="echo"), wire.HEADER_SIZE + len(request))
        self.assertEqual(value(samples, "msrpc_server_sent_bytes_total", service="shop",
                               method="echo"), wire.HEADER_SIZE + len(response))

    def test_in_flight_and_connections_are_read_when_scraped(self) -> None:
        d = self.client.call("shop", "slow", 1.0)
        self.net.flush()
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_server_calls_in_flight"), 1)
        self.assertEqual(value(samples, "msrpc_server_connections"), 1)
        self.net.advance(1.0)
        self.successResultOf(d)
        self.assertEqual(value(scrape(self.metrics), "msrpc_server_calls_in_flight"), 0)

    def test_a_cancelled_call_is_counted_as_cancelled(self) -> None:
        d = self.client.call("shop", "slow", 1.0)
        self.net.flush()
        d.cancel()
        self.failureResultOf(d)
        self.net.flush()
        self.assertEqual(value(scrape(self.metrics), "msrpc_server_calls_total",
                               service="shop", method="slow", code="cancelled"), 1)

    def test_many_calls_fold_into_the_same_totals(self) -> None:
        for i in range(2500):  # more than two folds' worth
            self.client.call("shop", "add", i, 1)
        self.net.flush()
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_server_calls_total", service="shop",
                               method="add", code="200"), 2500)
        self.assertEqual(value(samples, "msrpc_server_call_duration_seconds_count",
                               service="shop", method="add"), 2500)


    def test_a_fold_puts_each_duration_where_a_single_record_would(self) -> None:
        # Edges included: a bound itself is "le" it; past the last bound is +Inf.
        durations = [0.00001, 0.000025, 0.0003, 0.0005, 0.0005001, 0.003, 10.0, 20.0]
        folded, recorded = (Metrics().tally("server", "shop", name) for name in "ab")
        folded.durations.extend(durations)
        folded.fold()
        for duration in durations:
            recorded.record(200, duration)
        self.assertEqual(folded.buckets, recorded.buckets)
        self.assertEqual(sum(folded.buckets), len(durations))
        self.assertAlmostEqual(folded.total, recorded.total)
        self.assertEqual(folded.codes, recorded.codes)
        read = Metrics().tally("server", "shop", "d")  # a server read's successes
        read.add_many(0.0003, 3, 60, 90)
        read.add_many(0.003, 1, 20, 30)  # one: kept until a fold, like a client's
        read.fold()
        for duration in (0.0003, 0.0003, 0.0003, 0.003):
            recorded.record(200, duration)
        self.assertEqual([a - b for a, b in zip(recorded.buckets, folded.buckets)],
                         read.buckets)
        self.assertEqual((read.codes[200], read.received, read.sent), (4, 80, 120))
        self.assertAlmostEqual(read.total, 0.0039)
        one = Metrics().tally("server", "shop", "c")  # all in one bucket: no bound between
        one.durations.extend([0.0007, 0.0008])
        one.fold()
        self.assertEqual(one.buckets[BUCKETS.index(0.001)], 2)

    def test_the_same_counts_beside_a_per_call_observer_or_other_metrics(self) -> None:
        from msrpc.accesslog import AccessLog
        net, metrics, other = MemoryNetwork(), Metrics(), Metrics()
        net.server({"shop": Shop(net)}, observers=[metrics, AccessLog(), other])
        client = net.client(observers=[other, metrics], retry=_NO_RETRY)
        for args in ((1, 2), (3, 4), ("x", 1)):
            client.call("shop", "add", *args).addErrback(lambda f: None)
        d = client.call("shop", "slow", 0.003)
        net.advance(0.003)
        self.successResultOf(d)
        for each in (metrics, other):
            samples = scrape(each)
            for side in ("server", "client"):
                self.assertEqual(value(samples, f"msrpc_{side}_calls_total", service="shop",
                                       method="add", code="200"), 2)
                self.assertEqual(value(samples, f"msrpc_{side}_calls_total", service="shop",
                                       method="add", code="400"), 1)
                self.assertEqual(value(samples, f"msrpc_{side}_call_duration_seconds_bucket",
                                       service="shop", method="slow", le="0.005"), 1)
            self.assertEqual(value(samples, "msrpc_server_rejected_total",
                                   reason="bad_request"), 1)


_NO_RETRY = __import__("msrpc.client", fromlist=["RetryPolicy"]).RetryPolicy(max_attempts=1)


class RejectionTests(TestCase):
    def rejected(self, **server: Any) -> dict[Any, float]:
        net = MemoryNetwork()
        metrics = Metrics()
        net.server({"shop": Shop(net)}, observers=[metrics], **server)
        client = net.client(timeout=5.0, retry=_NO_RETRY)
        calls = [client.call("shop", "slow", 1.0) for _ in range(3)]
        for d in calls:
            d.addErrback(lambda f: None)
        net.advance(1.0)
        return scrape(metrics)

    def test_rate_limited_calls_are_rejections_with_code_700(self) -> None:
        samples = self.rejected(limits=ServerLimits(rate=1, burst=1))
        self.assertEqual(value(samples, "msrpc_server_rejected_total", reason="rate_limited"),
                         2)
        self.assertEqual(value(samples, "msrpc_server_calls_total", service="other",
                               method="other", code="700"), 2)

    def test_overloaded_calls_are_rejections_with_code_503(self) -> None:
        samples = self.rejected(limits=ServerLimits(max_in_flight=1))
        self.assertEqual(value(samples, "msrpc_server_rejected_total", reason="overloaded"), 2)

    def test_calls_without_a_token_are_rejections_with_code_401(self) -> None:
        samples = self.rejected(tokens=["secret"])
        self.assertEqual(value(samples, "msrpc_server_rejected_total", reason="unauthorized"),
                         3)

    def test_calls_refused_while_draining_have_their_own_reason(self) -> None:
        net = MemoryNetwork()
        metrics = Metrics()
        server = net.server({"shop": Shop(net)}, observers=[metrics])
        server.dispatcher.draining = True
        d = net.client(retry=_NO_RETRY).call("shop", "add", 1, 2)
        d.addErrback(lambda f: None)
        net.flush()
        self.assertEqual(value(scrape(metrics), "msrpc_server_rejected_total",
                               reason="draining"), 1)


class ClientMetricsTests(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.metrics = Metrics()

    def client(self, **options: Any) -> Any:
        client = self.net.client(observers=[self.metrics], **options)
        self.metrics.watch_client(client)
        return client

    def test_calls_are_counted_by_the_code_the_caller_saw(self) -> None:
        self.net.server({"shop": Shop(self.net)})
        client = self.client(retry=_NO_RETRY)
        outcomes = [client.call("shop", "add", 1, 2), client.call("shop", "boom"),
                    client.call("missing", "x")]
        for d in outcomes:
            d.addErrback(lambda f: None)
        self.net.flush()
        self.flushLoggedErrors(ValueError)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_client_calls_total", service="shop",
                               method="add", code="200"), 1)
        self.assertEqual(value(samples, "msrpc_client_calls_total", service="shop",
                               method="boom", code="500"), 1)
        self.assertEqual(value(samples, "msrpc_client_calls_total", service="missing",
                               method="x", code="NoInstances"), 1)

    def test_timeouts_and_durations_are_measured_on_the_client_clock(self) -> None:
        self.net.server({"shop": Shop(self.net)})
        client = self.client(retry=_NO_RETRY)
        fast = client.call("shop", "slow", 0.2)
        late = client.invoke("shop", "slow", [5.0], timeout=0.5)
        late.addErrback(lambda f: None)
        self.net.advance(1.0)
        self.successResultOf(fast)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_client_calls_total", service="shop",
                               method="slow", code="408"), 1)
        self.assertEqual(value(samples, "msrpc_client_call_duration_seconds_bucket",
                               service="shop", method="slow", le="0.25"), 1)
        self.assertEqual(value(samples, "msrpc_client_call_duration_seconds_bucket",
                               service="shop", method="slow", le="0.5"), 2)

    def test_retries_are_counted_per_method(self) -> None:
        down = self.net.server({"shop": Shop(self.net)})
        self.net.server({"shop": Shop(self.net)})
        down.dispatcher.draining = True  # 503: retried on the other instance
        client = self.client(balancer="round_robin", ejection=EjectionPolicy(enabled=False))
        for _ in range(4):
            client.call("shop", "add", 1, 1)
        self.net.advance(1.0)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_client_retries_total", service="shop",
                               method="add"), client.stats["retries"])
        self.assertGreater(client.stats["retries"], 0)

    def test_ejections_instances_and_ejected_instances(self) -> None:
        first = self.net.server({"shop": Shop(self.net)})
        self.net.server({"shop": Shop(self.net)})
        client = self.client(balancer="round_robin", ejection=EjectionPolicy(
            consecutive_failures=1, base_ejection=30.0))
        client.call("shop", "add", 1, 1)
        self.net.flush()
        first.crash()
        for _ in range(4):
            client.call("shop", "add", 1, 1)
            self.net.advance(0.1)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "msrpc_client_ejections_total", service="shop"), 1)
        self.assertEqual(value(samples, "msrpc_client_instances", service="shop"), 2)
        self.assertEqual(value(samples, "msrpc_client_ejected_instances", service="shop"), 1)


class RegistryMetricsTests(TestCase):
    def test_failed_lookups_are_registry_errors_of_their_backend(self) -> None:
        net = MemoryNetwork()
        metrics = Metrics()
        registry = StaticRegistry()
        registry.lookup = lambda service: defer.fail(RegistryUnavailable("down"))  # type: ignore
        client = net.client(registry=registry, observers=[metrics])
        metrics.watch_client(client)
        client.call("svc", "x").addErrback(lambda f: None)
        net.flush()
        self.assertEqual(value(scrape(metrics), "msrpc_registry_errors_total",
                               backend="static", operation="lookup"), 1)

    def test_a_polling_watch_that_recovers_counts_a_reconnect(self) -> None:
        net = MemoryNetwork()
        metrics = Metrics()
        registry = StaticRegistry()
        registry.events.subscribe(metrics)
        answers: list[Any] = [defer.fail(RegistryUnavailable("down")),
                              defer.fail(RegistryUnavailable("down")), defer.succeed([])]
        watch = PollingWatch(net.clock, lambda service: answers.pop(0), "svc", lambda i: None,
                             1.0, events=registry.events)
        net.clock.advance(1.0)
        net.clock.advance(1.0)
        watch.stop()
        samples = scrape(metrics)
        self.assertEqual(value(samples, "msrpc_registry_errors_total", backend="static",
                               operation="watch"), 2)
        self.assertEqual(value(samples, "msrpc_registry_watch_reconnects_total",
                               backend="static"), 1)


class ExpositionTests(TestCase):
    def test_every_documented_family_is_exposed_with_help_even_before_any_call(self) -> None:
        text = generate_latest(Metrics().registry).decode()
        exposed = {f.name for f in text_string_to_metric_families(text)}
        for name in METRIC_NAMES:
            base = name[:-len("_total")] if name.endswith("_total") else name
            self.assertIn(base, exposed)
            self.assertIn(f"# HELP {name} ", text)

    def test_names_follow_prometheus_conventions(self) -> None:
        for name in METRIC_NAMES:
            self.assertTrue(name.startswith("msrpc_"), name)
            self.assertRegex(name, r"^[a-z_]+$")
            self.assertNotRegex(name, r"_(ms|milliseconds|kb)(_|$)")

    def test_nothing_optional_is_imported_unless_asked_for(self) -> None:
        code = ("import sys, msrpc.server, msrpc.client, msrpc.tap, msrpc.cli, msrpc.observe\n"
                "from msrpc.tap import Options, makeService\n"
                "o = Options(); o.parseOptions(['--registry', 'static'])\n"
                "makeService(o)\n"
                "bad = [m for m in sys.modules if m.split('.')[0] in "
                "('prometheus_client', 'opentelemetry')]\n"
                "assert not bad, bad\n")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
