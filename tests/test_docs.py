"""
The documentation's claims that code can check: the wire format's worked examples
(docs/wire.rst) are what the real client and server send, byte for byte; the tutorial's
programs (docs/tutorial/) work; the reference notes (docs/ref/) are reachable from the site.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import io
import re
import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from msrpc.client import Client
from msrpc.codec import JsonCodec, MsgpackCodec, TypeRegistry, make_codecs
from msrpc.demo import Arith
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.registry.static import StaticRegistry
from msrpc.server import Dispatcher
from msrpc.testing import MemoryNetwork
from msrpc.wire import REQUEST, Serializer, encode_frame

DOCS = Path(__file__).resolve().parent.parent / "docs"


def example_blocks(page: str) -> dict[str, list[str]]:
    """The ``.. code-block::`` bodies of a page that carry a ``:name:``, by name."""
    blocks: dict[str, list[str]] = {}
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if not line.startswith(".. code-block::"):
            continue
        options = index + 1
        name = None
        while options < len(lines) and lines[options].startswith("   :"):
            found = re.match(r"   :name: (\S+)", lines[options])
            name = found.group(1) if found else name
            options += 1
        body = []
        for text in lines[options + 1:]:
            if text and not text.startswith("   "):
                break
            body.append(text[3:])
        while body and not body[-1]:
            body.pop()
        if name:
            blocks[name] = body
    return blocks


def hex_column(lines: list[str]) -> bytes:
    """The bytes of an annotated dump: what each line holds before two spaces."""
    return bytes.fromhex("".join(line.strip().split("  ")[0] for line in lines if line.strip()))


WIRE = example_blocks("wire.rst")


@dataclass
class Stock:
    sku: str
    count: int
    served_by: str


class Colour(enum.Enum):
    RED = "red"


TYPES = TypeRegistry()
TYPES.register(Stock, name="tutorial.Stock")
TYPES.register(Colour, name="shop.Colour")


class Inventory:
    def stock(self, sku: str) -> Stock:
        if sku != "apple":
            raise KeyError(sku)
        return Stock(sku, 12, served_by="pid 7")


class _Connector:
    """Connects the client's protocols to StringTransports, to read what it sends."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def __call__(self, host: str, port: int, protocol: RpcProtocol) -> "defer.Deferred[Any]":
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return defer.succeed(protocol)


def served(services: dict[str, Any], frame: bytes) -> bytes:
    """What a real server-side protocol writes back for ``frame``."""
    dispatcher = Dispatcher(Clock())
    for name, obj in services.items():
        dispatcher.add_service(name, obj)
    transport = StringTransport()
    protocol = RpcProtocol(ProtocolSettings(codecs=make_codecs(TYPES)), dispatcher)
    protocol.makeConnection(transport)
    protocol.dataReceived(frame)
    return transport.value()


def request(service: str, method: str, args: list[Any], rid: int) -> bytes:
    body = MsgpackCodec().encode({"service": service, "method": method, "args": args})
    return encode_frame(REQUEST, 1, int(Serializer.MSGPACK), rid, body)


