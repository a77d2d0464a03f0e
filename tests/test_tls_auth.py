"""TLS (server verification, mutual TLS) and per-call tokens over real loopback sockets."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from msrpc.auth import accepted_tokens, client_token
from msrpc.client import Client, RetryPolicy
from msrpc.demo import default_services
from msrpc.errors import ConnectError, ConnectionLost, Unauthorized
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server
from msrpc.tls import TLSFiles
from tests.servers.tls import make_pki


class Loopback(TestCase):
    """A real server on 127.0.0.1:<free port>, registered in a static registry."""

    def pki(self) -> Any:
        directory = Path(tempfile.mkdtemp(prefix="msrpc-tls-"))
        self.addCleanup(shutil.rmtree, directory, True)
        return make_pki(directory)

    @defer.inlineCallbacks
    def serve(self, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.registry = StaticRegistry()
        server = Server(reactor, "tcp:0:interface=127.0.0.1", registry=self.registry,
                        services=default_services(reactor), grace=0, **kwargs)
        server.startService()
        self.addCleanup(server.stopService)
        yield server.ready
        return server

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("timeout", 5.0)
        client = Client(reactor, self.registry, retry=RetryPolicy(max_attempts=1), **kwargs)
        self.addCleanup(client.close)
        return client


class TLSTests(Loopback):
    @defer.inlineCallbacks
    def test_call_over_tls_verified_against_our_ca(self):  # type: ignore[no-untyped-def]
        pki = self.pki()
        server = yield self.serve(tls=TLSFiles(cert=str(pki.server_cert),
                                               key=str(pki.server_key)))
        self.assertEqual(server.instances()[0].metadata["tls"], "1")
        result = yield self.client(tls=TLSFiles(ca=str(pki.ca))).call("arith", "add", 2, 3)
        self.assertEqual(result, 5)

    @defer.inlineCallbacks
    def test_client_without_tls_fails_fast_with_a_clear_error(self):  # type: ignore[no-untyped-def]
        pki = self.pki()
        yield self.serve(tls=TLSFiles(cert=str(pki.server_cert), key=str(pki.server_key)))
        error = yield self.assertFailure(self.client().call("arith", "add", 1, 1), ConnectError)
        self.assertIn("requires TLS", str(error))

    @defer.inlineCallbacks
    def test_server_certificate_from_another_ca_is_refused(self):  # type: ignore[no-untyped-def]
        pki, stranger = self.pki(), self.pki()
        yield self.serve(tls=TLSFiles(cert=str(pki.server_cert), key=str(pki.server_key)))
        d = self.client(tls=TLSFiles(ca=str(stranger.ca))).call("arith", "add", 1, 1)
        yield self.assertFailure(d, ConnectionLost, ConnectError)

    @defer.inlineCallbacks
    def test_mutual_tls_accepts_a_client_certificate_from_the_ca(self):  # type: ignore[no-untyped-def]
        pki = self.pki()
        yield self.serve(tls=TLSFiles(ca=str(pki.ca), cert=str(pki.server_cert),
                                      key=str(pki.server_key)))
        client = self.client(tls=TLSFiles(ca=str(pki.ca), cert=str(pki.client_cert),
                                          key=str(pki.client_key)))
        self.assertEqual((yield client.call("echo", "echo", "hi")), "hi")

    @defer.inlineCallbacks
    def test_mutual_tls_refuses_a_client_without_certificate(self):  # type: ignore[no-untyped-def]
        pki = self.pki()
        yield self.serve(tls=TLSFiles(ca=str(pki.ca), cert=str(pki.server_cert),
                                      key=str(pki.server_key)))
        d = self.client(tls=TLSFiles(ca=str(pki.ca))).call("echo", "echo", "hi")
        yield self.assertFailure(d, ConnectionLost, ConnectError)

    def test_unreadable_certificate_is_a_clear_error(self) -> None:
        from msrpc.tls import server_options
        error = self.assertRaises(ValueError, server_options,
                                  TLSFiles(cert="/nonexistent/cert.pem"))
        self.assertIn("/nonexistent/cert.pem", str(error))


class TokenTests(Loopback):
    @defer.inlineCallbacks
    def test_right_token_passes_and_wrong_or_missing_gets_401(self):  # type: ignore[no-untyped-def]
        yield self.serve(tokens=["alpha", "beta"])
        self.assertEqual((yield self.client(token="beta").call("arith", "add", 1, 2)), 3)
        for token in (None, "gamma"):
            error = yield self.assertFailure(
                self.client(token=token).call("arith", "add", 1, 2), Unauthorized)
            self.assertEqual(error.code, 401)

    @defer.inlineCallbacks
    def test_tokens_never_reach_logs_or_errors(self):  # type: ignore[no-untyped-def]
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.serve(tokens=["s3cret-server"])
        error = yield self.assertFailure(
            self.client(token="s3cret-client").call("arith", "add", 1, 2), Unauthorized)
        text = repr(events) + str(error) + repr(error.details)
        self.assertNotIn("s3cret", text)


class TokenSourceTests(TestCase):
    def test_tokens_file_lines_and_env_are_accepted(self) -> None:
        path = Path(self.mktemp())
        path.write_text("# ops tokens\nalpha\n\n  beta  # rotated 2026-11\n")
        self.assertEqual(accepted_tokens(str(path), {"MSRPC_TOKENS": "gamma, delta"}),
                         ["alpha", "beta", "gamma", "delta"])

    def test_client_token_from_file_or_env(self) -> None:
        path = Path(self.mktemp())
        path.write_text("tok\n")
        self.assertEqual(client_token(str(path), {}), "tok")
        self.assertEqual(client_token(None, {"MSRPC_TOKEN": "env"}), "env")
        self.assertIsNone(client_token(None, {}))

    def test_missing_token_file_is_a_clear_error(self) -> None:
        self.assertRaises(ValueError, accepted_tokens, "/nonexistent/tokens", {})
