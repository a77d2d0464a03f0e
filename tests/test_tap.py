"""``twistd msrpc`` options and the service tree it builds."""

from __future__ import annotations

import io
import os
import sys

from twisted.application.service import IService, IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import TestCase

from msrpc import __version__, tap
from msrpc.demo import Arith, Echo
from msrpc.registry.static import StaticRegistry
from msrpc.stopping import SequentialMultiService
from msrpc.threads import ThreadSettings


class NeedsClient:
    """A service that calls other services: it is handed the shared client."""

    def __init__(self, client, reactor) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.reactor = reactor

    def relay(self, value: int) -> int:
        return value


def parse(*argv: str) -> tap.ServerOptions:
    options = tap.ServerOptions()
    options.parseOptions(list(argv))
    return options


class OptionTests(TestCase):
    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["listen"], "tcp:9112")
        self.assertEqual(options["registry"], "local")
        self.assertEqual(options["services"], [])

    def test_services_and_metadata_repeat(self) -> None:
        options = parse("--service", "a=msrpc.demo:Echo", "-s", "b=msrpc.demo:Arith",
                        "--metadata", "zone=a", "--metadata", "tier=gold")
        self.assertEqual(options["services"], [("a", "msrpc.demo:Echo"),
                                               ("b", "msrpc.demo:Arith")])
        self.assertEqual(options["metadata"], {"zone": "a", "tier": "gold"})

    def test_malformed_values_are_usage_errors(self) -> None:
        for argv in (["--service", "noequals"], ["--metadata", "x"], ["--rate", "fast"],
                     ["--method-rate", "noservice=5"], ["--compression", "lz4"],
                     ["--balancer", "fastest"], ["--idempotent", "nodot"],
                     ["--retries", "-1"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_contradictory_options_are_refused(self) -> None:
        for argv, message in (
                (["--listen", "ssl:9443:privateKey=k.pem:certKey=c.pem", "--tls-cert", "c.pem"],
                 "would wrap TLS in TLS"),
                (["--listen", "SSL:9443", "--tls-client-ca", "ca.pem"], "TLS in TLS"),
                (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
                (["--call-tls-key", "k.pem"], "--call-tls-key needs --call-tls-cert"),
                (["--metadata", "tls=0"], "set by msrpc itself"),
                (["--listen", "unix:/tmp/x.sock", "--advertise", "10.0.0.1:9112"],
                 "has none clients could reach"),
                (["--advertise", "10.0.0.1:99999"], "port from 1 to 65535"),
                (["--registry", "local", "--etcd", "http://10.0.0.1:2379"],
                 "--etcd is an option of the etcd registry"),
                (["--nacos-group", "G"], "--nacos-group is an option of the nacos registry"),
                (["--timeout", "0"], "--timeout must be > 0"),
                (["--workers", "-1"], "--workers must be >= 0"),
                (["--workers", "2", "--listen", "ssl:9443:privateKey=k.pem"],
                 "use tcp: with --tls-cert"),
                (["--grace", "-1"], "--grace must be >= 0"),
                (["--threads", "0"], "--threads must be >= 1"),
                (["--thread-queue", "-1"], "--thread-queue must be >= 0")):
            error = self.assertRaises(usage.UsageError, parse, *argv)
            self.assertIn(message, str(error), argv)

    def test_consistent_options_are_accepted(self) -> None:
        parse("--listen", "ssl:9443:privateKey=k.pem", "--advertise", "10.0.0.1:9443")
        parse("--registry", "etcd", "--etcd", "http://10.0.0.1:2379", "--advertise", "h")
        parse("--listen", "tcp:0", "--tls-cert", "c.pem", "--tls-client-ca", "ca.pem")

    def test_version_is_msrpcs(self) -> None:
        out = self.patch_stdout()
        error = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(error.code, 0)
        self.assertTrue(out.getvalue().startswith(f"msrpc {__version__} "))

    def patch_stdout(self) -> io.StringIO:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        return out

    def test_workers_zero_means_one_per_cpu(self) -> None:
        import os
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count()
        self.assertEqual(parse("--workers", "0")["workers"], cpus)
        self.assertEqual(parse()["workers"], 1)

    def test_the_arguments_given_are_kept_for_the_workers(self) -> None:
        self.assertEqual(parse("--workers", "2", "-s", "a=msrpc.demo:Echo").argv,
                         ["--workers", "2", "-s", "a=msrpc.demo:Echo"])

    def test_rate_parses_rate_and_burst(self) -> None:
        self.assertEqual(parse("--rate", "500/50")["rate"], (500.0, 50.0))


class ServiceTreeTests(TestCase):
    def make(self, *argv: str) -> IServiceCollection:
        options = parse("--registry", "static", "--listen", "tcp:0", *argv)
        return tap.makeService(options, MemoryReactorClock())

    def test_demo_services_are_served_by_default(self) -> None:
        top = self.make()
        self.assertEqual(sorted(top.server.dispatcher.services),
                         ["arith", "echo", "msrpc.health"])
        self.assertIsInstance(top.server.dispatcher.services["echo"], Echo)
        self.assertIsInstance(top.server.dispatcher.services["arith"], Arith)

    def test_named_services_get_the_shared_client(self) -> None:
        top = self.make("--service", f"relay={__name__}:NeedsClient")
        service = top.server.dispatcher.services["relay"]
        self.assertIs(service.client, top.client)

    def test_unknown_import_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, self.make, "--service", "x=no.such.module:X")
        self.assertRaises(usage.UsageError, self.make, "--service", "x=msrpc.demo:Nope")

    def test_service_module_in_the_current_directory_is_found(self) -> None:
        """twistd does not put the current directory on sys.path as ``python -m`` does;
        ``--service name=module:Class`` looks there too, after everything installed."""
        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        with open(os.path.join(here, "tap_cwd_probe.py"), "w") as f:
            f.write("class Probe:\n    def hello(self) -> str:\n        return 'hi'\n")
        self.addCleanup(os.chdir, os.getcwd())
        self.patch(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
        self.addCleanup(sys.modules.pop, "tap_cwd_probe", None)
        os.chdir(here)
        top = self.make("--service", "probe=tap_cwd_probe:Probe")
        self.assertEqual(type(top.server.dispatcher.services["probe"]).__name__, "Probe")
        self.assertEqual(sys.path[-1], here)

    def test_method_rate_for_unknown_method_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, self.make, "--method-rate", "echo.nope=5")

    def test_stop_order_is_server_then_client_then_registry(self) -> None:
        top = self.make()
        names = [s.name for s in top]
        # stopped in reverse, one after the other
        self.assertEqual(names, ["spans", "registry", "client", "server", "signals"])
        self.assertIsInstance(top, SequentialMultiService)
        self.assertTrue(IService.providedBy(top.server))
        self.assertIsInstance(top.registry, StaticRegistry)

    def test_limits_and_settings_reach_the_server(self) -> None:
        top = self.make("--max-in-flight", "7", "--max-frame", "4096", "--rate", "10",
                        "--compression", "gzip", "--weight", "3")
        server = top.server
        self.assertEqual(server.dispatcher.limits.max_in_flight, 7)
        self.assertEqual(server.settings.max_frame, 4096)
        self.assertIsNotNone(server.dispatcher.limiter)
        self.assertEqual(server.weight, 3.0)

    def test_thread_options_reach_the_server(self) -> None:
        server = self.make("--threads", "32", "--thread-queue", "5", "--blocking").server
        self.assertEqual(server.thread_settings, ThreadSettings(32, 5, blocking=True))
        self.assertTrue(server.dispatcher.methods[("arith", "add")].blocking)
        self.assertFalse(server.dispatcher.methods[("arith", "slow_add")].blocking)  # async

    def test_client_options_reach_the_shared_client(self) -> None:
        top = self.make("--balancer", "round_robin", "--balancer", "arith=least_outstanding",
                        "--idempotent", "echo.echo", "--retries", "4", "--timeout", "2.5")
        client = top.client
        self.assertEqual(client._balancer_for("echo").name, "round_robin")
        self.assertEqual(client._balancer_for("arith").name, "least_outstanding")
        self.assertEqual(client.idempotent, {"echo.echo"})
        self.assertEqual((client.retry.max_attempts, client.timeout), (5, 2.5))

    def test_msgo_is_served_unless_turned_off(self) -> None:
        self.assertTrue(self.make().server.dispatcher.msgo)
        self.assertFalse(self.make("--no-msgo").server.dispatcher.msgo)

    def test_the_shared_client_is_told_which_services_speak_msgo(self) -> None:
        client = self.make("--dialect", "goods=msgo").client
        self.assertEqual((client._dialect_for("goods"), client._dialect_for("echo")),
                         ("msgo", None))
        self.assertRaises(usage.UsageError, self.make, "--dialect", "goods=corba")

    def test_with_workers_the_process_supervises_and_publishes_but_serves_nothing(
            self) -> None:
        from msrpc.workers import Supervisor
        top = self.make("--workers", "3")
        self.assertEqual([s.name for s in top], ["registry", "server", "signals"])
        self.assertIsInstance(top.server, Supervisor)
        self.assertEqual(top.server.pool.count, 3)
        self.assertIn("--workers=1", top.server.pool.command)
        self.assertEqual(top.server.dispatcher.services, {})  # the workers import them

    def test_a_worker_serves_on_its_supervisors_socket_and_registers_nothing(self) -> None:
        from msrpc.workers import WORKER_ENV, WorkerEndpoint
        spec = '{"socket": "inherited", "family": 2}'
        self.patch(os, "environ", {**os.environ, WORKER_ENV: spec})
        self.patch(tap, "stop_when_orphaned", lambda reactor: None)
        top = self.make()
        self.assertIsInstance(top.server.listen, WorkerEndpoint)
        self.assertIsNone(top.server.registry)
        self.assertIsNotNone(top.client.registry)  # its services still find others
        self.assertNotIn(WORKER_ENV, os.environ)  # not passed on to what it starts

    def test_a_server_that_fails_to_start_stops_the_process(self) -> None:
        reactor = MemoryReactorClock()
        reactor.running = True
        top = tap.makeService(parse("--registry", "static", "--listen", "tcp:0"), reactor)
        top.server.ready.errback(OSError("address in use"))
        self.assertTrue(reactor.hasStopped)


class OperationsOptionTests(TestCase):
    """--admin, --trace, --otlp-endpoint, --access-log: what each installs."""

    def make(self, *argv: str) -> IServiceCollection:
        options = parse("--registry", "static", "--listen", "tcp:0", *argv)
        return tap.makeService(options, MemoryReactorClock())

    def test_nothing_observes_by_default(self) -> None:
        top = self.make()
        self.assertIsNone(top.server.observer)
        self.assertIsNone(top.client._observer)
        self.assertFalse(hasattr(top, "admin"))

    def test_admin_serves_metrics_of_server_and_client(self) -> None:
        from msrpc.admin import AdminService
        from msrpc.metrics import Metrics

        top = self.make("--admin", "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(top.admin, AdminService)
        self.assertEqual([s.name for s in top][0], "admin")  # stopped last
        [metrics] = top.server.observer.all
        self.assertIsInstance(metrics, Metrics)
        self.assertEqual(top.client._observer.all, [metrics])

    def test_no_metrics_keeps_the_admin_endpoint_without_them(self) -> None:
        top = self.make("--admin", "tcp:0", "--no-metrics")
        self.assertIsNone(top.server.observer)

    def test_trace_modes(self) -> None:
        from msrpc.tracecontext import TraceContextPropagation
        from msrpc.tracing import OpenTelemetryTracing

        [w3c] = self.make("--trace", "w3c").server.observer.all
        self.assertIsInstance(w3c, TraceContextPropagation)
        [otel] = self.make("--trace", "otel").client._observer.all
        self.assertIsInstance(otel, OpenTelemetryTracing)
        self.assertRaises(usage.UsageError, parse, "--trace", "zipkin")

    def test_an_otlp_endpoint_implies_otel(self) -> None:
        self.assertEqual(parse("--otlp-endpoint", "http://127.0.0.1:4318")["trace"], "otel")

    def test_access_log_observes_the_server_only(self) -> None:
        from msrpc.accesslog import AccessLog

        top = self.make("--access-log")
        [access_log] = top.server.observer.all
        self.assertIsInstance(access_log, AccessLog)
        self.assertIsNone(top.client._observer)


class AdminWithWorkersTests(TestCase):
    def test_admin_is_refused_with_several_workers(self) -> None:
        error = self.assertRaises(usage.UsageError, parse, "--admin", "tcp:0", "--workers",
                                  "2")
        self.assertIn("--admin serves one process", str(error))
