"""
A real Jaeger (the all-in-one ``jaeger`` binary from ``scripts/install-jaeger``) for the
tracing integration test: an OTLP/HTTP receiver, in-memory storage and the query API, all
on free loopback ports, from a config written to a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import treq
from twisted.internet import defer
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.servers import SERVERS_DIR, free_ports, server_unavailable, wait_for
from tests.servers.process import LoggedProcess

VERSION = os.environ.get("MSRPC_JAEGER_VERSION", "v1.76.0")

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


def jaeger_binary() -> Path:
    path = SERVERS_DIR / f"jaeger-{VERSION}" / "bin" / "jaeger"
    if not os.access(path, os.X_OK):
        server_unavailable(f"jaeger {VERSION} is not installed at {path}; "
                           "run scripts/install-jaeger")
    return path


class Jaeger:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.binary = jaeger_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="msrpc-jaeger-"))
        self.otlp_port, self.query_port, grpc_port = free_ports(3)
        (self.workdir / "config.yaml").write_text(CONFIG.format(
            otlp=self.otlp_port, query=self.query_port, query_grpc=grpc_port))
        self.otlp_url = f"http://127.0.0.1:{self.otlp_port}"
        self.query_url = f"http://127.0.0.1:{self.query_port}"
        self.process: Optional[LoggedProcess] = None

    def start(self) -> "defer.Deferred[None]":
        self.process = LoggedProcess(
            self.reactor, [self.binary, "--config", self.workdir / "config.yaml"],
            self.workdir / "jaeger.log", cwd=str(self.workdir))

        async def answers() -> bool:
            if not self.process or not self.process.running:
                raise RuntimeError(f"jaeger exited:\n{self.log_tail()}")
            code, _ = await self.get("/api/services")
            return code == 200

        return wait_for(self.reactor, answers, 60, f"jaeger query API at {self.query_url}")

    async def get(self, path: str) -> tuple[int, Any]:
        """One query-API request: (status, decoded JSON or text)."""
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        response = await treq.client.HTTPClient(Agent(self.reactor, pool=pool)).get(
            self.query_url + path, timeout=5)
        body = await treq.content(response)
        try:
            return response.code, json.loads(body)
        except ValueError:
            return response.code, body.decode(errors="replace")

    def stop(self) -> "defer.Deferred[None]":
        if self.process is None:
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self.process.terminate(self.reactor))

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "jaeger.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


async def start_jaeger(test: TestCase, reactor: Any) -> Jaeger:
    """Jaeger for one test, stopped and removed afterwards (its log shown on failure)."""
    jaeger = Jaeger(reactor)
    test.addCleanup(shutil.rmtree, jaeger.workdir, True)
    test.addCleanup(jaeger.stop)
    await jaeger.start()
    return jaeger
