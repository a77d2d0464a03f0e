"""
The admin HTTP endpoint (msrpc.admin): every page through treq's in-memory StubTreq, then
readiness flipping during a real ``twistd msrpc``'s drain, seen through its real admin port.
"""

from __future__ import annotations

import json
import re
import signal
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from msrpc.admin import admin_site
from msrpc.health import EjectionPolicy
from msrpc.metrics import Metrics
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server
from msrpc.testing import MemoryNetwork
from tests.servers import run, wait_for
from tests.servers.msrpcd import MsrpcDaemon, msrpc_cli, start_daemon, workdir


class Echo:
    def echo(self, value: Any) -> Any:
        return value


def get(http: StubTreq, path: str, **kwargs: Any) -> tuple[int, str, str]:
    response = http.get("http://admin" + path, **kwargs)
    http.flush()
    response = _result(response)
    body = _result(treq.text_content(response))
    http.flush()
    return response.code, response.headers.getRawHeaders("content-type")[0], body


def _result(d: "defer.Deferred[Any]") -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class PagesTests(TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = StaticRegistry()
        self.metrics = Metrics()
        self.server = Server(self.reactor, "tcp:7100", registry=self.registry,
                             advertise="127.0.0.1", services={"echo": Echo()}, grace=0,
                             observers=[self.metrics])
        self.metrics.watch_server(self.server)
        self.net = MemoryNetwork()
        self.first = self.net.server({"echo": Echo()}, address="10.0.0.1:7001")
        self.net.server({"echo": Echo()}, address="10.0.0.2:7002")
        self.client = self.net.client(balancer="round_robin", ejection=EjectionPolicy(
            consecutive_failures=1, base_ejection=30.0))
        self.http = StubTreq(admin_site(self.server, self.client, self.metrics).resource)

    def test_liveness_answers_while_the_reactor_does(self) -> None:
        self.assertEqual(get(self.http, "/healthz")[::2], (200, "ok\n"))

    def test_readiness_follows_the_server_from_start_to_stop(self) -> None:
        self.assertEqual(get(self.http, "/readyz")[::2], (503, "not ready: not started\n"))
        self.server.startService()
        self.assertEqual(get(self.http, "/readyz")[::2], (200, "ready\n"))
        self.server.stopService()
        self.assertEqual(get(self.http, "/readyz")[::2], (503, "not ready: draining\n"))

    def test_readiness_waits_for_registration(self) -> None:
        self.registry.register = lambda i: defer.Deferred()  # type: ignore[method-assign]
        self.server.startService()
        self.assertEqual(get(self.http, "/readyz")[::2], (503, "not ready: not registered\n"))
        self.server.stopService()

    def test_metrics_are_prometheus_text_by_default(self) -> None:
        self.server.startService()
        code, content_type, body = get(self.http, "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"))
        names = {f.name for f in text_string_to_metric_families(body)}
        self.assertIn("msrpc_server_connections", names)
        self.server.stopService()

    def test_metrics_speak_openmetrics_when_asked(self) -> None:
        code, content_type, body = get(self.http, "/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith("# EOF\n"))

    def test_without_metrics_the_page_says_how_to_get_them(self) -> None:
        http = StubTreq(admin_site(self.server, self.client, None).resource)
        code, _, body = get(http, "/metrics")
        self.assertEqual(code, 404)
        self.assertIn("msrpc[metrics]", body)

    def test_instances_show_the_clients_view_with_ejection_state(self) -> None:
        for _ in range(2):
            self.client.call("echo", "echo", 1)
        self.net.flush()
        self.first.crash()  # its next call fails, and one failure ejects it
        for _ in range(4):
            self.client.call("echo", "echo", 1).addErrback(lambda f: None)
            self.net.advance(0.1)
        code, content_type, body = get(self.http, "/instances")
        self.assertEqual((code, content_type), (200, "application/json"))
        view = json.loads(body)["services"]["echo"]
        self.assertEqual(view["registry"], "static")
        by_address = {i["address"]: i for i in view["instances"]}
        self.assertEqual(set(by_address), {"10.0.0.1:7001", "10.0.0.2:7002"})
        dead, alive = by_address["10.0.0.1:7001"], by_address["10.0.0.2:7002"]
        self.assertTrue(dead["ejected"])
        self.assertGreater(dead["ejected_for_s"], 29)
        self.assertEqual(dead["ejections"], 1)
        self.assertFalse(alive["ejected"])
        self.assertTrue(alive["connected"])

    def test_unknown_pages_are_404(self) -> None:
        self.assertEqual(get(self.http, "/nope")[0], 404)

    def test_the_root_lists_the_pages(self) -> None:
        self.assertEqual(get(self.http, "/")[::2],
                         (200, "/healthz\n/instances\n/metrics\n/readyz\n"))


_ADMIN = re.compile(r"msrpc admin on .*port=(\d+)")


class DrainEndToEndTests(TestCase):
    """A real ``twistd msrpc --admin``: readiness turns 503 the moment SIGTERM arrives and
    stays answerable (with metrics) until the in-flight call has drained."""

    timeout = 90

    def http_get(self, url: str) -> "defer.Deferred[tuple[int, str]]":
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))

        async def go() -> tuple[int, str]:
            response = await client.get(url, timeout=5)
            return response.code, (await treq.text_content(response))

        return defer.Deferred.fromCoroutine(go())

    @run
    async def test_readiness_flips_to_503_when_the_drain_starts(self) -> None:
        directory = workdir(self)
        path = directory / "registry.sqlite3"
        registry = ["--registry", "local", "--local-path", str(path)]
        daemon: MsrpcDaemon = await start_daemon(
            self, reactor, directory,
            [*registry, "--service", "whoami=tests.e2e_service:Whoami", "--grace", "1",
             "--drain-timeout", "20", "--admin", "tcp:0:interface=127.0.0.1"],
            registered=1)
        admin = f"http://127.0.0.1:{_ADMIN.search(daemon.log_text()).group(1)}"  # type: ignore
        self.assertEqual(await self.http_get(admin + "/readyz"), (200, "ready\n"))
        slow = msrpc_cli(reactor, "call", *registry, "whoami.sleep", "4", cwd=directory)

        async def in_flight() -> bool:
            _, body = await self.http_get(admin + "/metrics")
            return "msrpc_server_calls_in_flight 1.0" in body

        await wait_for(reactor, in_flight, 20, "the slow call in flight")
        daemon.process.signal(signal.SIGTERM)  # type: ignore[union-attr]

        async def not_ready() -> bool:
            return (await self.http_get(admin + "/readyz"))[0] == 503

        await wait_for(reactor, not_ready, 10, "readiness 503")
        self.assertEqual(await self.http_get(admin + "/readyz"), (503, "not ready: draining\n"))
        self.assertEqual(await self.http_get(admin + "/healthz"), (200, "ok\n"))
        self.assertTrue(await in_flight())  # the drain has not ended: the call still runs
        self.assertEqual(await slow, ("4\n", "", 0))  # and it completes
        await daemon.process.ended  # type: ignore[union-attr]
        self.assertEqual(daemon.exit_status(), "SIGTERM")
