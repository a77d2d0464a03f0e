"""
``twistd msrpc``: serve services, register them, and give them a shared client.

    twistd -n msrpc --listen tcp:9112 --registry local --service arith=examples.arith:Arith

With no ``--service`` the built-in demo services (echo, arith) are served.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import IService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import usage

from msrpc import compress, version_text
from msrpc.auth import accepted_tokens, client_token
from msrpc.balance import make_balancer
from msrpc.client import Client, RetryPolicy
from msrpc.codec import Limits, make_codecs
from msrpc.limits import parse_rate
from msrpc.msgo import parse_dialect_option
from msrpc.protocol import ProtocolSettings
from msrpc.registry.options import check_registry_options, make_registry, registry_parameters
from msrpc.server import Server, ServerLimits, is_tls_endpoint
from msrpc.stopping import SecondSignal, SequentialMultiService
from msrpc.sweep import KeepaliveSettings
from msrpc.threads import ThreadSettings
from msrpc.tls import TLSFiles
from msrpc.wire import DEFAULT_MAX_FRAME
from msrpc.workers import (
    KILL_MARGIN, ListenAddress, Supervisor, WorkerEndpoint, WorkerPool, ignore_interrupts,
    reactor_name, report_ready, reuse_port_spreads, stop_when_orphaned, worker_command,
    worker_spec,
)


def load_object(spec: str) -> Any:
    """
    ``package.module:attribute`` → the attribute (a class or a factory).

    A module that is nowhere on ``sys.path`` is looked for in the current directory too,
    as ``python -m`` would (twistd, unlike ``python -m``, does not put it on the path), so
    ``--service inventory=inventory:Inventory`` finds ``./inventory.py``.  The directory
    goes at the end of the path: it never shadows an installed module.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise usage.UsageError(f"expected module:object, got {spec!r}")
    try:
        target: Any = _import_here_too(module_name)
    except ImportError as e:
        raise usage.UsageError(f"cannot import {module_name!r}: {e}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise usage.UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def _import_here_too(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        top_level = module_name.partition(".")[0]
        if e.name != top_level or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def instantiate(factory: Any, **available: Any) -> Any:
    """Call a service class/factory with whichever of ``client``, ``reactor``, ``clock``
    it accepts, so a service that calls other services receives the shared Client."""
    if not callable(factory):
        return factory
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory()
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in available.items() if accepts_any or k in parameters}
    return factory(**kwargs)


