"""
The admin HTTP endpoint of ``twistd msrpc --admin tcp:9465:interface=127.0.0.1``: a
``twisted.web`` resource tree in its own service, for probes, scrapers and operators.

    /metrics    Prometheus exposition of ``msrpc.metrics`` (text or OpenMetrics, as the
                scraper asks), rendered by prometheus_client on the reactor thread
    /healthz    liveness: 200 whenever the reactor answers
    /readyz     readiness: 200 when the server listens, is registered and is not
                stopping; 503 (with the reasons) otherwise, from the moment a stop begins
    /instances  JSON: the shared client's view of every service it resolved, with each
                instance's connection and ejection state

It reads the server's and client's state and owns none of it.  It reveals the topology
and accepts no credentials: bind it to loopback or a private interface, never expose it
publicly.  It stops after the server has drained, so probes and scrapes keep working
while in-flight calls finish.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    import msrpc.client
    from msrpc.metrics import Metrics
    from msrpc.server import Server


class _Page(Resource):
    """A leaf that answers GET and HEAD with ``render_page(request) -> (status, type, body)``."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        status, content_type, body = self.render_page(request)
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body

    render_HEAD = render_GET

    def render_page(self, request: Request) -> tuple[int, str, bytes]:
        raise NotImplementedError


class Liveness(_Page):
    def render_page(self, request: Request) -> tuple[int, str, bytes]:
        return 200, "text/plain; charset=utf-8", b"ok\n"


class Readiness(_Page):
    def __init__(self, server: "Server") -> None:
        super().__init__()
        self.rpc_server = server

    def render_page(self, request: Request) -> tuple[int, str, bytes]:
        problems = self.rpc_server.readiness()
        if problems:
            return 503, "text/plain; charset=utf-8", f"not ready: {', '.join(problems)}\n".encode()
        return 200, "text/plain; charset=utf-8", b"ready\n"


class MetricsPage(_Page):
    def __init__(self, metrics: Optional["Metrics"]) -> None:
        super().__init__()
        self.metrics = metrics

    def render_page(self, request: Request) -> tuple[int, str, bytes]:
        if self.metrics is None:
            return 404, "text/plain; charset=utf-8", (
                b"metrics are off: install msrpc[metrics] (prometheus_client)\n")
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        return 200, content_type, encoder(self.metrics.registry)


class Instances(_Page):
    def __init__(self, client: Optional["msrpc.client.Client"]) -> None:
        super().__init__()
        self.client = client

    def render_page(self, request: Request) -> tuple[int, str, bytes]:
        view = client_view(self.client) if self.client is not None else {"services": {}}
        return 200, "application/json", json.dumps(view, indent=2, sort_keys=True).encode()


def client_view(client: "msrpc.client.Client") -> dict[str, Any]:
    """What ``client`` knows of each service it resolved: every listed instance, whether
    it may be picked, and its connection and ejection state."""
    now = client.reactor.seconds()
    services: dict[str, Any] = {}
    for view in sorted(client.views(), key=lambda v: v.service):
        members = {(m.instance.host, m.instance.port): m for m in view.members}
        listed = []
        for instance in view.instances:
            member = members.get((instance.host, instance.port))
            entry: dict[str, Any] = {
                "address": instance.address, "instance_id": instance.instance_id,
                "weight": instance.weight, "metadata": dict(instance.metadata),
                "selectable": member is not None,
            }
            if member is not None:
                endpoint = member.endpoint
                ejected_for = max(0.0, endpoint.ejected_until - now)
                entry.update({
                    "connected": endpoint.protocol is not None,
                    "outstanding": endpoint.outstanding,
                    "ejected": ejected_for > 0,
                    "ejected_for_s": round(ejected_for, 3),
                    "ejections": endpoint.ejections,
                    "consecutive_failures": endpoint.strikes,
                    "probation": endpoint.probation,
                })
            listed.append(entry)
        services[view.service] = {"registry": view.registry_name, "instances": listed}
    return {"services": services}


class Index(Resource):
    """``/``: what is here."""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"".join(b"/" + name + b"\n" for name in sorted(self.children))

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self if path == b"" else super().getChild(path, request)


class _QuietSite(Site):
    """A site that writes no access-log line per request: probes come every few seconds."""

    def log(self, request: Any) -> None:
        pass


def admin_site(server: Optional["Server"] = None, client: Optional["msrpc.client.Client"] = None,
               metrics: Optional["Metrics"] = None) -> Site:
    """The resource tree (``/metrics``, ``/healthz``, ``/readyz``, ``/instances``)."""
    root = Index()
    root.putChild(b"healthz", Liveness())
    if server is not None:
        root.putChild(b"readyz", Readiness(server))
    root.putChild(b"metrics", MetricsPage(metrics))
    root.putChild(b"instances", Instances(client))
    site = _QuietSite(root)
    site.displayTracebacks = False
    return site


class AdminService(Service):
    """Serves ``admin_site`` on an endpoint string, from start until the server stopped."""

    log = Logger()

    def __init__(self, reactor: Any, endpoint: str, *, server: Optional["Server"] = None,
                 client: Optional["msrpc.client.Client"] = None, metrics: Optional["Metrics"] = None
                 ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.server = server
        self.site = admin_site(server, client, metrics)
        self.port: Optional[IListeningPort] = None
        #: Fires with the listening port once the endpoint listens.
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        Service.startService(self)
        d = serverFromString(self.reactor, self.endpoint).listen(self.site)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info("msrpc admin on {address} (/metrics /healthz /readyz /instances)",
                      address=port.getHost())
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        self.log.failure("admin endpoint {endpoint} failed to listen", failure,
                         endpoint=self.endpoint)
        self.listening.errback(failure)

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.when_stopped()  # keep answering probes through the drain
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
