"""
NacosRegistry over https: the in-memory Nacos behind a real TLS listener on loopback, with a
throw-away CA, a server certificate for 127.0.0.1 and a client certificate (mutual TLS).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.server import Site

from msrpc.errors import RegistryUnavailable
from msrpc.tls import TLSFiles, server_options
from msrpc.registry.nacos import NacosRegistry
from tests.nacos_fake import FakeNacos
from tests.servers.tls import make_pki


class NacosOverTLSTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="msrpc-tls-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pki = make_pki(self.dir)
        self.fake = FakeNacos()
        self.ca_file = str(self.pki.ca)
        self.client_cert = str(self.pki.client_cert)
        self.client_key = str(self.pki.client_key)
        options = server_options(TLSFiles(ca=self.ca_file, cert=str(self.pki.server_cert),
                                          key=str(self.pki.server_key)))
        self.port = reactor.listenSSL(0, Site(self.fake), options, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def registry(self, tls: TLSFiles) -> NacosRegistry:
        registry = NacosRegistry(reactor, f"127.0.0.1:{self.port.getHost().port}", tls=tls,
                                 timeout=5.0)
        self.addCleanup(registry.close)
        return registry

    def test_server_verified_by_our_ca_answers_a_client_with_a_certificate(self) -> None:
        tls = TLSFiles(ca=self.ca_file, cert=self.client_cert, key=self.client_key)
        d = self.registry(tls).lookup("arith")

        def check(found: Any) -> None:
            self.assertEqual(found, [])
            # the API probe (this Nacos has no v3: 404), then the lookup, both over TLS
            self.assertEqual([r.path for r in self.fake.requests],
                             ["/v3/client/ns/instance/list", "/v1/ns/instance/list"])

        return d.addCallback(check)

    def test_server_certificate_from_another_ca_is_refused(self) -> None:
        other = make_pki(self.dir / "other").ca
        tls = TLSFiles(ca=str(other), cert=self.client_cert, key=self.client_key)
        d = self.registry(tls).lookup("arith")
        d = self.assertFailure(d, RegistryUnavailable)
        return d.addCallback(lambda _: self.assertEqual(self.fake.requests, []))

    def test_client_without_a_certificate_is_refused_by_a_mutual_tls_server(self) -> None:
        d = self.registry(TLSFiles(ca=self.ca_file)).lookup("arith")
        d = self.assertFailure(d, RegistryUnavailable)
        return d.addCallback(lambda _: self.assertEqual(self.fake.requests, []))