class ServerOptions(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve msrpc services on an endpoint, register them in a registry and "
                "wire a shared client for services that call others.")

    optParameters = [
        ["listen", "l", "tcp:9112", "Endpoint string to listen on (tcp:9112, "
                                    "tcp:0:interface=127.0.0.1, unix:/path, ssl:...)."],
        ["advertise", "a", None, "host[:port] to publish in the registry "
                                 "(default: the listening address)."],
        ["weight", "w", 10.0, "Instance weight for weighted balancing.", float],
        ["grace", None, 2.0, "Seconds between deregistering and closing the port on stop.",
         float],
        ["drain-timeout", None, 10.0, "Seconds in-flight calls may take to finish on stop.",
         float],
        ["max-in-flight", None, ServerLimits.max_in_flight,
         "Calls in flight per server before answering 503 (0: no limit).", int],
        ["max-in-flight-per-connection", None, ServerLimits.max_in_flight_per_connection,
         "Calls in flight per connection before answering 503 (0: no limit).", int],
        ["max-connections", None, ServerLimits.max_connections,
         "Open connections before refusing new ones (0: no limit).", int],
        ["rate", None, None, "Server-wide rate limit, calls/s[/burst] (answers 700)."],
        ["max-frame", None, DEFAULT_MAX_FRAME, "Largest accepted frame in bytes.", int],
        ["max-decompressed", None, compress.DEFAULT_MAX_DECOMPRESSED,
         "Largest accepted body after decompression, in bytes.", int],
        ["max-depth", None, Limits.max_depth, "Deepest accepted nesting of values.", int],
        ["max-container", None, Limits.max_container_len,
         "Most items accepted in one list or map.", int],
        ["idle-timeout", None, 300.0, "Close connections silent this long (0: never).",
         float],
        ["frame-timeout", None, 30.0, "Close peers whose frame stays incomplete this long.",
         float],
        ["write-timeout", None, KeepaliveSettings.write_timeout,
         "Close peers that leave our replies unread this long (0: never).", float],
        ["threads", None, ThreadSettings.size, "Threads running blocking handlers "
                                               "(@expose(blocking=True), or all plain ones "
                                               "with --blocking).", int],
        ["thread-queue", None, ThreadSettings.queue, "Calls waiting for a handler thread "
                                                     "before answering 503.", int],
        ["compression", None, "none", "Compress large replies: none, gzip, zstd."],
        ["timeout", None, 10.0, "Default call timeout of the shared client, seconds.",
         float],
        ["retries", None, RetryPolicy.max_attempts - 1,
         "Retries of the shared client on another instance when a call surely did not "
         "run (or is idempotent).", int],
        ["tls-cert", None, None, "Serve over TLS with this certificate (PEM; may hold the key)."],
        ["tls-key", None, None, "Key of --tls-cert (PEM)."],
        ["tls-client-ca", None, None, "Require client certificates signed by this CA "
                                      "(mutual TLS)."],
        ["tokens-file", None, None, "Accepted auth tokens, one per line (or set "
                                    "MSRPC_TOKENS=a,b); calls without one get 401."],
        ["call-token-file", None, None, "Token the shared client sends (or MSRPC_TOKEN)."],
        ["call-tls-ca", None, None, "The shared client calls over TLS, verifying with this CA."],
        ["call-tls-cert", None, None, "Client certificate of the shared client (PEM)."],
        ["call-tls-key", None, None, "Key of --call-tls-cert (PEM)."],
        ["workers", None, 1, "Server processes sharing the port, supervised and published "
                             "as one instance (0: one per CPU).", int],
        ["admin", None, None, "Serve /metrics, /healthz, /readyz and /instances over HTTP "
                              "on this endpoint, e.g. tcp:9465:interface=127.0.0.1 (never "
                              "expose it publicly)."],
        ["trace", None, "off", "Trace context: off, w3c (carry traceparent from each "
                               "request to the calls its handler makes) or otel "
                               "(OpenTelemetry spans; needs msrpc[otel])."],
        ["otlp-endpoint", None, None, "Export spans over OTLP/HTTP to this collector URL, "
                                      "e.g. http://127.0.0.1:4318 (implies --trace otel; "
                                      "needs msrpc[otlp])."],
        ["otel-service-name", None, "msrpc", "service.name of the exported spans."],
    ] + registry_parameters()

    optFlags = [
        ["blocking", None, "Run every plain (non-async) handler on the handler threads, "
                           "unless it says @expose(blocking=False)."],
        ["no-msgo", None, "Do not answer Go msgo clients (gob requests) on this port."],
        ["no-metrics", None, "No Prometheus metrics, even with --admin and "
                             "prometheus_client installed."],
        ["access-log", None, "Log one structured event per call (service, method, code, "
                             "duration, peer, bytes)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["services"] = []
        self["metadata"] = {}
        self["method-rates"] = {}
        self["balancers"] = {}
        self["idempotent"] = []
        self["dialects"] = {}

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        #: The arguments as given: a supervisor starts its workers with the same ones.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_balancer(self, spec: str) -> None:
        """[SERVICE=]NAME  Balancer of the shared client, for all services or one
        (repeatable): weighted_random (default), round_robin, least_outstanding,
        consistent_hash."""
        service, sep, name = spec.rpartition("=")
        try:
            make_balancer(name)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["balancers"][service if sep else "*"] = name

    def opt_dialect(self, spec: str) -> None:
        """[SERVICE=]NAME  The protocol a service the shared client calls speaks when its
        instances do not say: msgo (a Go msgo service) or msrpc (repeatable)."""
        try:
            service, name = parse_dialect_option(spec)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["dialects"][service] = name

    def opt_idempotent(self, spec: str) -> None:
        """SERVICE.METHOD  The shared client may retry this method after it possibly ran
        (repeatable; servers also publish their @expose(idempotent=True) methods)."""
        if "." not in spec.strip("."):
            raise usage.UsageError(f"--idempotent wants service.method, got {spec!r}")
        self["idempotent"].append(spec)

    def opt_service(self, spec: str) -> None:
        """NAME=module:Class  Serve a service (repeatable); default: echo and arith demos."""
        name, sep, target = spec.partition("=")
        if not sep or not name or not target:
            raise usage.UsageError(f"--service wants NAME=module:Class, got {spec!r}")
        self["services"].append((name, target))

    opt_s = opt_service

    def opt_metadata(self, spec: str) -> None:
        """KEY=VALUE  Instance metadata published in the registry (repeatable)."""
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise usage.UsageError(f"--metadata wants KEY=VALUE, got {spec!r}")
        self["metadata"][key] = value

    def opt_method_rate(self, spec: str) -> None:
        """SERVICE.METHOD=RATE[/BURST]  Rate limit one method (repeatable)."""
        name, sep, rate = spec.partition("=")
        if not sep or "." not in name:
            raise usage.UsageError(f"--method-rate wants service.method=rate, got {spec!r}")
        try:
            self["method-rates"][name] = parse_rate(rate)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def opt_version(self) -> None:
        """Print msrpc's version and exit."""
        print(version_text())
        sys.exit(0)

    def postOptions(self) -> None:
        check_registry_options(self)
        self._refuse_contradictions()
        try:
            self["tokens"] = accepted_tokens(self["tokens-file"])
            self["call-token"] = client_token(self["call-token-file"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["retries"] < 0:
            raise usage.UsageError("--retries must be >= 0")
        if self["rate"]:
            try:
                self["rate"] = parse_rate(self["rate"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        try:
            compress.parse_name(self["compression"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["admin"] and self["workers"] != 1:
            raise usage.UsageError(
                "--admin serves one process; with --workers each worker would bind it "
                "(scrape per worker, or run without --workers behind a load balancer)")
        if self["otlp-endpoint"]:
            self["trace"] = "otel"
        if self["trace"] not in TRACE_MODES:
            raise usage.UsageError(f"--trace must be one of {', '.join(TRACE_MODES)}")
        for extra, module in required_extras(self):
            if importlib.util.find_spec(module) is None:
                raise usage.UsageError(f"{extra} needs {module}: pip install 'msrpc[{extra}]'")

    def _refuse_contradictions(self) -> None:
        """Options that cannot all hold: refuse to start rather than run broken."""
        listen = self["listen"]
        if is_tls_endpoint(listen):
            for option in ("tls-cert", "tls-key", "tls-client-ca"):
                if self[option]:
                    raise usage.UsageError(
                        f"--listen {listen.split(':')[0]}:... already serves TLS (its "
                        f"certificate is in the endpoint string); --{option} would wrap "
                        "TLS in TLS and every call would fail. Use one or the other.")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-client-ca"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-client-ca (mutual TLS) needs --tls-cert")
        if self["call-tls-key"] and not self["call-tls-cert"]:
            raise usage.UsageError("--call-tls-key needs --call-tls-cert")
        if "tls" in self["metadata"]:
            raise usage.UsageError("--metadata tls=... is set by msrpc itself (1 when the "
                                   "server speaks TLS), so clients never mismatch it")
        if self["advertise"]:
            kind = listen.split(":", 1)[0].strip().lower()
            if kind not in ("tcp", "tcp6", "ssl"):
                raise usage.UsageError(f"--advertise publishes a TCP address, but --listen "
                                       f"{kind}:... has none clients could reach")
            advertise = self["advertise"]
            if ":" in advertise and not advertise.endswith("]"):  # as Server.instances reads it
                port = advertise.rpartition(":")[2]
                if not port.isdigit() or not 0 < int(port) < 65536:
                    raise usage.UsageError(f"--advertise wants host[:port] with a port "
                                           f"from 1 to 65535, got {self['advertise']!r}")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be > 0")
        if self["workers"] < 0:
            raise usage.UsageError("--workers must be >= 0 (0: one per CPU)")
        if self["workers"] == 0:
            self["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else os.cpu_count() or 1
        if self["workers"] > 1:
            try:
                ListenAddress.parse(listen)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if self["threads"] < 1:
            raise usage.UsageError("--threads must be >= 1 (blocking handlers need a thread)")
        for option in ("grace", "drain-timeout", "weight", "idle-timeout", "frame-timeout",
                       "max-in-flight", "max-in-flight-per-connection", "max-connections",
                       "thread-queue"):
            if self[option] < 0:
                raise usage.UsageError(f"--{option} must be >= 0")


Options = ServerOptions

TRACE_MODES = ("off", "w3c", "otel")


def required_extras(options: usage.Options) -> list[tuple[str, str]]:
    """(extra, module) pairs the options cannot work without."""
    needed = []
    if options["trace"] == "otel":
        needed.append(("otel", "opentelemetry.trace"))
    if options["otlp-endpoint"]:
        needed.append(("otlp", "opentelemetry.exporter.otlp.proto.http"))
    return needed


def metrics_wanted(options: usage.Options) -> bool:
    """Metrics are on with --admin (unless --no-metrics) when prometheus_client is
    installed; without it /metrics says how to get it, and nothing is imported."""
    return bool(options["admin"]) and not options["no-metrics"] and \
        importlib.util.find_spec("prometheus_client") is not None


class Closing(Service):
    """A service whose only job is to run ``close()`` when the application stops."""

    def __init__(self, name: str, close: Callable[[], Optional[Deferred[Any]]]) -> None:
        self.setName(name)
        self._close = close

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        return maybeDeferred(self._close)


class Observers:
    """What ``--admin``, ``--trace`` and ``--access-log`` install on server and client."""

    def __init__(self, reactor: Any, options: usage.Options) -> None:
        self.metrics: Any = None
        self.server: list[Any] = []
        self.client: list[Any] = []
        self.tracer_provider: Any = None
        if metrics_wanted(options):
            from msrpc.metrics import Metrics

            self.metrics = Metrics.process_wide()
            self.server.append(self.metrics)
            self.client.append(self.metrics)
        if options["trace"] == "w3c":
            from msrpc.tracecontext import TraceContextPropagation

            propagation = TraceContextPropagation()
            self.server.append(propagation)
            self.client.append(propagation)
        elif options["trace"] == "otel":
            from msrpc.tracing import OpenTelemetryTracing, otlp_tracer_provider

            if options["otlp-endpoint"]:
                from opentelemetry import trace

                self.tracer_provider = otlp_tracer_provider(options["otlp-endpoint"],
                                                            options["otel-service-name"])
                trace.set_tracer_provider(self.tracer_provider)
            tracing = OpenTelemetryTracing(self.tracer_provider)
            self.server.append(tracing)
            self.client.append(tracing)
        if options["access-log"]:
            from msrpc.accesslog import AccessLog

            self.server.append(AccessLog())

    def flush(self, reactor: Any) -> "Deferred[Any]":
        """Export the spans still buffered (in a thread: the exporter blocks)."""
        from twisted.internet import threads

        if self.tracer_provider is None:
            return defer.succeed(None)
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                         self.tracer_provider.shutdown)


def protocol_settings(options: usage.Options) -> ProtocolSettings:
    limits = Limits(max_depth=options["max-depth"],
                    max_container_len=options["max-container"],
                    max_str_len=options["max-frame"], max_bin_len=options["max-frame"])
    return ProtocolSettings(codecs=make_codecs(limits=limits),
                            compression=compress.parse_name(options["compression"]),
                            max_frame=options["max-frame"],
                            max_decompressed=options["max-decompressed"])


def _stop_reactor(failure: Any, reactor: Any) -> None:
    """A server that cannot listen or is refused by its registry must not linger half up:
    the error is logged by the server; stop the process so a supervisor sees it."""
    if reactor.running:
        reactor.stop()


def makeService(options: usage.Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    if options["workers"] > 1:
        return make_supervisor(options, reactor)
    return make_server(options, reactor, worker_spec())


def make_supervisor(options: usage.Options, reactor: Any) -> IService:
    """``--workers N``: this process starts, supervises and publishes N server processes
    (``msrpc.workers``); it serves nothing itself."""
    registry = make_registry(reactor, options)
    pool = WorkerPool(reactor, ListenAddress.parse(options["listen"]),
                      worker_command(options.argv,  # type: ignore[attr-defined]
                                     reactor_name(options, reactor)),
                      options["workers"],
                      kill_timeout=options["drain-timeout"] + KILL_MARGIN,
                      reuse_port=reuse_port_spreads())
    supervisor = Supervisor(reactor, pool, registry=registry, grace=options["grace"],
                            drain_timeout=options["drain-timeout"])
    return _process_tree(reactor, registry, supervisor)


def make_server(options: usage.Options, reactor: Any,
                worker: Optional[dict[str, Any]] = None) -> IService:
    """One server process; with ``worker`` (from its supervisor), one of several: it
    serves on the supervisor's address and reports there instead of registering."""
    registry = make_registry(reactor, options)
    observers = Observers(reactor, options)
    client = Client(reactor, registry, timeout=options["timeout"], token=options["call-token"],
                    balancer=options["balancers"] or "weighted_random",
                    idempotent=options["idempotent"],
                    retry=RetryPolicy(max_attempts=options["retries"] + 1),
                    tls=TLSFiles(options["call-tls-ca"], options["call-tls-cert"],
                                 options["call-tls-key"]),
                    dialect=options["dialects"] or None,
                    observers=observers.client)
    rate = options["rate"] or (0.0, None)
    limits = ServerLimits(max_in_flight=options["max-in-flight"],
                          max_in_flight_per_connection=options["max-in-flight-per-connection"],
                          max_connections=options["max-connections"],
                          rate=rate[0], burst=rate[1])
    listen: Any = options["listen"] if worker is None else WorkerEndpoint(reactor, worker)
    server = Server(reactor, listen, registry=registry if worker is None else None,
                    advertise=options["advertise"], weight=options["weight"],
                    metadata=options["metadata"], settings=protocol_settings(options),
                    limits=limits,
                    keepalive=KeepaliveSettings(idle_timeout=options["idle-timeout"],
                                                frame_timeout=options["frame-timeout"],
                                                write_timeout=options["write-timeout"]),
                    grace=options["grace"], drain_timeout=options["drain-timeout"],
                    tokens=options["tokens"],
                    tls=TLSFiles(options["tls-client-ca"], options["tls-cert"],
                                 options["tls-key"]),
                    threads=ThreadSettings(size=options["threads"],
                                           queue=options["thread-queue"],
                                           blocking=bool(options["blocking"])),
                    msgo=not options["no-msgo"],
                    observers=observers.server)
    services = options["services"]
    if not services:
        from msrpc.demo import default_services
        for name, obj in default_services(reactor).items():
            server.add_service(name, obj)
    for name, target in services:
        server.add_service(name, instantiate(load_object(target), client=client,
                                             reactor=reactor, clock=reactor))
    for name, (rate_value, burst) in options["method-rates"].items():
        service, _, method = name.partition(".")
        try:
            server.dispatcher.limit_method(service, method, rate_value, burst)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    if observers.metrics is not None:
        observers.metrics.watch_server(server)
        observers.metrics.watch_client(client)
    # Stopped after everything else: buffered spans are exported once the server drained,
    # and the admin endpoint answers probes and scrapes through the whole drain.
    last: list[IService] = []
    admin = None
    if options["admin"]:
        from msrpc.admin import AdminService

        admin = AdminService(reactor, options["admin"], server=server, client=client,
                             metrics=observers.metrics)
        admin.setName("admin")
        last.append(admin)
    last.append(Closing("spans", lambda: observers.flush(reactor)))
    top = _process_tree(reactor, registry, server, client, last)
    if admin is not None:
        top.admin = admin  # type: ignore[attr-defined]
    if worker is not None:
        server.ready.addCallback(lambda _: report_ready(server))
        ignore_interrupts(reactor)
        stop_when_orphaned(reactor)
    return top


def _process_tree(reactor: Any, registry: Any, server: Server,
                  client: Optional[Client] = None,
                  stopped_last: Sequence[IService] = ()) -> IService:
    """The process's services, stopped one after the other, in reverse order: the server
    deregisters and drains first, then the shared client closes, then the registry (its
    own close deregisters anything left), then ``stopped_last``.  A second SIGTERM/SIGINT
    meanwhile cuts the drain short.  A server that cannot start stops the process."""
    top = SequentialMultiService()
    for service in stopped_last:
        service.setServiceParent(top)
    Closing("registry", registry.close).setServiceParent(top)
    if client is not None:
        Closing("client", client.close).setServiceParent(top)
    server.setName("server")
    server.setServiceParent(top)
    signals = SecondSignal(reactor, server.hurry)
    signals.setName("signals")
    signals.setServiceParent(top)
    server.ready.addErrback(_stop_reactor, reactor)
    top.client = client  # type: ignore[attr-defined]
    top.registry = registry  # type: ignore[attr-defined]
    top.server = server  # type: ignore[attr-defined]
    return top

