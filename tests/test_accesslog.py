"""The access log (msrpc.accesslog): one structured event per answered request."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import TestCase

from msrpc.accesslog import AccessLog
from msrpc.client import RetryPolicy
from msrpc.server import ServerLimits
from msrpc.testing import MemoryNetwork
from msrpc.tracecontext import TraceContext


class Echo:
    def echo(self, value: Any) -> Any:
        return value


class AccessLogTests(TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.access = AccessLog(Logger(namespace="msrpc.access", observer=self.events.append))
        self.net = MemoryNetwork()
        self.server = self.net.server({"echo": Echo()}, observers=[self.access],
                                      limits=ServerLimits(rate=1, burst=1))
        self.client = self.net.client(retry=RetryPolicy(max_attempts=1))

    def test_events_are_in_the_access_namespace(self) -> None:
        self.assertEqual(AccessLog().log.namespace, "msrpc.access")

    def test_one_event_per_call_with_every_field(self) -> None:
        context = TraceContext.new()
        d = self.client.invoke("echo", "echo", ["hi"], meta={"traceparent": context.traceparent})
        self.net.flush()
        self.successResultOf(d)
        [event] = self.events
        self.assertEqual(event["log_namespace"], "msrpc.access")
        self.assertEqual({k: event[k] for k in ("service", "method", "code", "peer",
                                                "refused", "trace_id")},
                         {"service": "echo", "method": "echo", "code": 200,
                          "peer": "127.0.0.1:40000", "refused": "",
                          "trace_id": context.trace_id})
        self.assertEqual(event["duration"], 0.0)  # the clock did not move
        self.assertGreater(event["bytes_in"], 17)
        self.assertGreater(event["bytes_out"], 17)
        self.assertRegex(formatEvent(event),
                         r"^echo\.echo 200 0\.000ms from 127\.0\.0\.1:40000 in=\d+ out=\d+$")

    def test_refused_calls_say_why(self) -> None:
        for _ in range(2):
            self.client.call("echo", "echo", 1).addErrback(lambda f: None)
        self.net.flush()
        self.assertEqual([(e["code"], e["refused"]) for e in self.events],
                         [(200, ""), (700, "rate_limited")])
        self.assertTrue(formatEvent(self.events[1]).endswith("refused: rate_limited"))

    def test_client_calls_are_not_logged(self) -> None:
        net = MemoryNetwork()
        net.server({"echo": Echo()})
        client = net.client(observers=[self.access])
        d = client.call("echo", "echo", 1)
        net.flush()
        self.successResultOf(d)
        self.assertEqual(self.events, [])
