"""Keepalive pings, idle timeouts and the incomplete-frame timeout, by one shared sweep."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.sweep import KeepaliveSettings, Sweeper
from msrpc.wire import PING, PONG, FrameParser, encode_frame


def connected(sweeper: Sweeper) -> tuple[RpcProtocol, StringTransport]:
    transport = StringTransport()
    protocol = RpcProtocol(ProtocolSettings(), sweeper=sweeper)
    protocol.makeConnection(transport)
    return protocol, transport


def sent_types(transport: StringTransport) -> list[int]:
    frames: list[tuple] = []
    FrameParser(lambda *f: frames.append(f)).feed(transport.value())
    transport.clear()
    return [f[0] for f in frames]


class SweepTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_silent_peer_is_pinged_after_the_ping_interval(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(ping_interval=10, idle_timeout=30))
        protocol, transport = connected(sweeper)
        self.clock.advance(7.5)
        self.assertEqual(sent_types(transport), [])
        self.clock.advance(2.5)
        self.assertEqual(sent_types(transport), [PING])
        self.clock.advance(2.5)
        self.assertEqual(sent_types(transport), [])  # one ping per interval, not per tick

    def test_pong_keeps_the_connection_open(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(ping_interval=10, idle_timeout=30))
        protocol, transport = connected(sweeper)
        for _ in range(10):
            self.clock.advance(10)
            protocol.dataReceived(encode_frame(PONG, 1, 2, 0))
        self.assertFalse(transport.disconnecting)

    def test_silent_peer_is_dropped_after_the_idle_timeout(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        protocol, transport = connected(sweeper)
        self.clock.advance(15)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_activity_resets_the_idle_clock(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        protocol, transport = connected(sweeper)
        for _ in range(10):
            self.clock.advance(10)
            protocol.dataReceived(encode_frame(PING, 1, 2, 0))
        self.assertFalse(transport.disconnecting)

    def test_trickling_peer_is_dropped_after_the_frame_timeout(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=300, frame_timeout=10))
        protocol, transport = connected(sweeper)
        frame = encode_frame(PING, 1, 2, 0, b"x" * 100)
        for i in range(12):  # one byte a second: active, but the frame never completes
            protocol.dataReceived(frame[i:i + 1])
            self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_steady_traffic_of_complete_frames_is_not_dropped(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(frame_timeout=10))
        protocol, transport = connected(sweeper)
        frame = encode_frame(PING, 1, 2, 0)
        for _ in range(40):  # always a partial frame buffered, but frames keep completing
            protocol.dataReceived(frame + frame[:5])
            protocol.dataReceived(frame[5:])
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)

    def test_the_sweep_stops_when_the_last_connection_goes(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        protocol, _ = connected(sweeper)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_timeouts_configured_means_no_sweep(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(frame_timeout=0))
        connected(sweeper)
        self.assertEqual(self.clock.getDelayedCalls(), [])
