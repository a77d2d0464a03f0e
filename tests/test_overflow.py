"""Connections over ``max_connections``: 503 or closed within a second, accept paused."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from msrpc.codec import make_codecs
from msrpc.demo import Echo
from msrpc.overflow import DEFAULT_SLOTS, DEFAULT_WITHIN, REPORT_EVERY, Overflow
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.server import Dispatcher, RpcServerFactory, ServerLimits
from msrpc.sweep import SERVER_KEEPALIVE, Sweeper
from msrpc.wire import REQUEST, RESPONSE, FrameParser, Serializer, encode_frame

MSGPACK = int(Serializer.MSGPACK)
ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(IPushProducer)
class Listener:
    """Stands for the listening port: records whether accepting is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class OverflowTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        dispatcher = Dispatcher(self.clock, ServerLimits(max_connections=2))
        dispatcher.add_service("echo", Echo())
        self.factory = RpcServerFactory(dispatcher, ProtocolSettings(),
                                        Sweeper(self.clock, SERVER_KEEPALIVE))
        self.listener = Listener()
        self.factory.overflow.listener = self.listener
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self) -> tuple[RpcProtocol, StringTransportWithDisconnection]:
        protocol = self.factory.buildProtocol(ADDR)
        assert protocol is not None
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def fill(self, extra: int) -> list[StringTransportWithDisconnection]:
        """Connections up to the limit, then ``extra`` over it; their transports."""
        return [self.connect()[1] for _ in range(2 + extra)]

    def replies(self, transport: StringTransportWithDisconnection) -> list[dict]:
        frames: list[tuple] = []
        FrameParser(lambda *f: frames.append(f)).feed(transport.value())
        codec = make_codecs()[MSGPACK]
        return [codec.decode(body) for mtype, _, _, _, body in frames if mtype == RESPONSE]

    def logged(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in e.get("log_format", "")]

    def test_requests_over_the_limit_get_503_then_the_connection_closes(self) -> None:
        *served, over = self.fill(1)
        body = make_codecs()[MSGPACK].encode({"service": "echo", "method": "echo",
                                              "args": ["hi"]})
        over.protocol.dataReceived(encode_frame(REQUEST, 1, MSGPACK, 7, body) +
                                   encode_frame(REQUEST, 1, MSGPACK, 8, body))
        self.assertEqual([(r["code"], r["msg"]) for r in self.replies(over)],
                         [(503, "server has too many connections")] * 2)
        self.assertTrue(over.connected)  # the replies are written first
        self.clock.advance(0)
        self.assertFalse(over.connected)
        self.assertFalse(over.disconnected)  # closed, not aborted: the 503s go out
        self.assertTrue(all(t.connected for t in served))
        self.assertEqual(len(self.factory.overflow), 0)

    def test_answered_peer_that_does_not_let_go_is_aborted_a_second_later(self) -> None:
        *served, over = self.fill(1)
        over.loseConnection = lambda: None  # type: ignore[method-assign]  # a stuck close
        body = make_codecs()[MSGPACK].encode({"service": "echo", "method": "echo",
                                              "args": []})
        over.protocol.dataReceived(encode_frame(REQUEST, 1, MSGPACK, 7, body))
        self.clock.advance(0)
        self.clock.advance(DEFAULT_WITHIN - 0.01)
        self.assertFalse(over.disconnected)
        self.clock.advance(0.01)
        self.assertTrue(over.disconnected)

    def test_silent_connection_over_the_limit_is_closed_within_a_second(self) -> None:
        *served, over = self.fill(1)
        self.clock.advance(DEFAULT_WITHIN - 0.01)
        self.assertTrue(over.connected)
        self.clock.advance(0.01)
        self.assertFalse(over.connected)
        self.assertTrue(over.disconnected)  # aborted, not waiting for the peer
        self.assertTrue(all(t.connected for t in served))

    def test_all_over_limit_connections_share_one_timer(self) -> None:
        self.fill(DEFAULT_SLOTS)
        self.clock.advance(0.5)
        self.fill_more = [self.connect() for _ in range(3)]
        timers = [c for c in self.clock.getDelayedCalls() if "Deadlines" in repr(c)]
        self.assertEqual(len(timers), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.factory.overflow), 3)
        self.clock.advance(0.5)
        self.assertEqual(len(self.factory.overflow), 0)

    def test_accepting_pauses_while_the_overflow_is_full_and_resumes_as_it_drains(
            self) -> None:
        self.fill(DEFAULT_SLOTS - 1)
        self.assertFalse(self.listener.paused)
        self.connect()
        self.assertTrue(self.listener.paused)
        self.clock.advance(DEFAULT_WITHIN)
        self.assertFalse(self.listener.paused)
        self.assertEqual(self.listener.pauses, 1)

    def test_accepting_resumes_when_a_connection_under_the_limit_closes(self) -> None:
        first, *_ = self.fill(DEFAULT_SLOTS)
        self.assertTrue(self.listener.paused)
        first.loseConnection()
        self.assertFalse(self.listener.paused)
        protocol, transport = self.connect()  # the next one is served
        self.assertIs(protocol.dispatcher, self.factory.dispatcher)
        self.assertTrue(self.listener.paused is False)

    def test_a_port_that_cannot_pause_still_closes_each_within_a_second(self) -> None:
        self.factory.overflow.listener = object()
        over = self.fill(DEFAULT_SLOTS * 2)[2:]
        self.clock.advance(DEFAULT_WITHIN)
        self.assertFalse(any(t.connected for t in over))

    def test_a_flood_is_logged_once_then_counted_every_ten_seconds(self) -> None:
        self.fill(0)
        for _ in range(25):  # a connection over the limit every second, for 25 s
            self.connect()
            self.clock.advance(1)
        self.assertEqual(len(self.logged("connection limit ({limit}) reached")), 1)
        self.assertEqual(self.logged("connections refused in the last"),
                         ["connection limit (2): 10 connections refused in the last 10s, "
                          "accepting paused 0 times"] * 2)
        self.clock.pump([1] * int(REPORT_EVERY * 2))  # quiet: the next one warns again
        self.connect()
        self.assertEqual(len(self.logged("connection limit ({limit}) reached")), 2)

    def test_stopping_the_server_drops_the_over_limit_connections(self) -> None:
        over = self.fill(3)[2:]
        self.factory.close_all()
        self.assertFalse(any(t.connected for t in over))
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if "Overflow" in repr(c) or "Deadlines" in repr(c)], [])

    def test_bad_settings_are_refused(self) -> None:
        for slots, within in ((0, 1.0), (4, 0.0)):
            with self.assertRaises(ValueError):
                Overflow(self.clock, ProtocolSettings(), 10, slots=slots, within=within)

    def test_no_limit_means_no_overflow(self) -> None:
        dispatcher = Dispatcher(self.clock, ServerLimits(max_connections=0))
        factory = RpcServerFactory(dispatcher, ProtocolSettings(),
                                   Sweeper(self.clock, SERVER_KEEPALIVE))
        protocols: list[Any] = [factory.buildProtocol(ADDR) for _ in range(50)]
        self.assertTrue(all(p.dispatcher is dispatcher for p in protocols))
        self.assertEqual(len(factory.overflow), 0)
