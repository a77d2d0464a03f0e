"""
Prometheus metrics for servers, clients and registries: the ``msrpc[metrics]`` extra, on
``prometheus_client``.  Importing this module imports prometheus_client; nothing else in
msrpc imports this module unless metrics are asked for.

Cheap on the call path: metrics are an ``ICallTallies`` observer, so a successful call
costs its client one append of its duration to its method's list, and its server a few
additions to the running totals of the read it came in (timed once per read:
``msrpc.observe.ObservedProtocol``), which go into the histogram at the read's end; no
object and no call into this module per call.  Every ``FOLD_EVERY`` durations (and at
each scrape) the list is folded into the count and the histogram buckets with a sort
and a few bisections, in C.  Other outcomes (errors,
refusals, cancels) are counted one by one.  Nothing is sampled: counts, sums and
buckets are exact.  Gauges (calls in flight, connections, instances) are read from the
live objects when scraped, so they cost nothing between scrapes.  prometheus_client
renders everything (``Metrics.registry``): a custom collector, not hand-written
exposition.

Labels are few by construction: service and method names are those served (anything
else is ``other``) or those the process's own code calls; codes are wire codes or
client-side error class names.  Never a peer address or an argument.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional

from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from zope.interface import implementer

from msrpc.observe import (
    CLIENT, SERVER, ICallTallies, IClientObserver, IRegistryObserver, Tally, registry_events,
)

if TYPE_CHECKING:
    import msrpc.client
    from msrpc.server import Server

#: Histogram bucket upper bounds in seconds: from 25 µs (a sync handler on loopback)
#: to 10 s (a slow dependency), roughly 1-2.5-5 per decade.
BUCKETS = (0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
           0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Outcomes kept per series before they are folded into the totals.
FOLD_EVERY = 1024

SERVER_FAMILIES = {
    "msrpc_server_calls_total": "Requests answered, by service, method and code.",
    "msrpc_server_call_duration_seconds": "Time from a request's arrival to its response.",
    "msrpc_server_received_bytes_total": "Request frame bytes received (header included).",
    "msrpc_server_sent_bytes_total": "Response frame bytes sent (header included).",
    "msrpc_server_rejected_total": "Requests answered without running the handler, by "
                                   "reason.",
    "msrpc_server_calls_in_flight": "Requests whose handler has not answered yet.",
    "msrpc_server_connections": "Open client connections.",
}
CLIENT_FAMILIES = {
    "msrpc_client_calls_total": "Calls finished, by service, method and code as the caller "
                                "saw them (wire code or client-side error class).",
    "msrpc_client_call_duration_seconds": "Time from a call's start to its outcome, retries "
                                          "included.",
    "msrpc_client_retries_total": "Attempts retried on another instance.",
    "msrpc_client_ejections_total": "Instances taken out of rotation after failures.",
    "msrpc_client_instances": "Instances the client knows, per service.",
    "msrpc_client_ejected_instances": "Instances currently ejected, per service.",
}
REGISTRY_FAMILIES = {
    "msrpc_registry_errors_total": "Failed registry operations, by backend and operation.",
    "msrpc_registry_watch_reconnects_total": "Watches that work again after an interruption.",
}


class _Series(Tally):
    """The calls of one method on one side: what the server or client recorded, and the
    totals it is folded into."""

    __slots__ = ("codes", "buckets", "total", "_rejected", "_lock")

    limit = FOLD_EVERY

    def __init__(self, rejected: Counter[str]) -> None:
        super().__init__()
        self.codes: Counter[Any] = Counter()
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one: above every bound
        self.total = 0.0
        #: The refusals of every series, by reason (``msrpc_server_rejected_total``).
        self._rejected = rejected
        self._lock = threading.Lock()  # a scrape from another thread may fold too

    def record(self, code: int | str, duration: float, received: int = 0, sent: int = 0,
               refused: str = "") -> None:
        with self._lock:
            self.codes[code] += 1
            self.buckets[bisect_left(BUCKETS, duration)] += 1
            self.total += duration
        self.received += received
        self.sent += sent
        if refused:
            self._rejected[refused] += 1

    def add_many(self, duration: float, n: int, received: int, sent: int) -> None:
        # A server read's successes, counted at once (no durations kept for them); one
        # (calls one at a time) is kept like a client's, to be folded with the others.
        if n == 1:
            self.add(duration, received, sent)
            return
        with self._lock:
            self.codes[200] += n
            self.buckets[bisect_left(BUCKETS, duration)] += n
            self.total += duration * n
            self.received += received
            self.sent += sent

    def fold(self) -> None:
        with self._lock:
            durations = self.durations
            n = len(durations)  # appends after this (reactor thread) wait for next time
            if not n:
                return
            ordered = durations[:n]
            del durations[:n]
            ordered.sort()
            self.codes[200] += n
            # Only the bounds between the shortest and the longest need counting up to:
            # below the first, none; from the last on, all that are left.
            buckets = self.buckets
            last = bisect_left(BUCKETS, ordered[-1])
            below = 0
            for i in range(bisect_left(BUCKETS, ordered[0]), last):
                upto = bisect_right(ordered, BUCKETS[i])
                buckets[i] += upto - below
                below = upto
            buckets[last] += n - below
            self.total += sum(ordered)

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(BUCKETS, self.buckets):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.buckets[-1]))
        return out


@implementer(ICallTallies, IClientObserver, IRegistryObserver)
class Metrics(Collector):
    """
    Observes servers, clients and registries, and is a prometheus_client collector of
    everything it saw.  ``registry`` (a fresh ``CollectorRegistry`` by default; ``twistd
    msrpc`` uses the process-wide ``REGISTRY``, with process and GC metrics) is where it
    is registered and what ``/metrics`` renders.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._rejected: Counter[str] = Counter()
        self._retries: Counter[tuple[str, str]] = Counter()
        self._ejections: Counter[str] = Counter()
        self._registry_errors: Counter[tuple[str, str]] = Counter()
        self._reconnects: Counter[str] = Counter()
        self._servers: list["Server"] = []
        self._clients: list["msrpc.client.Client"] = []
        self.registry.register(self)

    @classmethod
    def process_wide(cls) -> "Metrics":
        """Metrics in prometheus_client's default registry (with process metrics)."""
        return cls(REGISTRY)

    # ------------------------------------------------------------------ what to read

    def watch_server(self, server: "Server") -> None:
        """Report the server's calls in flight and connections."""
        self._servers.append(server)
        events = registry_events(server.registry)
        if events is not None:
            events.subscribe(self)

    def watch_client(self, client: "msrpc.client.Client") -> None:
        """Report the instances the client knows (and its registry's errors)."""
        self._clients.append(client)
        events = registry_events(client.registry)
        if events is not None:
            events.subscribe(self)

    # ------------------------------------------------------------------ observing

    def tally(self, side: str, service: str, method: str) -> Tally:
        key = (side, service, method)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self._rejected)
        return series

    def call_retried(self, service: str, method: str, error: BaseException) -> None:
        self._retries[(service, method)] += 1

    def instance_ejected(self, service: str, address: str, seconds: float) -> None:
        self._ejections[service] += 1

    def registry_error(self, backend: str, operation: str, error: BaseException) -> None:
        self._registry_errors[(backend, operation)] += 1

    def watch_reconnected(self, backend: str, service: str) -> None:
        self._reconnects[backend] += 1

    # ------------------------------------------------------------------ collecting

    def describe(self) -> Iterable[Metric]:
        return list(self._families(empty=True))

    def collect(self) -> Iterable[Metric]:
        for series in list(self._series.values()):
            series.fold()
        return list(self._families())

    def _families(self, empty: bool = False) -> Iterator[Metric]:
        series = [] if empty else sorted(self._series.items())
        for side in (SERVER, CLIENT):
            mine = [(service, method, s) for (call_side, service, method), s in series
                    if call_side == side]
            calls = CounterMetricFamily(f"msrpc_{side}_calls", _help(f"msrpc_{side}_calls_total"),
                                        labels=["service", "method", "code"])
            durations = HistogramMetricFamily(
                f"msrpc_{side}_call_duration_seconds",
                _help(f"msrpc_{side}_call_duration_seconds"), labels=["service", "method"])
            for service, method, s in mine:
                for code, count in sorted(s.codes.items(), key=lambda kv: str(kv[0])):
                    calls.add_metric([service, method, str(code)], count)
                durations.add_metric([service, method], s.cumulative_buckets(), s.total)
            yield calls
            yield durations
            if side == SERVER:
                yield from self._bytes_families(mine)
                yield from self._server_families(empty)
            else:
                yield from self._client_families(empty)
        yield from self._registry_families(empty)

    def _bytes_families(self, mine: list[tuple[str, str, _Series]]) -> Iterator[Metric]:
        received = CounterMetricFamily("msrpc_server_received_bytes",
                                       _help("msrpc_server_received_bytes_total"),
                                       labels=["service", "method"], unit="bytes")
        sent = CounterMetricFamily("msrpc_server_sent_bytes",
                                   _help("msrpc_server_sent_bytes_total"),
                                   labels=["service", "method"], unit="bytes")
        for service, method, s in mine:
            received.add_metric([service, method], s.received)
            sent.add_metric([service, method], s.sent)
        yield received
        yield sent

    def _server_families(self, empty: bool) -> Iterator[Metric]:
        yield _counter("msrpc_server_rejected_total", ["reason"], self._rejected)
        servers = [] if empty else self._servers
        yield GaugeMetricFamily("msrpc_server_calls_in_flight",
                                _help("msrpc_server_calls_in_flight"),
                                value=sum(s.dispatcher.in_flight for s in servers))
        yield GaugeMetricFamily("msrpc_server_connections", _help("msrpc_server_connections"),
                                value=sum(len(s.factory.connections) for s in servers))

    def _client_families(self, empty: bool) -> Iterator[Metric]:
        yield _counter("msrpc_client_retries_total", ["service", "method"], self._retries)
        yield _counter("msrpc_client_ejections_total", ["service"], self._ejections)
        known = GaugeMetricFamily("msrpc_client_instances", _help("msrpc_client_instances"),
                                  labels=["service"])
        ejected = GaugeMetricFamily("msrpc_client_ejected_instances",
                                    _help("msrpc_client_ejected_instances"),
                                    labels=["service"])
        for client in [] if empty else self._clients:
            now = client.reactor.seconds()
            for view in client.views():
                known.add_metric([view.service], len(view.instances))
                ejected.add_metric([view.service], sum(
                    1 for m in view.members if m.endpoint.ejected_until > now))
        yield known
        yield ejected

    def _registry_families(self, empty: bool) -> Iterator[Metric]:
        yield _counter("msrpc_registry_errors_total", ["backend", "operation"],
                       self._registry_errors)
        yield _counter("msrpc_registry_watch_reconnects_total", ["backend"],
                       self._reconnects)


def _counter(name: str, labels: list[str], counts: Mapping[Any, int]) -> Metric:
    """A counter family with one sample per key of ``counts`` (a label value or a tuple)."""
    family = CounterMetricFamily(name[:-len("_total")], _help(name), labels=labels)
    for key, count in sorted(counts.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


def _help(name: str) -> str:
    return {**SERVER_FAMILIES, **CLIENT_FAMILIES, **REGISTRY_FAMILIES}[name]


#: Every metric name this module exports (the README lists them).
METRIC_NAMES = tuple(SERVER_FAMILIES) + tuple(CLIENT_FAMILIES) + tuple(REGISTRY_FAMILIES)
