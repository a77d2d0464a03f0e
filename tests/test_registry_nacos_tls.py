"""
NacosRegistry over https: the in-memory Nacos behind a real TLS listener on loopback, with a
throw-away CA, a server certificate for 127.0.0.1 and a client certificate (mutual TLS).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor, ssl
from twisted.trial import unittest
from twisted.web.server import Site

from msrpc.errors import RegistryUnavailable
from msrpc.registry.http import TLSFiles
from msrpc.registry.nacos import NacosRegistry
from tests.nacos_fake import FakeNacos
from tests.tls_ca import TestCA


class NacosOverTLSTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="msrpc-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = TestCA("msrpc test CA")
        self.fake = FakeNacos()
        server_cert, server_key = self.ca.issue("nacos", ip="127.0.0.1")
        client_cert, client_key = self.ca.issue("msrpc-client")
        self.ca_file = self.write("ca.pem", self.ca.pem)
        self.client_cert = self.write("client.pem", client_cert)
        self.client_key = self.write("client.key", client_key)
        server = ssl.PrivateCertificate.loadPEM(server_cert + server_key)
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original, certificate=server.original,
            verify=True, requireCertificate=True,
            caCerts=[ssl.Certificate.loadPEM(self.ca.pem).original])
        self.port = reactor.listenSSL(0, Site(self.fake), options, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

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
            self.assertEqual([r.path for r in self.fake.requests], ["/v1/ns/instance/list"])

        return d.addCallback(check)

    def test_server_certificate_from_another_ca_is_refused(self) -> None:
        other = self.write("other-ca.pem", TestCA("someone else").pem)
        tls = TLSFiles(ca=other, cert=self.client_cert, key=self.client_key)
        d = self.registry(tls).lookup("arith")
        d = self.assertFailure(d, RegistryUnavailable)
        return d.addCallback(lambda _: self.assertEqual(self.fake.requests, []))

    def test_client_without_a_certificate_is_refused_by_a_mutual_tls_server(self) -> None:
        d = self.registry(TLSFiles(ca=self.ca_file)).lookup("arith")
        d = self.assertFailure(d, RegistryUnavailable)
        return d.addCallback(lambda _: self.assertEqual(self.fake.requests, []))