class WireExampleTests(TestCase):
    """docs/wire.rst's hex dumps are the real encoders' output."""

    def client_request_frame(self) -> bytes:
        connector = _Connector()
        client = Client(Clock(), StaticRegistry({"arith": ["10.0.0.1:9112"]}),
                        timeout=5.0, connector=connector)
        client.call("arith", "add", 1, 2)
        [transport] = connector.transports
        return transport.value()

    def test_request_is_what_the_client_sends(self) -> None:
        self.assertEqual(hex_column(WIRE["wire-example-request"]), self.client_request_frame())

    def test_response_is_what_the_server_answers(self) -> None:
        answer = served({"arith": Arith()}, self.client_request_frame())
        self.assertEqual(hex_column(WIRE["wire-example-response"]), answer)

    def test_registered_class_in_a_response(self) -> None:
        answer = served({"inventory": Inventory()}, request("inventory", "stock", ["apple"], 7))
        self.assertEqual(hex_column(WIRE["wire-example-registered"]), answer)

    def test_error_body_is_what_the_server_answers(self) -> None:
        answer = served({"inventory": Inventory()}, request("inventory", "stock", ["kiwi"], 3))
        self.flushLoggedErrors(KeyError)
        self.assertEqual(hex_column(WIRE["wire-example-error"]), answer[17:])

    def test_control_frames(self) -> None:
        transport = StringTransport()
        protocol = RpcProtocol(ProtocolSettings())
        protocol.makeConnection(transport)
        protocol.send_ping()
        ping = transport.value()
        transport.clear()
        protocol.dataReceived(ping)  # a peer answers a ping with a pong
        pong = transport.value()
        transport.clear()
        call = _PendingCall()
        rid = protocol.send_call(call)
        transport.clear()
        protocol.forget(rid)
        cancel = transport.value()
        self.assertEqual(rid, 1)
        self.assertEqual([bytes.fromhex(line.split("  ")[0]) for line in
                          WIRE["wire-example-control"]], [ping, pong, cancel])

    def test_typed_values(self) -> None:
        utc = dt.timezone.utc
        values = {
            "(1, 2)": (1, 2),
            "{1}": {1},
            "frozenset({1})": frozenset({1}),
            "UUID('12345678-1234-5678-1234-567812345678')":
                uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "Decimal('3.14')": Decimal("3.14"),
            "datetime(2024, 4, 16, 8, 43, 9)": dt.datetime(2024, 4, 16, 8, 43, 9),
            "datetime(2024, 4, 16, 8, 43, 9, tzinfo=utc)":
                dt.datetime(2024, 4, 16, 8, 43, 9, tzinfo=utc),
            "datetime(2024, 4, 16, 8, 43, 9, 500000, utc)":
                dt.datetime(2024, 4, 16, 8, 43, 9, 500000, tzinfo=utc),
            "date(2024, 4, 16)": dt.date(2024, 4, 16),
            "time(8, 43, 9)": dt.time(8, 43, 9),
            "timedelta(days=1, seconds=2, microseconds=3)":
                dt.timedelta(days=1, seconds=2, microseconds=3),
            "Colour.RED": Colour.RED,
            "b'hi'": b"hi",
        }
        codec = MsgpackCodec(TYPES)
        documented = {}
        for line in WIRE["wire-example-values"]:
            label, encoded = re.split(r"\s{2,}", line.strip())
            documented[label] = bytes.fromhex(encoded)
        self.assertEqual(set(documented), set(values))
        for label, value in values.items():
            self.assertEqual(documented[label], codec.encode(value), label)
            self.assertEqual(codec.decode(documented[label]), value, label)

    def test_json_forms_quoted_in_the_text(self) -> None:
        text = (DOCS / "wire.rst").read_text(encoding="utf-8")
        body = JsonCodec().encode({"service": "arith", "method": "add", "args": [1, 2],
                                   "meta": {"deadline": 5000}})
        self.assertIn(f"the {len(body)} bytes\n``{body.decode()}``", text)
        stock = JsonCodec(TYPES).encode(Stock("apple", 12, "pid 7")).decode()
        self.assertIn(f"``{stock}``", text)


class _PendingCall:
    service, method, args, kwargs, meta = "arith", "add", [1, 2], {}, {}

    def succeeded(self, data: Any) -> None:
        pass

    def failed(self, error: Exception) -> None:
        pass


class TutorialProgramTests(TestCase):
    """docs/tutorial/inventory.py and shopper.py, on an in-memory network."""

    def setUp(self) -> None:
        self.patch(sys, "path", [str(DOCS / "tutorial")] + sys.path)
        for name in ("inventory", "shopper"):
            self.addCleanup(sys.modules.pop, name, None)
        self.inventory = importlib.import_module("inventory")
        self.shopper = importlib.import_module("shopper")
        self.addCleanup(self.forget_stock)

    def forget_stock(self) -> None:
        from msrpc.codec import default_registry

        default_registry.unregister(self.inventory.Stock)

    def test_stock_answers_a_registered_stock(self) -> None:
        net = MemoryNetwork()
        net.server({"inventory": self.inventory.Inventory()}, address="10.0.0.1:9112")
        d = net.client().call("inventory", "stock", "apple")
        net.flush()
        stock = self.successResultOf(d)
        self.assertIsInstance(stock, self.inventory.Stock)
        self.assertEqual((stock.sku, stock.count), ("apple", 12))

    def test_shopper_rides_through_a_dead_instance(self) -> None:
        net = MemoryNetwork()
        net.server({"inventory": self.inventory.Inventory()}, address="10.0.0.1:9112")
        net.registry.register(_instance("inventory", "10.0.0.2", 9113))  # listed, dead
        client = net.client(timeout=2.0)
        self.patch(sys, "stdout", io.StringIO())
        d = defer.Deferred.fromCoroutine(self.shopper.shop(net.clock, client, 10, 0.5))
        for _ in range(20):
            net.advance(0.5)
        answered = self.successResultOf(d)
        self.assertEqual(sum(answered.values()), 10)
        self.assertNotIn("failed", answered)
        self.assertGreater(client.stats["retries"], 0)


def _instance(service: str, host: str, port: int) -> Any:
    from msrpc.registry.instance import ServiceInstance

    return ServiceInstance(service, host, port)


class ReferenceNotesTests(TestCase):
    def test_every_reference_note_is_offered_for_download(self) -> None:
        development = (DOCS / "development.rst").read_text(encoding="utf-8")
        notes = sorted(p.name for p in (DOCS / "ref").iterdir() if p.is_file())
        self.assertTrue(notes)
        for name in notes:
            self.assertIn(f"<ref/{name}>`", development, f"docs/ref/{name} is not linked")
